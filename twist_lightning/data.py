"""The Lightning DataModule for GPT-2 language modelling: fixed windows over a cached, tokenized corpus.

:class:`TextDataModule` names a corpus (a :class:`~twist_lightning.sources.DataSource`: ``bundled`` Tiny
Shakespeare, a ``local`` file or folder, or a ``hub`` dataset; see :mod:`twist_lightning.sources`), has it
tokenized once into the memmap cache of :mod:`twist_lightning.token_cache` (``prepare_data``), and serves
non-overlapping ``(x, y)`` windows of it (:class:`TokenWindows`) to the train / val / test loaders. The compact
vocabulary, when ``vocab_size`` is set, travels in Lightning checkpoints (``state_dict``).

``DataSource``, ``HubUnavailableError`` and ``default_cache_dir`` are re-exported from their own modules, so
``from twist_lightning.data import ...`` keeps working for every name this module held before they moved.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from twist_lightning.sources import HUB_PROBE_TIMEOUT_S, DataSource, HubUnavailableError, parse_source
from twist_lightning.token_cache import CACHE_FORMAT, CHUNK_BLOCKS, SPLITS, TOKEN_DTYPE, TokenCache, default_cache_dir
from twist_lightning.tokenizer import GPT2_VOCAB_SIZE
from twist_lightning.validate import check_count
from twist_lightning.vocab import MIN_BYTE_FALLBACK_SIZE, CompactVocab, validate_vocab_size

__all__ = ["CACHE_FORMAT", "CHUNK_BLOCKS", "HUB_PROBE_TIMEOUT_S", "SPLITS", "TOKEN_DTYPE", "DataSource",
           "EpochShuffle", "HubUnavailableError", "TextDataModule", "TokenWindows", "default_cache_dir"]


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


class EpochShuffle(RandomSampler):
    """A shuffle whose order is a function of ``(seed, epoch)`` alone, as :class:`DistributedSampler`'s is.

    A plain ``shuffle=True`` loader draws each epoch's order from the global torch RNG, which every other
    iterator also draws from (each validation pass takes a seed from it for its workers). The training order then
    depended on how often a run validated, and a resumed run (the RNG restarts from the seed) replayed epoch 0's
    order. Lightning calls :meth:`set_epoch` before each training epoch (also after a resume, with the restored
    epoch), so neither happens here. It subclasses ``RandomSampler`` so Lightning still sees a shuffled loader and
    swaps in its ``DistributedSampler`` (the same ``(seed, epoch)`` contract) under DDP.

    Args:
        data_source: The dataset to draw indices of.
        seed: The shuffle's seed; epoch ``e`` uses a generator seeded with ``seed + e``.
    """

    def __init__(self, data_source: Dataset, seed: int) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class TextDataModule(LightningDataModule):
    """GPT-2-tokenized text corpus served as fixed-length windows.

    Args:
        source: ``"bundled"``, ``"local"`` or ``"hub"`` (see :class:`~twist_lightning.sources.DataSource`).
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
        test_path: A text file held out as the ``test`` split (``local``/``bundled``), e.g. WikiText's
            ``wiki.test.raw`` beside its ``wiki.valid.raw`` as training text; only ever evaluated on.
        vocab_extra: More training text files counted when the compact vocabulary is built (a vocabulary shared
            by a pretraining and a fine-tuning corpus, built from training text only).
        byte_fallback: The compact vocabulary spells the tokens it leaves out by their bytes (no unknown id, so no
            test token is lost; streams get a little longer) instead of mapping them to one unknown id.
        vocab_from: Encode with a given compact vocabulary instead: a ``vocab.json``, a twist-lightning checkpoint
            or an exported folder (fine-tuning a pretrained model on new text keeps its ids). ``vocab_size`` must
            then be ``None`` or its size.
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
        vocab_from: str | None = None,
        test_path: str | None = None,
        vocab_extra: Sequence[str] = (),
        byte_fallback: bool = False,
        cache_dir: str | None = None,
        num_workers: int = 0,
        num_proc: int = 2,
        seed: int = 1337,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.source = parse_source(source)
        _validate_settings(self.source, path, hub_name, block_size, batch_size, val_fraction, vocab_size, num_proc)
        check_count("data.num_workers", num_workers, minimum=0, fix="use data.num_workers=0 (load in the main process)")
        self.cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        _check_extra_files(self.source, test_path, vocab_extra, vocab_size, vocab_from)
        given = _given_vocab(vocab_from, vocab_size)
        _check_byte_fallback(bool(byte_fallback), vocab_size, given, vocab_from)
        self.cache = TokenCache(source=self.source, path=path, hub_name=hub_name, hub_config=hub_config,
                                block_size=block_size, val_fraction=val_fraction, seed=seed,
                                vocab_size=given.size if given is not None else vocab_size, root=self.cache_root,
                                vocab=given, test_path=test_path, vocab_extra=tuple(vocab_extra),
                                byte_fallback=bool(byte_fallback))
        self.vocab: CompactVocab | None = None
        self.datasets: dict[str, TokenWindows] = {}
        self._restored_vocab: CompactVocab | None = None

    # ------------------------------------------------------------------ public properties

    @property
    def model_vocab_size(self) -> int:
        """Vocabulary size the model must use: ``vocab_size`` if set, else 50257 (known before setup)."""
        size = self.cache.vocab_size
        return int(size) if size is not None else GPT2_VOCAB_SIZE

    @property
    def cache_path(self) -> Path:
        """Cache folder for the current settings: ``<cache_dir>/<source>-<key>/`` (:class:`TokenCache`)."""
        return self.cache.folder

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Tokenize the corpus and write the cache, unless a complete cache already exists."""
        self.cache.build(self.hparams.num_proc)

    def setup(self, stage: str | None = None) -> None:
        """Open the cached splits as memmaps (tokenizing first if no cache exists).

        Args:
            stage: Lightning stage; all available splits are opened regardless.
        """
        if not self.cache.complete:
            self.prepare_data()  # standalone use outside a Trainer
        target, meta = self.cache.folder, self.cache.meta()
        self.vocab = self.cache.cached_vocab()
        if self._restored_vocab is not None and self._restored_vocab != self.vocab:
            rank_zero_warn("The checkpoint's compact vocabulary differs from the one built from the current data.")
        self.cache.check_lengths(meta["num_tokens"])
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
        dataset = self.datasets[split]
        # The run's seed (``seed_everything``; what Lightning's DistributedSampler also uses), fixed for the run:
        # torch.initial_seed() does not move as the RNG is drawn from.
        seed = torch.initial_seed() % 2**62
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            sampler=EpochShuffle(dataset, seed) if shuffle else None,
            # every iterator draws a base seed for its workers; a private generator keeps those draws off the
            # global RNG that training (dropout, for one) uses
            generator=torch.Generator().manual_seed(seed),
            # training drops a short last batch: every step then sees the same number of windows, which TwIST's
            # virtual workers (each taking every k-th row) and throughput figures rely on
            drop_last=split == "train" and len(self.datasets[split]) >= self.hparams.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


# ---------------------------------------------------------------------- validation helpers


def _check_extra_files(source: DataSource, test_path: str | None, vocab_extra: Sequence[str], vocab_size: int | None,
                       vocab_from: str | None) -> None:
    """``data.test_path`` and ``data.vocab_extra`` must name existing files, and only where they apply."""
    if test_path is not None:
        if source is DataSource.hub:
            raise ValueError(f"data.test_path={test_path} needs data.source=local or bundled (a hub dataset brings its "
                             "own test split). Fix: drop data.test_path.")
        if not Path(test_path).expanduser().is_file():
            raise FileNotFoundError(f"data.test_path={test_path} is not a file. Fix: point it at the held-out text.")
    for extra in vocab_extra:
        if not Path(extra).expanduser().is_file():
            raise FileNotFoundError(f"data.vocab_extra entry {extra} is not a file. Fix: list training text files.")
    if vocab_extra and (vocab_size is None or vocab_from is not None):
        raise ValueError(f"data.vocab_extra={list(vocab_extra)} only adds counts to a compact vocabulary built here; "
                         "it needs data.vocab_size (model.vocab_size below 50257) and no data.vocab_from.")


def _check_byte_fallback(byte_fallback: bool, vocab_size: int | None, given: CompactVocab | None,
                         vocab_from: str | None) -> None:
    """``data.byte_fallback`` applies to a compact vocabulary built here, of at least 259 ids."""
    if not byte_fallback:
        return
    if given is not None:
        if not given.byte_fallback:
            raise ValueError(f"data.byte_fallback=true but the given vocabulary ({vocab_from!r}: data.vocab_from, or "
                             "model.init_from's) has no byte fallback, and its ids are fixed. Fix: drop "
                             "data.byte_fallback.")
        return
    if vocab_size is None:
        raise ValueError("data.byte_fallback=true needs a compact vocabulary: GPT-2's full 50257 ids lose no token "
                         "anyway. Fix: set model.vocab_size below 50257 (e.g. 8192), or drop data.byte_fallback.")
    if vocab_size < MIN_BYTE_FALLBACK_SIZE:
        raise ValueError(f"data.vocab_size={vocab_size} is too small for data.byte_fallback=true, which keeps the "
                         "256 byte tokens, <|endoftext|>, the unknown id and at least one merged token. Fix: use "
                         f"model.vocab_size >= {MIN_BYTE_FALLBACK_SIZE}.")


def _given_vocab(vocab_from: str | None, vocab_size: int | None) -> CompactVocab | None:
    """The vocabulary ``data.vocab_from`` names, checked against ``data.vocab_size``."""
    if vocab_from is None:
        return None
    from twist_lightning.pretrained import source_vocab

    vocab = source_vocab(vocab_from, key="data.vocab_from")
    if vocab is None:
        raise ValueError(f"data.vocab_from={vocab_from!r} holds no compact vocabulary (it uses GPT-2's 50257 ids). "
                         "Fix: drop data.vocab_from and set data.vocab_size=null (model.vocab_size=50257).")
    if vocab_size is not None and vocab_size != vocab.size:
        raise ValueError(f"data.vocab_size={vocab_size} but data.vocab_from={vocab_from!r} has {vocab.size} ids. "
                         f"Fix: set model.vocab_size={vocab.size} (data.vocab_size follows it), or drop data.vocab_from.")
    return vocab


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
    if source is DataSource.local:
        if not path:
            raise ValueError(
                "data.source=local needs data.path (got None). Fix: set data.path=/path/to/corpus.txt "
                "or a folder with train/validation files."
            )
        if not Path(path).expanduser().exists():
            raise FileNotFoundError(
                f"data.path={path} does not exist. Fix: point data.path at an existing text file or folder."
            )
    if source is DataSource.hub and not hub_name:
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
