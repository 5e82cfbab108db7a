"""Compact vocabulary: GPT-2 ids remapped to a corpus's most frequent tokens.

With GPT-2's 50,257-token vocabulary the LM head and cross-entropy dominate a small model's step
on CPU. :class:`CompactVocab` keeps the ``K - 1`` most frequent GPT-2 tokens of the training split
and sends every other token to one unknown id, so the model's ``vocab_size`` is ``K`` and the
unknown id is ``K - 1``. Encoding and decoding are single table look-ups (no Python loops).

With ``byte_fallback`` no token is lost: the 256 single-byte GPT-2 tokens are always kept, and a token outside
the kept set is spelled by the GPT-2 ids of its bytes (as byte-level BPE would before any merge), so decoding
gives the text back exactly and no id stands for "unknown". Encoding then changes a stream's length, so it takes
1-D token streams (a corpus, a prompt), not windows. The unknown id stays (unused) so ``size`` keeps its meaning.

Example:
    >>> import numpy as np
    >>> counts = np.bincount(np.array([5, 5, 5, 7, 7, 9]), minlength=50257)
    >>> vocab = CompactVocab.from_counts(counts, size=3)
    >>> vocab.keep_ids.tolist(), vocab.unk_id
    ([5, 7], 2)
    >>> vocab.encode(np.array([7, 9, 5])).tolist()
    [1, 2, 0]
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from twist_lightning.tokenizer import EOT_ID, GPT2_VOCAB_SIZE, gpt2_encoding

__all__ = ["MIN_BYTE_FALLBACK_SIZE", "UNK_GPT2_ID", "CompactVocab", "byte_token_ids", "validate_vocab_size"]

#: GPT-2 id that the unknown compact id decodes to: token 4210 is U+FFFD "�" (the Unicode
#: replacement character), so decoded text visibly marks where a rare token was dropped.
UNK_GPT2_ID: int = 4210

_FORMAT_VERSION = 1
#: Smallest byte-fallback vocabulary: the 256 byte tokens, <|endoftext|>, the unknown id and one merged token.
MIN_BYTE_FALLBACK_SIZE: int = 259
ArrayLike = TypeVar("ArrayLike", np.ndarray, torch.Tensor)


def validate_vocab_size(size: int) -> None:
    """Check a compact vocabulary size.

    Args:
        size: Requested model vocabulary size ``K`` (kept tokens + one unknown id).

    Raises:
        ValueError: If ``size`` is not an integer in ``[2, 50257]``.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 2 <= size <= GPT2_VOCAB_SIZE:
        raise ValueError(
            f"data.vocab_size must be an integer between 2 and {GPT2_VOCAB_SIZE} (got {size!r}): it is the number "
            f"of kept GPT-2 tokens plus one unknown id. Fix: set e.g. data.vocab_size=8192, or data.vocab_size=null "
            f"for the full GPT-2 vocabulary."
        )


class CompactVocab:
    """Map GPT-2 ids to ``size`` compact ids: the kept tokens, then one unknown id.

    Args:
        keep_ids: The ``size - 1`` kept GPT-2 ids, in compact-id order (compact id ``i`` is
            ``keep_ids[i]``). Must be unique and in ``[0, 50257)``.
        unk_gpt2_id: GPT-2 id that the unknown compact id decodes to (default :data:`UNK_GPT2_ID`).
        byte_fallback: Spell every GPT-2 token not kept by its bytes' tokens instead of the unknown id;
            ``keep_ids`` must then hold the 256 single-byte tokens and ``<|endoftext|>``.

    Raises:
        ValueError: If the ids are out of range, duplicated, or give an invalid size.
    """

    def __init__(self, keep_ids: Sequence[int] | np.ndarray | torch.Tensor, unk_gpt2_id: int = UNK_GPT2_ID,
                 byte_fallback: bool = False) -> None:
        keep = _as_int64(keep_ids).reshape(-1)
        validate_vocab_size(len(keep) + 1)
        if keep.min() < 0 or keep.max() >= GPT2_VOCAB_SIZE:
            raise ValueError(f"keep_ids must be GPT-2 ids in [0, {GPT2_VOCAB_SIZE}); got range [{keep.min()}, {keep.max()}]")
        if len(np.unique(keep)) != len(keep):
            raise ValueError("keep_ids must not contain duplicates")
        if not 0 <= unk_gpt2_id < GPT2_VOCAB_SIZE:
            raise ValueError(f"unk_gpt2_id must be a GPT-2 id in [0, {GPT2_VOCAB_SIZE}); got {unk_gpt2_id}")
        self._keep = keep
        self.unk_gpt2_id = int(unk_gpt2_id)
        # Both directions are dense tables so encode/decode are one fancy-indexing op each.
        self._encode_table = np.full(GPT2_VOCAB_SIZE, len(keep), dtype=np.int64)
        self._encode_table[keep] = np.arange(len(keep), dtype=np.int64)
        self._decode_table = np.append(keep, np.int64(self.unk_gpt2_id))
        self.byte_fallback = bool(byte_fallback)
        if self.byte_fallback:
            fixed = _fallback_prefix()
            if len(keep) <= len(fixed) or not np.array_equal(keep[: len(fixed)], fixed):
                # compact id b is byte b, as exports' DECODING.md tells users to spell left-out tokens
                raise ValueError("a byte-fallback vocabulary must start with the 256 single-byte GPT-2 tokens in byte "
                                 "order, then <|endoftext|>, then at least one more token. Fix: build it with "
                                 "CompactVocab.from_counts(..., byte_fallback=True).")
            # Every GPT-2 id's spelling in compact ids, as one flat table: kept ids spell themselves, the others
            # their bytes' tokens. Encoding a stream is then a few vectorised gathers.
            kept = np.zeros(GPT2_VOCAB_SIZE, dtype=bool)
            kept[keep] = True
            byte_compact = self._encode_table[byte_token_ids()]  # compact id of each byte value
            spellings = [[int(self._encode_table[i])] if kept[i] else
                         byte_compact[np.frombuffer(_token_bytes(i), np.uint8)].tolist() for i in range(GPT2_VOCAB_SIZE)]
            self._spell_len = np.array([len(t) for t in spellings], dtype=np.int64)
            self._spell_start = np.cumsum(self._spell_len) - self._spell_len
            self._spell_flat = np.fromiter((i for t in spellings for i in t), dtype=np.int64)

    @classmethod
    def from_counts(cls, counts: np.ndarray, size: int, byte_fallback: bool = False) -> CompactVocab:
        """Keep the ``size - 1`` most frequent GPT-2 ids of a token-count histogram.

        Ties (including tokens that never occur, when the corpus has fewer distinct tokens than
        ``size - 1``) are broken by the lower GPT-2 id, so the result is deterministic.

        Args:
            counts: 1-D non-negative counts indexed by GPT-2 id (e.g. ``np.bincount(train_ids)``);
                shorter than 50257 is padded with zeros.
            size: Model vocabulary size ``K``; the unknown id is ``K - 1``.
            byte_fallback: Keep the 256 single-byte tokens first (compact ids 0..255, in byte order) and
                ``<|endoftext|>`` (256; spelling it by bytes would turn a document break into text), then the
                ``size - 258`` most frequent others; tokens left out are spelled by their bytes (``size >= 259``).

        Returns:
            The compact vocabulary.

        Raises:
            ValueError: If ``size`` is outside ``[2, 50257]`` or ``counts`` is malformed.
        """
        validate_vocab_size(size)
        counts = np.asarray(counts)
        if counts.ndim != 1 or counts.shape[0] > GPT2_VOCAB_SIZE:
            raise ValueError(f"counts must be 1-D with at most {GPT2_VOCAB_SIZE} entries; got shape {counts.shape}")
        if counts.size and counts.min() < 0:
            raise ValueError("counts must be non-negative")
        full = np.zeros(GPT2_VOCAB_SIZE, dtype=np.int64)
        full[: counts.shape[0]] = counts
        if byte_fallback:
            if size < MIN_BYTE_FALLBACK_SIZE:
                raise ValueError(f"data.vocab_size={size} is too small for byte fallback, which keeps the 256 byte "
                                 "tokens, <|endoftext|>, the unknown id and at least one merged token. Fix: use "
                                 f"data.vocab_size >= {MIN_BYTE_FALLBACK_SIZE}, e.g. 8192.")
            fixed = _fallback_prefix()
            full[fixed] = -1  # kept anyway: out of the ranking
            order = np.argsort(-full, kind="stable")
            return cls(np.concatenate([fixed, order[: int(size) - 1 - len(fixed)]]), byte_fallback=True)
        # A stable sort on -count keeps ascending id order among equal counts.
        order = np.argsort(-full, kind="stable")
        return cls(order[: int(size) - 1])

    @property
    def size(self) -> int:
        """Model vocabulary size ``K`` (kept tokens + 1)."""
        return len(self._keep) + 1

    @property
    def unk_id(self) -> int:
        """Compact id of the unknown token (``size - 1``)."""
        return len(self._keep)

    @property
    def keep_ids(self) -> np.ndarray:
        """Kept GPT-2 ids (int64, length ``size - 1``) in compact-id order; a copy."""
        return self._keep.copy()

    def encode(self, gpt2_ids: ArrayLike) -> ArrayLike:
        """Map GPT-2 ids to compact ids; tokens not kept become :attr:`unk_id` (with byte fallback: their bytes).

        Args:
            gpt2_ids: Integer array or tensor of any shape with values in ``[0, 50257)``; with byte fallback a
                1-D stream.

        Returns:
            Compact ids with the same shape (byte fallback: a 1-D stream at least as long): an int64
            ``np.ndarray`` for array input, or an int64 tensor on the input's device for tensor input.

        Raises:
            ValueError: Ids out of range, or (byte fallback) input that is not 1-D.
        """
        if not self.byte_fallback:
            return _lookup(self._encode_table, gpt2_ids, GPT2_VOCAB_SIZE, "GPT-2")
        shape = tuple(gpt2_ids.shape) if isinstance(gpt2_ids, torch.Tensor) else np.shape(gpt2_ids)
        if len(shape) != 1:
            raise ValueError(f"a byte-fallback vocabulary spells rare tokens by their bytes, which changes a "
                             f"stream's length, so it encodes 1-D token streams; got shape {shape}. "
                             "Fix: encode the stream, then cut it into windows.")
        arr = _as_int64(gpt2_ids)
        lens = _lookup(self._spell_len, arr, GPT2_VOCAB_SIZE, "GPT-2")
        # position j of the output reads spell_flat[start[token] + (j - first output position of token)]
        ends = np.cumsum(lens)
        index = np.repeat(self._spell_start[arr] - (ends - lens), lens)
        index += np.arange(len(index))
        out = self._spell_flat[index]
        return torch.as_tensor(out, device=gpt2_ids.device) if isinstance(gpt2_ids, torch.Tensor) else out

    def decode(self, compact_ids: ArrayLike) -> ArrayLike:
        """Map compact ids back to GPT-2 ids; the unknown id becomes :attr:`unk_gpt2_id`.

        Args:
            compact_ids: Integer array or tensor with values in ``[0, size)``.

        Returns:
            GPT-2 ids with the same shape and container type as :meth:`encode` returns.
        """
        return _lookup(self._decode_table, compact_ids, self.size, "compact")

    def state_dict(self) -> dict[str, Any]:
        """Return a plain-Python state (lists and ints) suitable for a Lightning checkpoint or JSON."""
        state = {
            "version": _FORMAT_VERSION,
            "size": self.size,
            "keep_ids": self._keep.tolist(),
            "unk_gpt2_id": self.unk_gpt2_id,
        }
        if self.byte_fallback:  # only when set: files written before byte fallback existed read the same
            state["byte_fallback"] = True
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CompactVocab:
        """Rebuild a vocabulary from :meth:`state_dict` output.

        Args:
            state: Mapping with ``keep_ids`` (list, array or tensor) and optionally ``unk_gpt2_id``.

        Raises:
            ValueError: If the stored ``size`` disagrees with ``keep_ids``.
        """
        vocab = cls(state["keep_ids"], unk_gpt2_id=int(state.get("unk_gpt2_id", UNK_GPT2_ID)),
                    byte_fallback=bool(state.get("byte_fallback", False)))
        if "size" in state and int(state["size"]) != vocab.size:
            raise ValueError(f"corrupt vocabulary state: size={state['size']} but {vocab.size - 1} keep_ids")
        return vocab

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON, atomically (temp file + rename).

        Args:
            path: Destination file, conventionally ``*.json``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.state_dict(), f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CompactVocab:
        """Read a vocabulary written by :meth:`save`."""
        with open(path, encoding="utf-8") as f:
            return cls.from_state_dict(json.load(f))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CompactVocab):
            return NotImplemented
        return (self.unk_gpt2_id == other.unk_gpt2_id and self.byte_fallback == other.byte_fallback
                and np.array_equal(self._keep, other._keep))

    def __hash__(self) -> int:
        return hash((self.unk_gpt2_id, self.byte_fallback, self._keep.tobytes()))

    def __repr__(self) -> str:
        fallback = ", byte_fallback=True" if self.byte_fallback else ""
        return f"CompactVocab(size={self.size}, unk_id={self.unk_id}, unk_gpt2_id={self.unk_gpt2_id}{fallback})"


@functools.lru_cache(maxsize=1)
def byte_token_ids() -> np.ndarray:
    """GPT-2 id of the single-byte token of each byte value 0..255 (byte-level BPE's 256 base tokens)."""
    enc = gpt2_encoding()
    ids = np.array([enc.encode_single_token(bytes([b])) for b in range(256)], dtype=np.int64)
    ids.setflags(write=False)  # cached and shared: no caller may change it
    return ids


def _fallback_prefix() -> np.ndarray:
    """The GPT-2 ids a byte-fallback vocabulary starts with: the byte tokens in byte order, then <|endoftext|>."""
    return np.append(byte_token_ids(), EOT_ID)


def _token_bytes(gpt2_id: int) -> bytes:
    return gpt2_encoding().decode_single_token_bytes(gpt2_id)


def _as_int64(ids: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    arr = np.asarray(ids)
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be integers; got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _lookup(table: np.ndarray, ids: ArrayLike, bound: int, kind: str) -> ArrayLike:
    """Index ``table`` with ``ids``, checking the range first so bad ids fail loudly, not silently wrap."""
    if isinstance(ids, torch.Tensor):
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= bound):
            raise ValueError(f"{kind} ids must lie in [0, {bound}); got range [{int(ids.min())}, {int(ids.max())}]")
        return torch.as_tensor(table, device=ids.device)[ids.long()]
    arr = _as_int64(ids)
    if arr.size and (arr.min() < 0 or arr.max() >= bound):
        raise ValueError(f"{kind} ids must lie in [0, {bound}); got range [{arr.min()}, {arr.max()}]")
    return table[arr]
