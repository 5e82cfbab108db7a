"""Text data for GPT-2 language modelling: tokenize once, cache as memmaps, serve fixed windows.

:class:`TextDataModule` reads a corpus from one of three sources (:class:`DataSource`):

* ``bundled``: Tiny Shakespeare, shipped inside the package (works offline, no arguments).
* ``local``: ``path`` is either one text file, split into train/val by chunks (see below), or a
  folder with train/validation(/test) files (``train.txt``, ``valid.txt``/``validation.txt``,
  ``test.txt`` or WikiText's ``wiki.train.raw``/``wiki.valid.raw``/``wiki.test.raw``).
* ``hub``: ``datasets.load_dataset(hub_name, hub_config)`` with splits train/validation(/test)
  and a ``text`` column. Offline it fails within seconds, pointing at ``data.source=local``.

Text is tokenized with GPT-2's BPE in parallel (``Dataset.map(num_proc=...)``) and the token ids
are stored as ``uint16`` files in a cache folder keyed by a hash of everything that determines
them (file contents, tokenizer, split rule, vocabulary setting); see :meth:`TextDataModule.cache_path`.

**Chunk split.** A single file is tokenized, cut into chunks of ``8 * block_size`` tokens, and a
seeded RNG sends ``round(val_fraction * n_chunks)`` of them (at least one) to validation. The
held-out text thus comes from across the whole corpus (every book of a book mix), not just its end.

**Documents.** Rows are lines (line breaks kept, so text round-trips exactly) or, for hub datasets
like OpenWebText, whole documents. ``<|endoftext|>`` is appended after every non-empty row that
does not end in a newline: the end of a document, or the unterminated last line of a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from twist_lightning.corpora import sha256_of
from twist_lightning.tokenizer import EOT_ID, GPT2_VOCAB_SIZE, TOKENIZER_NAME, asset_path, gpt2_encoding
from twist_lightning.validate import check_count, check_utf8
from twist_lightning.vocab import CompactVocab, validate_vocab_size

__all__ = ["DataSource", "HubUnavailableError", "TextDataModule", "TokenWindows", "default_cache_dir"]

log = logging.getLogger(__name__)

#: Bump when the on-disk layout or tokenization rules change, so old caches are not reused.
CACHE_FORMAT = 1
#: Chunk length of the single-file split, in multiples of ``block_size`` (always >= block_size + 1).
CHUNK_BLOCKS = 8
#: Seconds to wait for a TCP connection to the Hub before declaring it unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
TOKEN_DTYPE = np.uint16  # every GPT-2 id (< 50257) fits in 16 bits

SPLITS = ("train", "val", "test")
_FOLDER_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train.txt", "wiki.train.raw", "train.raw", "train"),
    "val": ("validation.txt", "valid.txt", "val.txt", "wiki.valid.raw", "validation.raw", "valid.raw", "validation"),
    "test": ("test.txt", "wiki.test.raw", "test.raw", "test"),
}
_HUB_SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("validation", "valid", "val"),
    "test": ("test",),
}
_TRUE_VALUES = {"1", "on", "yes", "true"}


class DataSource(str, Enum):
    """Where :class:`TextDataModule` reads its text from."""

    BUNDLED = "bundled"
    LOCAL = "local"
    HUB = "hub"


class HubUnavailableError(ConnectionError):
    """The dataset hub cannot be reached; the message names the ``local`` alternative."""


def default_cache_dir() -> Path:
    """Return ``$TWIST_CACHE_DIR`` if set, else ``~/.cache/twist_lightning``."""
    env = os.environ.get("TWIST_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "twist_lightning"


class TokenWindows(Dataset):
    """Non-overlapping ``(x, y)`` windows over a token stream, ``y`` being ``x`` shifted by one.

    Window ``i`` covers tokens ``[i * block_size, (i + 1) * block_size]``, so there are
    ``(n - 1) // block_size`` windows. A plain map-style dataset, so Lightning's automatic
    ``DistributedSampler`` shards it across ranks.

    Args:
        tokens: A 1-D integer array, or the path of a ``uint16`` token file (opened lazily as a
            memmap in each process, so DataLoader workers never pickle the data itself).
        block_size: Context length of each window.
    """

    def __init__(self, tokens: np.ndarray | str | os.PathLike[str], block_size: int) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self._path: Path | None = None if isinstance(tokens, np.ndarray) else Path(tokens)
        self._tokens: np.ndarray | None = tokens if isinstance(tokens, np.ndarray) else None
        self.num_tokens = len(self.tokens)

    @property
    def tokens(self) -> np.ndarray:
        """The underlying token array (a read-only memmap when built from a path)."""
        if self._tokens is None:
            self._tokens = np.memmap(self._path, dtype=TOKEN_DTYPE, mode="r")
        return self._tokens

    def __len__(self) -> int:
        return max(0, (self.num_tokens - 1) // self.block_size)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        start = index * self.block_size
        chunk = torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._path is not None:
            state["_tokens"] = None  # reopen the memmap in the receiving process
        return state


class TextDataModule(LightningDataModule):
    """GPT-2-tokenized text corpus served as fixed-length windows.

    Args:
        source: ``"bundled"``, ``"local"`` or ``"hub"`` (see :class:`DataSource`).
        path: ``local`` only: a text file (split into train/val by chunks) or a folder with
            train/validation(/test) files.
        hub_name: ``hub`` only: dataset name for ``datasets.load_dataset`` (e.g. ``"wikitext"``),
            or a local dataset folder.
        hub_config: ``hub`` only: dataset configuration (e.g. ``"wikitext-103-raw-v1"``).
        block_size: Context length of each training window.
        batch_size: Windows per batch (per rank).
        val_fraction: Share of chunks held out for validation when a source has no validation split.
        vocab_size: If set, remap to a :class:`CompactVocab` of this size built from the train split;
            ``None`` keeps GPT-2's 50257 ids.
        cache_dir: Token cache root; default ``$TWIST_CACHE_DIR`` or ``~/.cache/twist_lightning``.
        num_workers: DataLoader worker processes.
        num_proc: Processes used to tokenize (``Dataset.map``).
        seed: Seed of the chunk split.

    Raises:
        ValueError: For invalid settings (message names the ``data.*`` key, the value and the fix).
        FileNotFoundError: If a ``local`` path does not exist.
    """

    def __init__(
        self,
        *,
        source: DataSource | str = "bundled",
        path: str | None = None,
        hub_name: str | None = None,
        hub_config: str | None = None,
        block_size: int = 128,
        batch_size: int = 16,
        val_fraction: float = 0.1,
        vocab_size: int | None = None,
        cache_dir: str | None = None,
        num_workers: int = 0,
        num_proc: int = 2,
        seed: int = 1337,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.source = _parse_source(source)
        _validate_settings(self.source, path, hub_name, block_size, batch_size, val_fraction, vocab_size, num_proc)
        check_count("data.num_workers", num_workers, minimum=0, fix="use data.num_workers=0 (load in the main process)")
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.vocab: CompactVocab | None = None
        self.datasets: dict[str, TokenWindows] = {}
        self._restored_vocab: CompactVocab | None = None

    # ------------------------------------------------------------------ public properties

    @property
    def model_vocab_size(self) -> int:
        """Vocabulary size the model must use: ``vocab_size`` if set, else 50257 (known before setup)."""
        return int(self.hparams.vocab_size) if self.hparams.vocab_size is not None else GPT2_VOCAB_SIZE

    @property
    def cache_path(self) -> Path:
        """Cache folder for the current settings: ``<cache_dir>/<source>-<key>/``.

        It holds ``train.bin``, ``val.bin`` (and ``test.bin``) with ``uint16`` token ids,
        ``vocab.json`` when ``vocab_size`` is set, and ``meta.json`` (the key's inputs and the
        token counts). The folder is built under a temporary name and renamed into place, so it
        is either complete or absent.
        """
        spec = self._cache_spec()
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]
        return self.cache_root / f"{self.source.value}-{digest}"

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Tokenize the corpus and write the cache, unless a complete cache already exists."""
        target = self.cache_path
        if (target / "meta.json").is_file():
            return
        self.cache_root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=self.cache_root))
        try:
            self._build_cache(work)
            _publish(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rank_zero_info(f"Token cache written to {target}")

    def setup(self, stage: str | None = None) -> None:
        """Open the cached splits as memmaps (tokenizing first if no cache exists).

        Args:
            stage: Lightning stage; all available splits are opened regardless.
        """
        target = self.cache_path
        if not (target / "meta.json").is_file():
            self.prepare_data()  # standalone use outside a Trainer
        meta = json.loads((target / "meta.json").read_text())
        self.vocab = CompactVocab.load(target / "vocab.json") if (target / "vocab.json").is_file() else None
        if self._restored_vocab is not None and self._restored_vocab != self.vocab:
            rank_zero_warn("The checkpoint's compact vocabulary differs from the one built from the current data.")
        self._check_lengths(meta["num_tokens"])
        block = self.hparams.block_size
        self.datasets = {s: TokenWindows(target / f"{s}.bin", block) for s in meta["num_tokens"]}

    def train_dataloader(self) -> DataLoader:
        """Shuffled train windows (Lightning adds a DistributedSampler under DDP)."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation windows in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test windows in order; only for sources with a test split."""
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint the compact vocabulary (if any) so a trained model can be decoded later."""
        return {"vocab": self.vocab.state_dict()} if self.vocab is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the vocabulary saved by :meth:`state_dict`; :meth:`setup` checks it against the data."""
        if state_dict.get("vocab") is not None:
            self._restored_vocab = CompactVocab.from_state_dict(state_dict["vocab"])
            self.vocab = self.vocab or self._restored_vocab

    # ------------------------------------------------------------------ baselines

    def unigram_ppl(self, split: str = "val") -> float:
        """Perplexity of the train split's unigram distribution on ``split``.

        Add-one smoothing over :attr:`model_vocab_size` keeps unseen tokens finite. A trained
        language model must beat this number.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.

        Returns:
            ``exp`` of the mean negative log-probability of every token of ``split``.
        """
        if not self.datasets:
            self.setup()
        train_counts = np.bincount(self._split_tokens("train"), minlength=self.model_vocab_size) + 1.0
        log_p = np.log(train_counts) - np.log(train_counts.sum())
        eval_counts = np.bincount(self._split_tokens(split), minlength=self.model_vocab_size)
        return float(math.exp(-(eval_counts @ log_p) / eval_counts.sum()))

    # ------------------------------------------------------------------ internals

    def _split_tokens(self, split: str) -> np.ndarray:
        if split not in self.datasets:
            raise ValueError(f"split={split!r} is not available; this corpus has {sorted(self.datasets)}")
        return np.asarray(self.datasets[split].tokens)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        if split not in self.datasets:
            raise ValueError(
                f"No {split} split: data.source={self.source.value} provides {sorted(self.datasets)}. "
                f"Fix: use a data.path folder (or hub dataset) with a {split} file."
            )
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets[split],
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            # training drops a short last batch: every step then sees the same number of windows, which TwIST's
            # virtual workers (each taking every k-th row) and throughput figures rely on
            drop_last=split == "train" and len(self.datasets[split]) >= self.hparams.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _check_lengths(self, num_tokens: Mapping[str, int]) -> None:
        need = self.hparams.block_size + 1
        for split, n in num_tokens.items():
            if n == 0:
                raise ValueError(f"The {split} split is empty: {self._describe_input()}. Fix: provide non-empty text.")
            if n < need:
                raise ValueError(
                    f"The {split} split has {n} tokens, fewer than data.block_size + 1 = {need} needed for one "
                    f"window ({self._describe_input()}). Fix: lower data.block_size or use a longer corpus."
                )

    def _describe_input(self) -> str:
        if self.source is DataSource.HUB:
            return f"data.hub_name={self.hparams.hub_name} data.hub_config={self.hparams.hub_config}"
        if self.source is DataSource.LOCAL:
            return f"data.path={self.hparams.path}"
        return "data.source=bundled"

    def _split_rule(self) -> dict[str, Any]:
        return {
            "rule": "chunks",
            "chunk_tokens": CHUNK_BLOCKS * self.hparams.block_size,
            "val_fraction": self.hparams.val_fraction,
            "seed": self.hparams.seed,
        }

    def _cache_spec(self) -> dict[str, Any]:
        """Everything that determines the cached tokens; hashed into the cache folder name."""
        spec: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "tokenizer": TOKENIZER_NAME,
            "vocab_size": self.hparams.vocab_size,
        }
        if self.source is DataSource.HUB:
            name = self.hparams.hub_name
            spec["hub"] = {"name": name, "config": self.hparams.hub_config}
            if Path(name).is_dir():  # a local stand-in: key on its contents so edits invalidate
                spec["hub"]["files"] = {str(p.relative_to(name)): sha256_of(p) for p in _files_under(Path(name))}
            # The split rule only applies when the dataset lacks a validation split; it is cheap to
            # include always, and a hub dataset's split layout is unknown until it is loaded.
            spec["split"] = self._split_rule()
            return spec
        files = self._local_files()
        spec["files"] = {split: sha256_of(p) for split, p in files.items()}
        spec["split"] = self._split_rule() if "val" not in files else {"rule": "files"}
        return spec

    def _local_files(self) -> dict[str, Path]:
        """Map split -> file for bundled/local sources (only ``train`` for a single file)."""
        if self.source is DataSource.BUNDLED:
            return {"train": asset_path("tinyshakespeare.txt")}
        path = Path(self.hparams.path).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"data.path={self.hparams.path} does not exist. Fix: point data.path at a text file or a folder "
                f"with train/validation files, or use data.source=bundled."
            )
        if path.is_file():
            _check_nonempty(path)
            files = {"train": path}
        else:
            files = _resolve_folder(path)
        for file in files.values():  # before tokenizing: datasets would fail deep inside with a raw decode error
            check_utf8(file)
        return files

    def _build_cache(self, work: Path) -> None:
        """Tokenize, split, optionally remap, and write every cache file into ``work``."""
        with tempfile.TemporaryDirectory(prefix="hf-", dir=work) as hf_cache:
            splits = self._tokenize_source(hf_cache)
        splits = {s: ids for s, ids in splits.items() if s in SPLITS}
        if "val" not in splits:
            splits["train"], splits["val"] = _chunk_split(splits["train"], **_chunk_args(self._split_rule()))
        self._check_lengths({s: len(ids) for s, ids in splits.items()})
        vocab = None
        if self.hparams.vocab_size is not None:
            vocab = CompactVocab.from_counts(np.bincount(splits["train"], minlength=GPT2_VOCAB_SIZE), self.hparams.vocab_size)
            vocab.save(work / "vocab.json")
            splits = {s: vocab.encode(ids) for s, ids in splits.items()}
        for split, ids in splits.items():
            np.asarray(ids, dtype=TOKEN_DTYPE).tofile(work / f"{split}.bin")
        meta = {"spec": self._cache_spec(), "num_tokens": {s: int(len(ids)) for s, ids in splits.items()}}
        (work / "meta.json").write_text(json.dumps(meta, indent=1))

    def _tokenize_source(self, hf_cache: str) -> dict[str, np.ndarray]:
        """Load the raw text with ``datasets`` and return GPT-2 ids per split."""
        import datasets  # heavy import, only needed when the cache is cold

        num_proc = self.hparams.num_proc
        if self.source is DataSource.HUB:
            loaded = _load_hub(self.hparams.hub_name, self.hparams.hub_config, hf_cache)
            splits = _select_hub_splits(loaded, self.hparams.hub_name)
        else:
            files = {s: str(p) for s, p in self._local_files().items()}
            # Line mode with line breaks kept: text round-trips exactly, and lines are many small rows
            # that Dataset.map can tokenize in parallel (one whole-file row could not be).
            loaded = datasets.load_dataset(
                "text", data_files=files, sample_by="line", keep_linebreaks=True, cache_dir=hf_cache
            )
            splits = dict(loaded)
        rank_zero_info(f"Tokenizing {self._describe_input()} ({', '.join(splits)}) with {num_proc} processes")
        return {s: _tokenize_dataset(ds, num_proc, hf_cache) for s, ds in splits.items()}


# ---------------------------------------------------------------------- validation helpers


def _parse_source(source: DataSource | str) -> DataSource:
    # Any Enum counts by its value: Hydra structured configs pass their own enum type.
    raw = source.value if isinstance(source, Enum) else source
    try:
        return DataSource(str(raw).lower())
    except ValueError:
        allowed = ", ".join(s.value for s in DataSource)
        raise ValueError(f"data.source={source!r} is not supported. Fix: use one of {allowed}.") from None


def _validate_settings(
    source: DataSource,
    path: str | None,
    hub_name: str | None,
    block_size: int,
    batch_size: int,
    val_fraction: float,
    vocab_size: int | None,
    num_proc: int,
) -> None:
    """Reject bad settings before any file is read."""
    if source is DataSource.LOCAL:
        if not path:
            raise ValueError(
                "data.source=local needs data.path (got None). Fix: set data.path=/path/to/corpus.txt "
                "or a folder with train/validation files."
            )
        if not Path(path).expanduser().exists():
            raise FileNotFoundError(
                f"data.path={path} does not exist. Fix: point data.path at an existing text file or folder."
            )
    if source is DataSource.HUB and not hub_name:
        raise ValueError("data.source=hub needs data.hub_name (got None). Fix: e.g. data.hub_name=wikitext.")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"data.block_size must be an integer >= 1 (got {block_size!r}). Fix: e.g. data.block_size=128.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"data.batch_size must be an integer >= 1 (got {batch_size!r}). Fix: e.g. data.batch_size=16.")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(
            f"data.val_fraction must lie strictly between 0 and 1 (got {val_fraction!r}). Fix: e.g. data.val_fraction=0.1."
        )
    if vocab_size is not None:
        validate_vocab_size(vocab_size)
    if num_proc < 1:
        raise ValueError(f"data.num_proc must be >= 1 (got {num_proc!r}). Fix: e.g. data.num_proc=2.")


def _check_nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ValueError(f"data.path={path} is an empty file. Fix: point data.path at a file with text.")


def _resolve_folder(folder: Path) -> dict[str, Path]:
    """Find the split files of a corpus folder; a folder without a train file is an error."""
    found = {}
    for split, names in _FOLDER_NAMES.items():
        match = next((folder / n for n in names if (folder / n).is_file()), None)
        if match is not None:
            _check_nonempty(match)
            found[split] = match
    if "train" not in found:
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        example = found.get("val", folder / "corpus.txt")
        raise FileNotFoundError(
            f"data.path={folder} has no training file (looked for {', '.join(_FOLDER_NAMES['train'])}; found "
            f"{present}). Fix: add a train file, or point data.path at a single file (e.g. data.path={example}) "
            f"to split it into train/val by chunks."
        )
    return found


# ---------------------------------------------------------------------- hub helpers


def _offline_flag() -> str | None:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE_VALUES:
            return var
    return None


def _hub_unavailable(name: str, config: str | None, reason: str) -> HubUnavailableError:
    return HubUnavailableError(
        f"data.source=hub cannot load data.hub_name={name} data.hub_config={config}: {reason}. "
        f"Offline, use a local copy instead: set data.source=local data.path=/path/to/wiki.train.raw "
        f"(one file is split into train/val by chunks) or data.path=/path/to/folder holding "
        f"wiki.train.raw/wiki.valid.raw/wiki.test.raw. If the dataset is already in the Hugging Face cache, "
        f"set HF_DATASETS_OFFLINE=1 to load it from there."
    )


def _probe_hub(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Return why the Hub is unreachable, or ``None`` if a TCP connection succeeds (or a proxy is set)."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct probe says nothing about a proxied route; let load_dataset decide
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"{host}:{port} is unreachable ({err.__class__.__name__}: {err})"


def _load_hub(name: str, config: str | None, hf_cache: str) -> Any:
    """``load_dataset(name, config)``, failing fast with a helpful error when the Hub is unreachable."""
    import datasets

    if Path(name).is_dir():
        # A local dataset folder needs no network; a folder of text files keeps its line breaks
        # so it tokenizes exactly like data.source=local.
        kwargs: dict[str, Any] = {"cache_dir": hf_cache}
        if all(p.suffix in {".txt", ".raw"} for p in _files_under(Path(name))):
            kwargs.update(keep_linebreaks=True)
        return datasets.load_dataset(name, config, **kwargs)
    flag = _offline_flag()
    if flag is not None and not datasets.config.HF_HUB_OFFLINE:
        # datasets read the flag at import time: set later, it would not stop ~23 s of retries.
        raise _hub_unavailable(name, config, f"{flag} is set")
    if flag is None:
        # load_dataset retries for ~23 s before giving up when offline; a 3 s probe fails sooner.
        reason = _probe_hub()
        if reason is not None:
            raise _hub_unavailable(name, config, reason)
    try:
        # With an offline flag set, load_dataset still serves a cached copy, or raises at once.
        return datasets.load_dataset(name, config)
    except ConnectionError as err:
        raise _hub_unavailable(name, config, f"{flag} is set" if flag else str(err)) from err


def _select_hub_splits(loaded: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Rename hub splits to train/val/test and check for a ``text`` column."""
    splits = {}
    for split, candidates in _HUB_SPLIT_NAMES.items():
        key = next((c for c in candidates if c in loaded), None)
        if key is not None:
            splits[split] = loaded[key]
    if "train" not in splits:
        raise ValueError(f"data.hub_name={name} has no train split (splits: {list(loaded)}). Fix: use data.source=local.")
    columns = splits["train"].column_names
    if "text" not in columns:
        raise ValueError(f"data.hub_name={name} has no 'text' column (columns: {columns}). Fix: use a text dataset.")
    return splits


# ---------------------------------------------------------------------- tokenization and caching


def _encode_rows(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
    """Batched ``Dataset.map`` function: GPT-2 ids per row, EOT after unterminated rows."""
    texts = batch["text"]
    ids = gpt2_encoding().encode_ordinary_batch(texts)
    for row, text in zip(ids, texts):
        if text and not text.endswith("\n"):
            row.append(EOT_ID)
    return {"ids": ids}


def _tokenize_dataset(ds: Any, num_proc: int, hf_cache: str) -> np.ndarray:
    """Tokenize a ``datasets.Dataset`` with a ``text`` column into one flat int64 id array."""
    import pyarrow.compute as pc

    if len(ds) == 0:
        return np.zeros(0, dtype=np.int64)
    tokenized = ds.map(
        _encode_rows,
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


def _chunk_split(ids: np.ndarray, chunk_tokens: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


def _publish(work: Path, target: Path) -> None:
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


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


