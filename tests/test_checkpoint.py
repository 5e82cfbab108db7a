"""load_gpt: a real 3-step Lightning checkpoint round-trips; every unusable file fails with a clear error."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from twist_lightning.checkpoint import CheckpointError, load_checkpoint, load_gpt
from twist_lightning.data import TextDataModule
from twist_lightning.model import GPTConfig
from twist_lightning.module import TwISTLitModule
from twist_lightning.tokenizer import asset_path


def fit_tiny_checkpoint(root: Path, steps: int = 3) -> Path:
    """A real TwISTLitModule checkpoint: tiny GPT, compact vocabulary, a few steps on a small local text."""
    corpus = root / "corpus.txt"
    corpus.write_text(asset_path("tinyshakespeare.txt").read_text()[:40_000])
    dm = TextDataModule(source="local", path=str(corpus), block_size=32, batch_size=8, vocab_size=256,
                        cache_dir=str(root / "cache"), num_proc=1)
    module = TwISTLitModule(model=GPTConfig.from_preset("tiny", n_layer=3), warmup_steps=1)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0,
                        default_root_dir=str(root), accelerator="cpu", devices=1)
    trainer.fit(module, datamodule=dm)
    path = root / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def test_load_gpt_round_trip(ckpt: Path) -> None:
    model, vocab, data = load_gpt(ckpt)
    raw = torch.load(ckpt, weights_only=True)
    assert not model.training and model.config.n_layer == 3 and model.config.vocab_size == 256
    assert vocab is not None and vocab.size == 256
    assert data["path"].endswith("corpus.txt") and data["block_size"] == 32
    for name, p in model.state_dict().items():
        torch.testing.assert_close(p, raw["state_dict"][f"model.{name}"], rtol=0, atol=0)
    load_gpt(ckpt, expect=GPTConfig.from_preset("tiny", n_layer=3))  # matching shape passes


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint='.*nope\.ckpt' does not exist"):
        load_gpt(tmp_path / "nope.ckpt")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_gpt(tmp_path)


@pytest.mark.parametrize("kind", ["truncated", "random", "text"])
def test_unreadable_file(ckpt: Path, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / f"{kind}.ckpt"
    data = ckpt.read_bytes()
    bad.write_bytes({"truncated": data[: len(data) // 2], "random": torch.randint(0, 256, (4096,),
                     dtype=torch.uint8).numpy().tobytes(), "text": b"hello"}[kind])
    with pytest.raises(CheckpointError, match=r"checkpoint=.*could not be read.*Fix:"):
        load_gpt(bad)
    assert issubclass(CheckpointError, ValueError)


@pytest.mark.parametrize("payload", [{"foo": 1}, torch.zeros(3), {"state_dict": {}, "hyper_parameters": {"lr": 1}}])
def test_not_a_twist_checkpoint(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "other.ckpt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"checkpoint=.*(not a twist-lightning|not a Lightning checkpoint)"):
        load_checkpoint(path)


def test_shape_mismatch_names_fields(ckpt: Path) -> None:
    expect = GPTConfig.from_preset("tiny", n_layer=3, n_head=8, n_embd=64)
    with pytest.raises(ValueError, match=r"n_head: checkpoint 4 vs expected 8; n_embd: checkpoint 32 vs expected 64"):
        load_gpt(ckpt, expect=expect)


def test_weights_that_do_not_fit_the_config(ckpt: Path, tmp_path: Path) -> None:
    raw = torch.load(ckpt, weights_only=True)
    raw["hyper_parameters"]["model"]["n_embd"] = 64  # config now disagrees with the saved tensors
    path = tmp_path / "inconsistent.ckpt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="do not fit its own model config"):
        load_gpt(path)


def test_data_source_enum_in_hparams_loads_by_its_new_and_old_paths(ckpt: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A datamodule given the enum itself pickles it; checkpoints written before sources.py name it data.DataSource."""
    import enum

    import twist_lightning.data as data_mod
    from twist_lightning.sources import DataSource

    raw = torch.load(ckpt, weights_only=True)
    raw["datamodule_hyper_parameters"]["source"] = DataSource.local
    torch.save(raw, tmp_path / "new.ckpt")
    assert load_gpt(tmp_path / "new.ckpt")[2]["source"] == "local"

    class OldDataSource(str, enum.Enum):  # the class as the pickle names it: twist_lightning.data.DataSource
        BUNDLED = "bundled"
        LOCAL = "local"
        HUB = "hub"

    OldDataSource.__module__, OldDataSource.__qualname__ = "twist_lightning.data", "DataSource"
    with monkeypatch.context() as patch:
        patch.setattr(data_mod, "DataSource", OldDataSource)
        raw["datamodule_hyper_parameters"]["source"] = OldDataSource.LOCAL
        torch.save(raw, tmp_path / "old.ckpt")
    assert load_gpt(tmp_path / "old.ckpt")[2]["source"] == "local"
