"""``model.init_from``: a new run starts from a checkpoint's, an export's or Hugging Face GPT-2's weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from twist_lightning.blueprints import sample_blueprints
from twist_lightning.checkpoint import load_gpt
from twist_lightning.dense_export import export_subnet, write_export
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.partition import PartitionSpec
from twist_lightning.module import TwISTLitModule
from twist_lightning.pretrained import InitSourceKind, PretrainedError, init_from, resolve_source, source_vocab
from twist_lightning.run import train
from twist_lightning.validate import SettingError

from test_run import compose_train

TINY = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=300)


def _hf_folder(tmp_path: Path, n_positions: int = 64) -> tuple[Path, object]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=n_positions, vocab_size=300,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    hf.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", hf


def _pretrain(folder: Path, monkeypatch: pytest.MonkeyPatch, *overrides: str) -> Path:
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    train(compose_train(["trainer.max_steps=30", "module.lr=1e-2", *overrides]))
    return folder / "checkpoints" / "last.ckpt"


def test_hf_folder_gives_identical_logits_with_a_shorter_context(tmp_path: Path) -> None:
    folder, hf = _hf_folder(tmp_path, n_positions=64)
    assert resolve_source(str(folder))[0] is InitSourceKind.hf_folder
    model = GPT(GPTConfig(block_size=32, **TINY)).eval()
    assert init_from(model, str(folder)) is None  # GPT-2 ids, no compact vocabulary
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, atol=1e-5, rtol=1e-5)
    assert model.transformer.wpe.weight.shape == (32, 64)  # the first 32 positions kept


def test_export_folder_and_a_refused_subnet(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = GPT(GPTConfig(block_size=32, **TINY)).eval()
    write_export(source, tmp_path / "full")
    model = GPT(GPTConfig(block_size=32, **TINY))
    init_from(model, str(tmp_path / "full"))
    for (name, a), b in zip(source.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    blueprint = sample_blueprints(PartitionSpec.from_config(source.config, common="none"), 2, 2, seed=0, round=0)[0]
    export_subnet(source, blueprint, tmp_path / "sub")
    with pytest.raises(PretrainedError, match="exported subnet"):
        init_from(model, str(tmp_path / "sub"))


def test_shape_mismatch_names_every_field(tmp_path: Path) -> None:
    folder, _ = _hf_folder(tmp_path, n_positions=16)
    wrong = GPT(GPTConfig(block_size=32, n_layer=3, n_head=4, n_embd=32, vocab_size=300))
    with pytest.raises(PretrainedError) as err:
        init_from(wrong, str(folder))
    message = str(err.value)
    assert "model.n_layer=3" in message and "model.n_embd=32" in message and "model.block_size=32" in message
    assert "model.n_head" not in message and "model.vocab_size" not in message


def test_bad_sources_fail_with_the_fix(tmp_path: Path) -> None:
    model = GPT(GPTConfig(block_size=32, **TINY))
    with pytest.raises(PretrainedError, match="does not exist"):
        init_from(model, str(tmp_path / "nowhere" / "last.ckpt"))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match="did you mean"):
        init_from(model, str(tmp_path / "run"))
    with pytest.raises(PretrainedError, match="cannot be used"):
        init_from(model, str(tmp_path / "run" / "checkpoints" / "last.ckpt"))


def test_hub_name_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # conftest sets it too: tests never download
    assert resolve_source("openai-community/gpt2-nonexistent-test")[0] is InitSourceKind.hf_name
    with pytest.raises(PretrainedError, match=r"Hub cannot be reached \(HF_HUB_OFFLINE is set\).*Fix: download"):
        init_from(GPT(GPTConfig(block_size=32, **TINY)), "openai-community/gpt2-nonexistent-test")


def _run_in(folder: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str]) -> dict:
    folder.mkdir()
    monkeypatch.chdir(folder)
    # a fine-tuning learning rate: at the default one, two full-size steps undo most of what 30 steps learned
    short = ["trainer.max_steps=2", "trainer.val_check_interval=2", "module.warmup_steps=1", "module.lr=1e-3"]
    return train(compose_train([*short, *overrides]))


def test_run_starts_from_a_checkpoint_and_keeps_its_vocabulary_on_another_corpus(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = _pretrain(tmp_path / "pretrain", monkeypatch)
    _, vocab, _ = load_gpt(ckpt)
    assert vocab is not None and source_vocab(str(ckpt)) == vocab

    # same corpus, so the same vocabulary either way: two steps from the pretrained weights beat two from scratch
    fine = _run_in(tmp_path / "fine", monkeypatch, [f"model.init_from={ckpt}"])
    scratch = _run_in(tmp_path / "scratch", monkeypatch, [])
    assert fine["init_from"] == str(ckpt) and "init_from" not in scratch
    assert fine["val_ppl"] < 0.5 * scratch["val_ppl"]

    # another corpus is encoded with the pretrained model's ids, not a vocabulary built from the new text
    _run_in(tmp_path / "wiki", monkeypatch, [f"model.init_from={ckpt}", "data=wikitext2"])
    tuned = TwISTLitModule.load_from_checkpoint(tmp_path / "wiki" / "checkpoints" / "last.ckpt")
    assert tuned.vocab == vocab


def test_init_from_with_ckpt_path_fails_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingError, match="model.init_from=.* and ckpt_path=.* are both set"):
        train(compose_train(["model.init_from=a.ckpt", "ckpt_path=b.ckpt"]))
    assert not (tmp_path / "checkpoints").exists()


def test_vocab_json_file_is_read(tmp_path: Path) -> None:
    from twist_lightning.vocab import CompactVocab

    vocab = CompactVocab([5, 7, 11])
    vocab.save(tmp_path / "vocab.json")
    assert source_vocab(str(tmp_path / "vocab.json")) == vocab
    (tmp_path / "bad.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(PretrainedError, match="data.vocab_from=.*not a compact vocabulary"):
        source_vocab(str(tmp_path / "bad.json"))
