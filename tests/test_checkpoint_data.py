"""A checkpoint's data: the datamodule rebuilt from saved settings, held-out batches, calibration windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from test_data import write_corpus
from twist_lightning.checkpoint_data import build_datamodule, collect_batches, train_calibration
from twist_lightning.vocab import CompactVocab


def _saved(tmp_path: Path) -> dict:
    corpus = write_corpus(tmp_path / "corpus.txt", n_lines=300)
    return {"source": "local", "path": str(corpus), "block_size": 16, "batch_size": 4, "cache_dir": str(tmp_path),
            "num_proc": 1}


def test_rebuilt_from_saved_settings_with_overrides(tmp_path: Path) -> None:
    saved = _saved(tmp_path)
    dm, remap = build_datamodule(saved, {"batch_size": 2, "path": None}, 50257, 32, None)
    assert not remap and dm.hparams.batch_size == 2 and dm.hparams.vocab_size is None  # None overrides are ignored
    assert dm.hparams.path == saved["path"] and "val" in dm.datasets
    with pytest.raises(ValueError, match="data.block_size=16 exceeds the model's block_size=8"):
        build_datamodule(saved, {}, 50257, 8, None)
    with pytest.raises(ValueError, match="has no datamodule settings"):
        build_datamodule({}, {}, 50257, 32, None, "x.ckpt")


def test_another_corpus_is_remapped_through_the_vocab(tmp_path: Path) -> None:
    saved = _saved(tmp_path)
    other = write_corpus(tmp_path / "other.txt", n_lines=300, start=5000)
    vocab = CompactVocab(list(range(100)))
    dm, remap = build_datamodule(saved, {"path": str(other)}, vocab.size, 32, vocab)
    assert remap and dm.hparams.vocab_size is None  # GPT-2 ids, mapped through the saved vocabulary later
    batches = collect_batches(dm, "val", max_batches=2, batch_tokens=48, device=torch.device("cpu"), vocab=vocab)
    assert batches and all(x.shape[1] == 16 and x.shape[0] <= 3 for x, _ in batches)  # 48 tokens = 3 rows of 16
    assert all(int(x.max()) < vocab.size for x, _ in batches)
    assert collect_batches(dm, "val", max_batches=0, batch_tokens=48, device=torch.device("cpu")) == []
    with pytest.raises(ValueError, match="split='train' must be 'val' or 'test'"):
        collect_batches(dm, "train", 1, 48, torch.device("cpu"))


def test_another_corpus_is_encoded_whole_through_a_byte_fallback_vocab(tmp_path: Path) -> None:
    saved = {**_saved(tmp_path), "vocab_size": 300, "byte_fallback": True}
    own, remap = build_datamodule(saved, {}, 300, 32, None)
    vocab = own.vocab
    assert not remap and vocab.byte_fallback
    vocab.save(tmp_path / "vocab.json")  # stands in for the checkpoint, which holds the same vocabulary
    other = write_corpus(tmp_path / "other.txt", n_lines=300, start=5000, tag=" quokka")
    dm, remap = build_datamodule(saved, {"path": str(other)}, vocab.size, 32, vocab, str(tmp_path / "vocab.json"))
    assert not remap and dm.vocab == vocab  # encoded as a stream when cached, never window by window
    gpt2, _ = build_datamodule({**saved, "vocab_size": None, "byte_fallback": False}, {"path": str(other)}, 50257,
                               32, None)
    for split in ("train", "val"):
        expected = vocab.encode(np.asarray(gpt2.datasets[split].tokens))
        np.testing.assert_array_equal(np.asarray(dm.datasets[split].tokens), expected)
    batches = collect_batches(dm, "val", max_batches=2, batch_tokens=48, device=torch.device("cpu"))
    assert batches and all(int(y.max()) < vocab.unk_id for _, y in batches)
    with pytest.raises(ValueError, match="byte-fallback vocabulary encodes whole token streams"):
        build_datamodule(saved, {"path": str(other)}, vocab.size, 32, vocab)


def test_calibration_windows_come_from_the_training_split(tmp_path: Path) -> None:
    dm, _ = build_datamodule(_saved(tmp_path), {}, 50257, 32, None)
    batches = train_calibration(dm, samples=5, seed=0, device=torch.device("cpu"))
    assert sum(x.shape[0] for x, _ in batches) == 5
    again = train_calibration(dm, samples=5, seed=0, device=torch.device("cpu"))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, again))  # deterministic from the seed
    dm.datasets.pop("train")
    with pytest.raises(ValueError, match="no train split"):
        train_calibration(dm, 5, 0, torch.device("cpu"))
