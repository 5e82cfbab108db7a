"""The token cache: a corpus tokenized once with GPT-2's BPE and stored as ``uint16`` memmap files.

A :class:`TokenCache` names everything that determines a corpus's token ids (file contents or hub dataset,
tokenizer, split rule, vocabulary setting); their hash names the cache folder ``<root>/<source>-<key>/``, which
holds ``train.bin``, ``val.bin`` (and ``test.bin``), ``vocab.json`` when a compact vocabulary is set, and
``meta.json`` (the key's inputs and the token counts). :meth:`TokenCache.build` tokenizes in parallel (local
files with tiktoken's encoder on a few threads, hub datasets with ``Dataset.map(num_proc=...)``) into a temporary
folder and renames it into place (:func:`publish`), so a cache is either complete or absent, and concurrent
builders agree.

**Chunk split.** A single file is tokenized, cut into chunks of ``8 * block_size`` tokens, and a seeded RNG sends
``round(val_fraction * n_chunks)`` of them (at least one) to validation (:func:`chunk_split`). The held-out text
thus comes from across the whole corpus (every book of a book mix), not just its end.

**Documents.** Rows are lines (line breaks kept, so text round-trips exactly) or, for hub datasets like
OpenWebText, whole documents. ``<|endoftext|>`` is appended after every non-empty row that does not end in a
newline: the end of a document, or the unterminated last line of a file (:func:`encode_rows`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from io import StringIO
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from twist_lightning.corpora import sha256_of
from twist_lightning.sources import DataSource, describe_source, files_under, load_hub, local_files, select_hub_splits
from twist_lightning.tokenizer import EOT_ID, GPT2_VOCAB_SIZE, TOKENIZER_NAME, gpt2_encoding
from twist_lightning.validate import check_utf8
from twist_lightning.vocab import CompactVocab

__all__ = ["CACHE_FORMAT", "CHUNK_BLOCKS", "SPLITS", "TOKEN_DTYPE", "TokenCache", "chunk_split", "default_cache_dir",
           "encode_rows", "publish", "read_rows", "tokenize_dataset", "tokenize_file"]

log = logging.getLogger(__name__)

#: Bump when the on-disk layout or tokenization rules change, so old caches are not reused.
CACHE_FORMAT = 1
#: Chunk length of the single-file split, in multiples of ``block_size`` (always >= block_size + 1).
CHUNK_BLOCKS = 8
TOKEN_DTYPE = np.uint16  # every GPT-2 id (< 50257) fits in 16 bits
SPLITS = ("train", "val", "test")


def default_cache_dir() -> Path:
    """Return ``$TWIST_CACHE_DIR`` if set, else ``~/.cache/twist_lightning``."""
    env = os.environ.get("TWIST_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "twist_lightning"


@dataclass(frozen=True)
class TokenCache:
    """The cached token ids of one corpus under one set of settings (see the module docstring).

    Args:
        source: Where the text comes from (:class:`~twist_lightning.sources.DataSource`).
        path: ``local``: a text file or a folder of split files.
        hub_name: ``hub``: the dataset name (or a local dataset folder); ``hub_config`` its configuration.
        block_size: Context length; sets the chunk length of the single-file split and the shortest usable split.
        val_fraction: Share of chunks held out when the corpus has no validation split.
        seed: Seed of the chunk split.
        vocab_size: A compact vocabulary of this size built from the train split; ``None`` keeps GPT-2's ids.
        test_path: ``local`` / ``bundled``: a text file held out as the ``test`` split (never trained or validated
            on), e.g. ``wiki.test.raw`` beside a training file; the corpus itself must have no test split then.
        vocab_extra: more training text files whose token counts join the train split's when the compact
            vocabulary is built (a vocabulary shared by a pretraining and a fine-tuning corpus).
        vocab: A given compact vocabulary (a pretrained model's) to encode with instead of building one; its size
            is ``vocab_size``.
        byte_fallback: The compact vocabulary built here spells the tokens it leaves out by their bytes instead of
            one unknown id (:class:`~twist_lightning.vocab.CompactVocab`); a given vocabulary brings its own.
        root: The cache root (default ``$TWIST_CACHE_DIR`` or ``~/.cache/twist_lightning``).
    """

    source: DataSource
    path: str | None = None
    hub_name: str | None = None
    hub_config: str | None = None
    block_size: int = 128
    val_fraction: float = 0.1
    seed: int = 1337
    vocab_size: int | None = None
    root: Path = field(default_factory=default_cache_dir)
    vocab: CompactVocab | None = field(default=None, compare=False)
    test_path: str | None = None
    vocab_extra: tuple[str, ...] = ()
    byte_fallback: bool = False

    def __post_init__(self) -> None:
        if self.vocab is not None and self.vocab_size not in (None, self.vocab.size):
            raise ValueError(f"vocab_size={self.vocab_size} differs from the given vocabulary's {self.vocab.size} ids.")

    @property
    def folder(self) -> Path:
        """``<root>/<source>-<key>/``, the key a hash of :meth:`spec`."""
        digest = hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()[:20]
        return self.root / f"{self.source.value}-{digest}"

    @property
    def complete(self) -> bool:
        """Whether the folder holds a finished cache (``meta.json`` is written last)."""
        return (self.folder / "meta.json").is_file()

    def describe(self) -> str:
        """The settings that name the corpus, for messages."""
        return describe_source(self.source, self.path, self.hub_name, self.hub_config)

    def split_rule(self) -> dict[str, Any]:
        return {"rule": "chunks", "chunk_tokens": CHUNK_BLOCKS * self.block_size, "val_fraction": self.val_fraction,
                "seed": self.seed}

    def spec(self) -> dict[str, Any]:
        """Everything that determines the cached tokens; hashed into the cache folder name."""
        spec: dict[str, Any] = {"format": CACHE_FORMAT, "tokenizer": TOKENIZER_NAME, "vocab_size": self.vocab_size}
        if self.vocab is not None:  # a given vocabulary: key on its ids (caches without one keep their old keys)
            spec["vocab_size"] = self.vocab.size
            ids = np.append(self.vocab.keep_ids, self.vocab.unk_gpt2_id).astype("<i8").tobytes()
            spec["given_vocab"] = hashlib.sha256(ids).hexdigest()
        fallback = self.vocab.byte_fallback if self.vocab is not None else self.byte_fallback
        if fallback and spec["vocab_size"] is not None:
            spec["byte_fallback"] = True  # only when set: other caches keep their keys
        if self.vocab_extra and self.vocab is None and self.vocab_size is not None:
            spec["vocab_extra"] = [sha256_of(Path(p)) for p in self.vocab_extra]
        if self.source is DataSource.hub:
            name = self.hub_name
            spec["hub"] = {"name": name, "config": self.hub_config}
            if Path(name).is_dir():  # a local stand-in: key on its contents so edits invalidate
                spec["hub"]["files"] = {str(p.relative_to(name)): sha256_of(p) for p in files_under(Path(name))}
            # The split rule only applies when the dataset lacks a validation split; it is cheap to
            # include always, and a hub dataset's split layout is unknown until it is loaded.
            spec["split"] = self.split_rule()
            return spec
        files = self.files()
        spec["files"] = {split: sha256_of(p) for split, p in files.items()}
        spec["split"] = self.split_rule() if "val" not in files else {"rule": "files"}
        return spec

    def files(self) -> dict[str, Path]:
        """Split -> file of a bundled or local corpus, each checked to be UTF-8 before anything tokenizes it."""
        files = local_files(self.source, self.path)
        if self.test_path is not None:
            if "test" in files:
                raise ValueError(f"data.test_path={self.test_path} but data.path={self.path} has a test split "
                                 f"({files['test']}). Fix: drop data.test_path, or point data.path at the training "
                                 "file alone.")
            files["test"] = Path(self.test_path).expanduser()
        for file in files.values():  # datasets would fail deep inside with a raw decode error
            check_utf8(file)
        return files

    def meta(self) -> dict[str, Any]:
        """``meta.json`` of the finished cache: ``{"spec", "num_tokens": {split: count}}``."""
        return json.loads((self.folder / "meta.json").read_text())

    def cached_vocab(self) -> CompactVocab | None:
        """The cache's compact vocabulary, or ``None`` for GPT-2's ids."""
        file = self.folder / "vocab.json"
        return CompactVocab.load(file) if file.is_file() else None

    def build(self, num_proc: int = 2) -> None:
        """Tokenize the corpus and publish the cache, unless a complete one already exists."""
        if self.complete:
            return
        target = self.folder
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=self.root))
        try:
            self._write(work, num_proc)
            publish(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rank_zero_info(f"Token cache written to {target}")

    def check_lengths(self, num_tokens: Mapping[str, int]) -> None:
        """Every split must hold at least one window of ``block_size + 1`` tokens."""
        need = self.block_size + 1
        for split, n in num_tokens.items():
            if n == 0:
                raise ValueError(f"The {split} split is empty: {self.describe()}. Fix: provide non-empty text.")
            if n < need:
                raise ValueError(
                    f"The {split} split has {n} tokens, fewer than data.block_size + 1 = {need} needed for one "
                    f"window ({self.describe()}). Fix: lower data.block_size or use a longer corpus."
                )

    def _write(self, work: Path, num_proc: int) -> None:
        """Tokenize, split, optionally remap, and write every cache file into ``work``."""
        with tempfile.TemporaryDirectory(prefix="hf-", dir=work) as hf_cache:
            splits = self._tokenize(hf_cache, num_proc)
        splits = {s: ids for s, ids in splits.items() if s in SPLITS}
        if "val" not in splits:
            splits["train"], splits["val"] = chunk_split(splits["train"], **_chunk_args(self.split_rule()))
        self.check_lengths({s: len(ids) for s, ids in splits.items()})
        vocab = self.vocab
        if vocab is None and self.vocab_size is not None:
            counts = np.bincount(splits["train"], minlength=GPT2_VOCAB_SIZE)
            for extra in self.vocab_extra:  # more training text for the vocabulary only
                counts += np.bincount(tokenize_file(extra, num_threads=num_proc), minlength=GPT2_VOCAB_SIZE)
            vocab = CompactVocab.from_counts(counts, self.vocab_size, byte_fallback=self.byte_fallback)
        if vocab is not None:
            vocab.save(work / "vocab.json")
            splits = {s: vocab.encode(ids) for s, ids in splits.items()}
        for split, ids in splits.items():
            np.asarray(ids, dtype=TOKEN_DTYPE).tofile(work / f"{split}.bin")
        meta = {"spec": self.spec(), "num_tokens": {s: int(len(ids)) for s, ids in splits.items()}}
        (work / "meta.json").write_text(json.dumps(meta, indent=1))

    def _tokenize(self, hf_cache: str, num_proc: int) -> dict[str, np.ndarray]:
        """GPT-2 ids per split: hub datasets through ``datasets.map``, local files directly (:func:`tokenize_file`)."""
        if self.source is DataSource.hub:
            loaded = load_hub(self.hub_name, self.hub_config, hf_cache)
            splits = select_hub_splits(loaded, self.hub_name)
            rank_zero_info(f"Tokenizing {self.describe()} ({', '.join(splits)}) with {num_proc} processes")
            return {s: tokenize_dataset(ds, num_proc, hf_cache) for s, ds in splits.items()}
        # Local files skip ``datasets`` (about 9 s of Arrow and process start-up for the 10 MB book mix):
        # tiktoken's encoder on the same rows gives the same ids in about a second.
        files = self.files()
        rank_zero_info(f"Tokenizing {self.describe()} ({', '.join(files)}) with {num_proc} threads")
        return {s: tokenize_file(path, num_threads=num_proc) for s, path in files.items()}


# ---------------------------------------------------------------------- tokenizing, splitting, publishing


def encode_rows(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
    """Batched ``Dataset.map`` function: GPT-2 ids per row, EOT after unterminated rows."""
    texts = batch["text"]
    ids = gpt2_encoding().encode_ordinary_batch(texts)
    for row, text in zip(ids, texts):
        if text and not text.endswith("\n"):
            row.append(EOT_ID)
    return {"ids": ids}


def read_rows(path: str | os.PathLike[str]) -> list[str]:
    """A text file's rows exactly as ``datasets``' ``text`` loader (``sample_by="line"``, line breaks kept) makes them.

    Text mode translates universal newlines (``\\r\\n``, ``\\r``) into ``\\n``; rows split on ``\\n`` only and keep it.
    """
    with open(path, encoding="utf-8") as f:
        return StringIO(f.read()).readlines()


def tokenize_file(path: str | os.PathLike[str], num_threads: int = 2) -> np.ndarray:
    """GPT-2 ids of a local text file as one flat int64 array: the ids :func:`tokenize_dataset` gives for the
    same file loaded by ``datasets`` (same rows, same per-row encoding, EOT after unterminated rows)."""
    rows = read_rows(path)
    if not rows:
        return np.zeros(0, dtype=np.int64)
    enc = gpt2_encoding()

    def encode_chunk(chunk: list[str]) -> list[int]:
        out: list[int] = []
        for text in chunk:
            out += enc.encode_ordinary(text)
            if not text.endswith("\n"):
                out.append(EOT_ID)
        return out

    # A plain loop per contiguous chunk of rows: tiktoken's encode_ordinary_batch pays a thread-pool task per row
    # (about 10 s over the book mix's 159k rows where this loop takes about 1.3 s); the encoder releases the GIL,
    # so a few chunks on threads overlap.
    n = max(1, min(num_threads, len(rows)))
    bounds = [len(rows) * i // n for i in range(n + 1)]
    chunks = [rows[a:b] for a, b in zip(bounds, bounds[1:])]
    if n == 1:
        parts = [encode_chunk(chunks[0])]
    else:
        with ThreadPoolExecutor(n) as pool:
            parts = list(pool.map(encode_chunk, chunks))
    return np.fromiter(chain.from_iterable(parts), dtype=np.int64, count=sum(map(len, parts)))


def tokenize_dataset(ds: Any, num_proc: int, hf_cache: str) -> np.ndarray:
    """Tokenize a ``datasets.Dataset`` with a ``text`` column into one flat int64 id array."""
    import pyarrow.compute as pc

    if len(ds) == 0:
        return np.zeros(0, dtype=np.int64)
    tokenized = ds.map(
        encode_rows,
        batched=True,
        num_proc=min(num_proc, len(ds)) if num_proc > 1 else None,
        remove_columns=ds.column_names,
        cache_file_name=os.path.join(hf_cache, f"tok-{ds._fingerprint}.arrow"),
        desc="Tokenizing",
    )
    flat = pc.list_flatten(tokenized.data.column("ids"))
    return flat.to_numpy().astype(np.int64, copy=False) if len(flat) else np.zeros(0, dtype=np.int64)


def _chunk_args(rule: Mapping[str, Any]) -> dict[str, Any]:
    return {"chunk_tokens": rule["chunk_tokens"], "val_fraction": rule["val_fraction"], "seed": rule["seed"]}


def chunk_split(ids: np.ndarray, chunk_tokens: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a token stream into (train, val) by whole chunks chosen with a seeded RNG.

    Both outputs keep the corpus order of their chunks. At least one chunk goes to each side.

    Raises:
        ValueError: If the stream has fewer than two chunks.
    """
    n_chunks = math.ceil(len(ids) / chunk_tokens)
    if n_chunks < 2:
        raise ValueError(
            f"The corpus has {len(ids)} tokens: too short to split into train/val chunks of "
            f"{chunk_tokens} tokens (8 * data.block_size). Fix: lower data.block_size or use a longer corpus."
        )
    n_val = min(max(1, round(val_fraction * n_chunks)), n_chunks - 1)
    is_val = np.zeros(n_chunks, dtype=bool)
    is_val[np.random.default_rng(seed).choice(n_chunks, size=n_val, replace=False)] = True
    token_is_val = np.repeat(is_val, chunk_tokens)[: len(ids)]
    return ids[~token_is_val], ids[token_is_val]


def publish(work: Path, target: Path) -> None:
    """Atomically move a finished cache folder into place (another process may have won the race)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp creates 0700; a shared cache must be readable by others
    for file in work.iterdir():
        os.chmod(file, 0o666 & ~umask)
    try:
        os.replace(work, target)
    except OSError:
        if not (target / "meta.json").is_file():
            raise
        log.info("Cache %s was written concurrently; keeping the existing copy", target)
