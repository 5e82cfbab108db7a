"""TextDataModule and TokenWindows: loaders, splits, settings, the compact vocabulary. None touches the network."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import twist_lightning.data as data_mod
import twist_lightning.sources as sources
import twist_lightning.token_cache as token_cache
from twist_lightning.corpora import corpus_path
from twist_lightning.data import TextDataModule, TokenWindows
from twist_lightning.tokenizer import EOT_ID, gpt2_encoding

WIKITEXT = Path(corpus_path("wikitext-2-raw"))  # shipped in the repository's data/ (checksums verified)


def write_corpus(path: Path, n_lines: int = 400, start: int = 0, tag: str = "") -> Path:
    """Unique lines, so every chunk of the token stream is distinct."""
    lines = [f"Line {i}{tag}: the quick brown fox number {i * 7919 % 1000} jumps.\n" for i in range(start, start + n_lines)]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def make_dm(tmp_path: Path, **kwargs) -> TextDataModule:
    settings = {"cache_dir": str(tmp_path / "cache"), "block_size": 8, "batch_size": 4, "num_proc": 1}
    settings.update(kwargs)
    return TextDataModule(**settings)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)


def _full_stream(path: Path) -> np.ndarray:
    text = path.read_text(encoding="utf-8")
    ids = gpt2_encoding().encode_ordinary(text)
    return np.array(ids + ([] if text.endswith("\n") else [EOT_ID]))


def test_windows_shapes_and_shift() -> None:
    ds = TokenWindows(np.arange(21, dtype=np.uint16), block_size=4)
    assert len(ds) == 5
    x, y = ds[4]
    assert x.dtype == torch.int64 and x.shape == y.shape == (4,)
    assert x.tolist() == [16, 17, 18, 19] and torch.equal(y, x + 1)
    with pytest.raises(IndexError):
        ds[5]
    assert len(TokenWindows(np.arange(4), block_size=4)) == 0


def test_bundled_loads_and_unigram_ppl(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, block_size=64, num_proc=2)
    assert dm.model_vocab_size == 50257
    dm.setup("fit")
    assert dm.vocab is None
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 64)
    assert torch.equal(x[:, 1:], y[:, :-1])
    ppl = dm.unigram_ppl("val")
    assert math.isfinite(ppl) and ppl > 1
    with pytest.raises(ValueError, match="No test split"):
        dm.test_dataloader()


def test_local_folder_with_three_splits(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_corpus(folder / "train.txt", 300)
    write_corpus(folder / "valid.txt", 60, start=1000)
    write_corpus(folder / "test.txt", 60, start=2000)
    dm = make_dm(tmp_path, source="local", path=str(folder))
    dm.setup("test")
    assert set(dm.datasets) == {"train", "val", "test"}
    np.testing.assert_array_equal(dm.datasets["test"].tokens, _full_stream(folder / "test.txt"))
    assert next(iter(dm.test_dataloader()))[0].shape == (4, 8)


def test_wikitext_valid_file_as_single_local_file(tmp_path: Path) -> None:
    path = WIKITEXT / "wiki.valid.raw"
    dm = make_dm(tmp_path, source="local", path=str(path), block_size=64, num_proc=2, vocab_size=512)
    dm.setup("fit")
    assert dm.model_vocab_size == 512 and dm.vocab is not None and dm.vocab.size == 512
    assert (dm.cache_path / "vocab.json").is_file()
    n = sum(ds.num_tokens for ds in dm.datasets.values())
    assert n == 249884  # the whole file (it ends with a newline, so no EOT)
    for ds in dm.datasets.values():
        assert int(np.max(ds.tokens)) < 512
    assert 1 < dm.unigram_ppl() < 512
    # The compact vocabulary goes into Lightning checkpoints and comes back.
    restored = make_dm(tmp_path, source="local", path=str(path), block_size=64, vocab_size=512)
    restored.load_state_dict(dm.state_dict())
    assert restored.vocab == dm.vocab


def test_distributed_sampler_shards_are_disjoint(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, source="local", path=str(write_corpus(tmp_path / "c.txt")))
    dm.setup("fit")
    train = dm.datasets["train"]
    shards = [
        set(DistributedSampler(train, num_replicas=2, rank=r, shuffle=True, seed=0, drop_last=True)) for r in (0, 1)
    ]
    assert shards[0] and not shards[0] & shards[1]
    assert len(shards[0] | shards[1]) == 2 * (len(train) // 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"source": "ftp"}, ValueError, r"data\.source='ftp'.*bundled, local, hub"),
        ({"source": "local"}, ValueError, r"data\.path"),
        ({"source": "local", "path": "/nonexistent/corpus.txt"}, FileNotFoundError, r"data\.path=/nonexistent"),
        ({"source": "hub"}, ValueError, r"data\.hub_name"),
        ({"block_size": 0}, ValueError, r"data\.block_size.*0"),
        ({"batch_size": 0}, ValueError, r"data\.batch_size.*0"),
        ({"val_fraction": 0.0}, ValueError, r"data\.val_fraction.*0\.0"),
        ({"val_fraction": 1.0}, ValueError, r"data\.val_fraction.*1\.0"),
        ({"vocab_size": 1}, ValueError, r"data\.vocab_size.*1"),
        ({"vocab_size": 60000}, ValueError, r"data\.vocab_size.*60000"),
    ],
)
def test_bad_settings_fail_in_constructor(tmp_path: Path, kwargs: dict, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        make_dm(tmp_path, **kwargs)
    assert not (tmp_path / "cache").exists()  # rejected before any work


def test_empty_corpus(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        make_dm(tmp_path, source="local", path=str(empty)).setup("fit")


def test_names_that_moved_out_are_re_exported() -> None:
    assert data_mod.DataSource is sources.DataSource and data_mod.HubUnavailableError is sources.HubUnavailableError
    assert data_mod.HUB_PROBE_TIMEOUT_S == sources.HUB_PROBE_TIMEOUT_S
    for name in ("CACHE_FORMAT", "CHUNK_BLOCKS", "SPLITS", "TOKEN_DTYPE", "default_cache_dir"):
        assert getattr(data_mod, name) is getattr(token_cache, name), name


def test_given_vocabulary_encodes_the_corpus_with_its_ids(tmp_path: Path) -> None:
    from twist_lightning.vocab import CompactVocab

    plain = make_dm(tmp_path, block_size=32)
    plain.setup("fit")
    gpt2_ids = {s: np.asarray(w.tokens) for s, w in plain.datasets.items()}
    vocab = CompactVocab([int(i) for i in np.unique(gpt2_ids["train"])[:50]])  # a vocabulary not built from this text
    vocab.save(tmp_path / "vocab.json")
    given = make_dm(tmp_path, block_size=32, vocab_from=str(tmp_path / "vocab.json"))
    assert given.model_vocab_size == 51
    given.setup("fit")
    assert given.vocab == vocab and given.cache_path != plain.cache_path
    for split, ids in gpt2_ids.items():
        np.testing.assert_array_equal(np.asarray(given.datasets[split].tokens), vocab.encode(ids))
    with pytest.raises(ValueError, match=r"data.vocab_size=64 but data.vocab_from=.* has 51 ids. Fix: set model.vocab_size=51"):
        make_dm(tmp_path, vocab_size=64, vocab_from=str(tmp_path / "vocab.json"))


def test_test_path_is_held_out_and_vocab_extra_counts_for_the_vocabulary(tmp_path: Path) -> None:
    wiki = Path(corpus_path("wikitext-2-raw"))
    dm = make_dm(tmp_path, block_size=32, vocab_size=300, test_path=str(wiki / "wiki.test.raw"))
    dm.setup("fit")
    assert set(dm.datasets) == {"train", "val", "test"}
    test_ids = gpt2_encoding().encode_ordinary((wiki / "wiki.test.raw").read_text()[:2000])
    assert dm.datasets["test"].num_tokens > 100_000  # the whole file, not a chunk of the training text
    # the vocabulary counted the training text only; with the extra file it also knows WikiText's frequent words
    plain = make_dm(tmp_path, block_size=32, vocab_size=300)
    plain.setup("fit")
    assert plain.vocab == dm.vocab and plain.cache_path != dm.cache_path
    extra = make_dm(tmp_path, block_size=32, vocab_size=300, vocab_extra=[str(wiki / "wiki.valid.raw")])
    extra.setup("fit")
    unk = lambda v: float(np.mean(v.encode(np.array(test_ids)) == v.unk_id))  # noqa: E731
    assert extra.vocab != plain.vocab and unk(extra.vocab) < unk(plain.vocab)
    with pytest.raises(FileNotFoundError, match="data.test_path=.*is not a file"):
        make_dm(tmp_path, test_path=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="data.vocab_extra=.*needs data.vocab_size"):
        make_dm(tmp_path, vocab_extra=[str(wiki / "wiki.valid.raw")])


def test_byte_fallback_vocabulary_loses_no_test_token(tmp_path: Path) -> None:
    wiki = Path(corpus_path("wikitext-2-raw"))
    settings = dict(block_size=32, vocab_size=300, test_path=str(wiki / "wiki.test.raw"))
    unk = make_dm(tmp_path, **settings)
    unk.setup("fit")
    dm = make_dm(tmp_path, **settings, byte_fallback=True)
    dm.setup("fit")
    assert dm.vocab.byte_fallback and dm.cache_path != unk.cache_path and dm.model_vocab_size == 300
    test = np.asarray(dm.datasets["test"].tokens)
    assert (np.asarray(unk.datasets["test"].tokens) == unk.vocab.unk_id).mean() > 0.3  # 299 ids lose a lot
    assert not (test == dm.vocab.unk_id).any() and len(test) > unk.datasets["test"].num_tokens
    # the cached stream decodes to the test text exactly
    text = (wiki / "wiki.test.raw").read_text(encoding="utf-8")
    assert gpt2_encoding().decode(dm.vocab.decode(test).tolist()) == text
    with pytest.raises(ValueError, match="data.byte_fallback=true needs a compact vocabulary"):
        make_dm(tmp_path, byte_fallback=True)
    with pytest.raises(ValueError, match="data.vocab_size=258 is too small for data.byte_fallback=true"):
        make_dm(tmp_path, vocab_size=258, byte_fallback=True)
    unk.vocab.save(tmp_path / "plain.json")
    with pytest.raises(ValueError, match="data.byte_fallback=true but the given vocabulary .* has no byte fallback"):
        make_dm(tmp_path, vocab_from=str(tmp_path / "plain.json"), byte_fallback=True)


# ---------------------------------------------------------------------- the training order


def test_epoch_shuffle_is_a_function_of_seed_and_epoch_only() -> None:
    sampler = data_mod.EpochShuffle(range(50), seed=7)
    first = list(sampler)
    torch.rand(100)  # other draws from the global RNG do not move it
    assert list(sampler) == first and sorted(first) == list(range(50)) and first != list(range(50))
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(data_mod.EpochShuffle(range(50), seed=8)) != first


def _fit_tiny(tmp_path: Path, steps: int, val_every: int | None = None, ckpt_path: str | None = None,
              callbacks: list | None = None):
    import lightning as L

    from twist_lightning.module import TwISTLitModule

    tmp_path.mkdir(parents=True, exist_ok=True)
    L.seed_everything(3)
    module = TwISTLitModule(model=dict(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=64), lr=1e-2,
                            warmup_steps=1, decay_steps=50)
    dm = make_dm(tmp_path, source="local", path=str(write_corpus(tmp_path / "c.txt", n_lines=40)), vocab_size=64)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=callbacks,
                        num_sanity_val_steps=0, limit_val_batches=1.0 if val_every else 0,
                        val_check_interval=val_every, check_val_every_n_epoch=None if val_every else 1,
                        default_root_dir=str(tmp_path))
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module, trainer


def _batches_per_epoch(tmp_path: Path) -> int:
    tmp_path.mkdir(parents=True, exist_ok=True)
    dm = make_dm(tmp_path, source="local", path=str(write_corpus(tmp_path / "c.txt", n_lines=40)), vocab_size=64)
    dm.setup("fit")
    return len(dm.train_dataloader())


def test_how_often_a_run_validates_does_not_change_its_training(tmp_path: Path) -> None:
    """Validation passes draw from the global RNG; the training order (over several epochs) must not follow."""
    epoch = _batches_per_epoch(tmp_path / "n")
    steps = 2 * epoch + 3
    quiet, _ = _fit_tiny(tmp_path / "a", steps)
    busy, _ = _fit_tiny(tmp_path / "b", steps, val_every=2)
    for (name, a), b in zip(quiet.state_dict().items(), busy.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_run_resumed_at_an_epoch_boundary_sees_the_same_order(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    epoch = _batches_per_epoch(tmp_path / "n")
    steps = 2 * epoch + 3
    straight, _ = _fit_tiny(tmp_path / "a", steps)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=epoch, save_top_k=-1, filename="{step}")
    _fit_tiny(tmp_path / "b", epoch, callbacks=[ckpt])
    resumed, _ = _fit_tiny(tmp_path / "c", steps, ckpt_path=str(tmp_path / "ck" / f"step={epoch}.ckpt"))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
