"""Load a trained GPT (and its compact vocabulary and data settings) from a ``TwISTLitModule`` checkpoint.

A Lightning checkpoint of :class:`~twist_lightning.module.TwISTLitModule` is a ``torch.save`` dict holding

- ``hyper_parameters["model"]``: the :class:`~twist_lightning.model.GPTConfig` as a dict,
- ``state_dict``: ``model.<GPT parameter name>`` -> tensor (always the full central model, also after TwIST),
- ``compact_vocab``: :meth:`CompactVocab.state_dict` when the data used a compact vocabulary,
- ``datamodule_hyper_parameters``: the :class:`~twist_lightning.data.TextDataModule` arguments, when a
  datamodule was fitted.

:func:`load_gpt` turns one into a ready-to-run GPT in eval mode, failing with a message that names
``checkpoint=...``, what is wrong and the fix for a missing, unreadable, foreign or wrongly shaped file. Loading is
``weights_only`` (no arbitrary code from the pickle) unless the caller opts out.

Example:
    >>> model, vocab, data_hparams = load_gpt("outputs/train/x/checkpoints/last.ckpt")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from twist_lightning.sources import DataSource
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.vocab import CompactVocab

__all__ = ["CheckpointError", "check_shape", "data_hparams", "load_checkpoint", "load_gpt", "model_config"]

#: Shape fields of GPTConfig that must agree for two models to share weights.
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "ffn_groups", "vocab_size", "block_size", "bias")
_PREFIX = "model."
#: Where the data-source enum lived before ``sources.py``, as pickles in older checkpoints name it.
_OLD_SOURCE_PATHS = ("twist_lightning.data.DataSource", "twist_lightning.config.Source")
_FIX = "pass a .ckpt written by `python -m twist_lightning.run` (e.g. outputs/train/<date>/checkpoints/last.ckpt)"


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be used (unreadable, not twist-lightning, or wrongly shaped)."""


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    weights_only: bool = True, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint dict, turning every way a file can be unusable into one clear error.

    Args:
        path: The ``.ckpt`` file.
        map_location: Where tensors are loaded (``"cpu"`` keeps GPU checkpoints loadable anywhere).
        weights_only: Unpickle only tensors and plain data (safe for files from elsewhere). Pass ``False`` for a
            trusted checkpoint whose hyper-parameters hold custom objects.
        mmap: Map the tensors from the file instead of reading them (cheap when only metadata is wanted).

    Raises:
        FileNotFoundError: If ``path`` does not exist or is a directory.
        CheckpointError: If the file cannot be unpickled (truncated, random bytes, not a torch file), or it is not
            a ``TwISTLitModule`` checkpoint.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist. Fix: {_FIX}.")
    if p.is_dir():
        hint = next((str(c) for c in (p / "last.ckpt", p / "checkpoints" / "last.ckpt") if c.is_file()), None)
        raise FileNotFoundError(f"checkpoint={str(path)!r} is a directory, not a checkpoint file. Fix: "
                                + (f"did you mean checkpoint={hint}?" if hint else f"{_FIX}."))
    try:
        # DataSource may appear in datamodule hparams when a user passed the enum itself; older checkpoints name it
        # by its former homes
        with torch.serialization.safe_globals([DataSource, *((DataSource, old) for old in _OLD_SOURCE_PATHS)]):
            ckpt = torch.load(p, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - unpickling garbage raises anything (KeyError, struct.error, ...)
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        extra = (" If you trust the file, load it with weights_only=False." if weights_only and "eights only" in str(err)
                 else "")
        raise CheckpointError(f"checkpoint={str(path)!r} could not be read ({type(err).__name__}: {reason}); it is "
                              f"truncated, corrupt or not a torch checkpoint. Fix: {_FIX}.{extra}") from err
    _check_layout(ckpt, path)
    return ckpt


def _check_layout(ckpt: Any, path: str | os.PathLike[str]) -> None:
    """Raise unless ``ckpt`` has what a ``TwISTLitModule`` checkpoint always has."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint={str(path)!r} holds a {type(ckpt).__name__}, not a Lightning checkpoint "
                              f"dict. Fix: {_FIX}.")
    missing = [k for k in ("state_dict", "hyper_parameters") if k not in ckpt]
    hp = ckpt.get("hyper_parameters")
    if not missing and not (isinstance(hp, dict) and isinstance(hp.get("model"), dict)):
        missing.append("hyper_parameters['model']")
    if not missing and not any(k.startswith(_PREFIX) for k in ckpt["state_dict"]):
        missing.append("state_dict['model.*']")
    if missing:
        raise CheckpointError(f"checkpoint={str(path)!r} is not a twist-lightning TwISTLitModule checkpoint (missing "
                              f"{', '.join(missing)}). Fix: {_FIX}.")


def model_config(ckpt: dict[str, Any], path: str | os.PathLike[str] = "<dict>") -> GPTConfig:
    """The checkpoint's :class:`GPTConfig` (from ``hyper_parameters["model"]``)."""
    try:
        return GPTConfig(**dict(ckpt["hyper_parameters"]["model"]))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint={str(path)!r} has an invalid model config: {err}. Fix: {_FIX}.") from err


def check_shape(config: GPTConfig, expect: GPTConfig, path: str | os.PathLike[str] = "<model>") -> None:
    """Raise :class:`CheckpointError` naming every shape field where ``config`` differs from ``expect``."""
    diffs = [f"{f}: checkpoint {getattr(config, f)!r} vs expected {getattr(expect, f)!r}"
             for f in SHAPE_FIELDS if getattr(config, f) != getattr(expect, f)]
    if diffs:
        raise CheckpointError(f"checkpoint={str(path)!r} has a different model shape ({'; '.join(diffs)}). Fix: pass a "
                              "checkpoint trained with the expected model settings, or change the expected model.* "
                              "to match it.")


def data_hparams(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The ``TextDataModule`` arguments saved in the checkpoint (``{}`` if it was fitted without a datamodule)."""
    hp = ckpt.get("datamodule_hyper_parameters") or {}
    return {k: (v.value if isinstance(v, DataSource) else v) for k, v in dict(hp).items()}


def load_gpt(path: str | os.PathLike[str], expect: GPTConfig | None = None, map_location: str | torch.device = "cpu",
             weights_only: bool = True) -> tuple[GPT, CompactVocab | None, dict[str, Any]]:
    """Load the full central GPT of a ``TwISTLitModule`` checkpoint.

    Args:
        path: The ``.ckpt`` file.
        expect: If given, the checkpoint's model must have this shape (see :data:`SHAPE_FIELDS`).
        map_location: Device the weights are loaded to (the model is built there too).
        weights_only: See :func:`load_checkpoint`.

    Returns:
        ``(model in eval mode, compact vocabulary or None, datamodule hparams or {})``.

    Raises:
        FileNotFoundError: Missing file.
        CheckpointError: (a ``ValueError``) unreadable file, not a twist-lightning checkpoint, weights that do not
            fit the saved config, or a shape that differs from ``expect`` (naming the fields).
    """
    ckpt = load_checkpoint(path, map_location=map_location, weights_only=weights_only)
    config = model_config(ckpt, path)
    if expect is not None:
        check_shape(config, expect, path)
    state = {k[len(_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(_PREFIX)}
    with torch.device(map_location if isinstance(map_location, torch.device) else torch.device(map_location)):
        model = GPT(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"checkpoint={str(path)!r}: its weights do not fit its own model config "
                              f"({' '.join(first[:3])[:400]}). The file is inconsistent; Fix: {_FIX}.") from err
    vocab = CompactVocab.from_state_dict(ckpt["compact_vocab"]) if ckpt.get("compact_vocab") else None
    if vocab is not None and vocab.size != config.vocab_size:
        raise CheckpointError(f"checkpoint={str(path)!r}: compact vocabulary of {vocab.size} ids but model.vocab_size="
                              f"{config.vocab_size}. The file is inconsistent; Fix: {_FIX}.")
    return model.eval(), vocab, data_hparams(ckpt)
