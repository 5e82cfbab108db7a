"""The token cache: keyed by content, built once, chunk split, length checks (twist_lightning/token_cache.py)."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest

import twist_lightning.token_cache as token_cache
from test_data import _full_stream, make_dm, write_corpus
from twist_lightning.sources import DataSource
from twist_lightning.token_cache import TokenCache, chunk_split


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_cache_reused_without_retokenizing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    first = make_dm(tmp_path, source="local", path=str(corpus))
    first.setup("fit")
    cache = first.cache_path
    assert sorted(p.name for p in cache.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    assert not [p for p in cache.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized despite a valid cache")

    monkeypatch.setattr(token_cache, "tokenize_file", fail)
    second = make_dm(tmp_path, source="local", path=str(corpus))
    second.setup("fit")
    assert second.cache_path == cache
    np.testing.assert_array_equal(second.datasets["val"].tokens, first.datasets["val"].tokens)

    # Editing the file changes the key, so the stale cache is not used (here: tokenizing is attempted).
    write_corpus(corpus, tag="!")
    edited = make_dm(tmp_path, source="local", path=str(corpus))
    assert edited.cache_path != cache
    with pytest.raises(AssertionError, match="re-tokenized"):
        edited.setup("fit")


def test_chunk_split_deterministic_and_complete(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    dms = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        dms[name] = make_dm(tmp_path / name, source="local", path=str(corpus), seed=seed, val_fraction=0.2)
        dms[name].setup("fit")
    val = {k: np.asarray(dm.datasets["val"].tokens) for k, dm in dms.items()}
    np.testing.assert_array_equal(val["a"], val["b"])
    assert not np.array_equal(val["a"], val["c"])

    # Train and val are disjoint whole chunks that together rebuild the stream in order.
    full = _full_stream(corpus)
    train = np.asarray(dms["a"].datasets["train"].tokens)
    chunk = token_cache.CHUNK_BLOCKS * 8
    ti = vi = n_val = 0
    for start in range(0, len(full), chunk):
        piece = full[start : start + chunk]
        if np.array_equal(val["a"][vi : vi + len(piece)], piece):
            vi, n_val = vi + len(piece), n_val + 1
        else:
            np.testing.assert_array_equal(train[ti : ti + len(piece)], piece)
            ti += len(piece)
    assert (ti, vi) == (len(train), len(val["a"]))
    assert n_val == round(0.2 * math.ceil(len(full) / chunk))


def test_corpus_too_short_for_block_size(tmp_path: Path) -> None:
    short = write_corpus(tmp_path / "short.txt", n_lines=3)
    with pytest.raises(ValueError, match=r"\d+ tokens.*data\.block_size"):
        make_dm(tmp_path, source="local", path=str(short), block_size=64).setup("fit")


def test_split_too_short_for_block_size(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_corpus(folder / "train.txt", 300)
    (folder / "valid.txt").write_text("tiny\n")
    with pytest.raises(ValueError, match=r"val split has 2 tokens.*data\.block_size"):
        make_dm(tmp_path, source="local", path=str(folder)).setup("fit")


def test_cache_key_is_unchanged(tmp_path: Path) -> None:
    """The folder name hashes the cache's inputs; a change here orphans every cache users already built."""
    assert token_cache.CACHE_FORMAT == 1
    assert TokenCache(DataSource.bundled, root=tmp_path).folder.name == "bundled-368e96205e019fa01dee"
    cache = TokenCache(DataSource.bundled, block_size=64, vocab_size=4096, root=tmp_path)
    assert cache.folder.name == "bundled-c065981f1243592f374f"
    assert TokenCache(DataSource.hub, hub_name="wikitext", hub_config="x", root=tmp_path).folder.name == (
        "hub-1a0660abf8bc8b298cb6")


def test_build_without_a_datamodule(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt")
    cache = TokenCache(DataSource.local, path=str(corpus), block_size=8, root=tmp_path / "cache")
    assert not cache.complete
    cache.build(num_proc=1)
    assert cache.complete and cache.cached_vocab() is None
    meta = cache.meta()
    assert meta["spec"] == cache.spec() and set(meta["num_tokens"]) == {"train", "val"}
    train = np.fromfile(cache.folder / "train.bin", dtype=token_cache.TOKEN_DTYPE)
    assert len(train) == meta["num_tokens"]["train"]
    assert cache.folder == make_dm(tmp_path, source="local", path=str(corpus)).cache_path  # one key, both ways
    assert json.loads((cache.folder / "meta.json").read_text())["spec"]["files"]["train"]


def test_chunk_split_keeps_order_and_one_chunk_each_side() -> None:
    ids = np.arange(100)
    train, val = chunk_split(ids, chunk_tokens=10, val_fraction=0.01, seed=0)
    assert len(val) == 10 and len(train) == 90  # at least one chunk held out
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()  # corpus order kept on both sides
    assert sorted(np.concatenate([train, val]).tolist()) == ids.tolist()
    with pytest.raises(ValueError, match="too short to split"):
        chunk_split(np.arange(10), chunk_tokens=10, val_fraction=0.5, seed=0)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_tokenize_file_equals_the_datasets_path(tmp_path: Path, newline: str) -> None:
    """The direct path for local files gives the ids ``datasets``' text loader + ``Dataset.map`` gave (the cache
    format and key are unchanged, so old caches stay valid): universal newlines, blank rows, unicode, form feeds
    and line separators inside a row, an unterminated last row."""
    import datasets

    rows = ["First Citizen:", "", "  Before we proceed\x0cany further, hear me speak.", "Caf\u00e9 \u2028 na\u00efve",
            "", "", "last line without a break"]
    file = tmp_path / "text.txt"
    file.write_bytes(newline.join(rows).encode())
    loaded = datasets.load_dataset("text", data_files={"train": str(file)}, sample_by="line", keep_linebreaks=True,
                                   cache_dir=str(tmp_path / "hf"))
    expected = token_cache.tokenize_dataset(loaded["train"], num_proc=1, hf_cache=str(tmp_path / "hf"))
    got = token_cache.tokenize_file(file, num_threads=2)
    assert got.dtype == np.int64 and len(got) > 20
    np.testing.assert_array_equal(got, expected)
    assert got[-1] == token_cache.EOT_ID and (got == token_cache.EOT_ID).sum() == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert len(token_cache.tokenize_file(empty)) == 0
