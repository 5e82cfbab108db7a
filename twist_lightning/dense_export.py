"""The native export: one subnet (or a pruned model) of a trained TwIST model as a standalone dense GPT folder.

:func:`export_subnet` cuts a :class:`~twist_lightning.blueprints.Blueprint`'s units out of the full model
(:func:`~twist_lightning.subnets.extract`) and :func:`write_export` writes any physical GPT as::

    DIR/model.safetensors   the weights (tied embedding stored once)
    DIR/config.json         GPTConfig.to_dict(): narrowed layer widths, branch scales, extra.blueprint/export
    DIR/vocab.json          the compact vocabulary, when the model has one

:func:`load_exported` rebuilds it with neither the full model nor the strategy. :func:`export_checkpoint_subnet`
and :func:`export_pruned` do the whole job from a checkpoint: a selected subnet, or the full model pruned by a
post-training method of :mod:`twist_lightning.prune` (calibrated on the checkpoint's *training* split; flap and
reconstruct also change the kept weights), in the same folder format, so either can be shipped and compared. The
``transformers`` folder beside it is :mod:`twist_lightning.hf_export`; the command line is
``python -m twist_lightning.export`` (:mod:`twist_lightning.export`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from twist_lightning.blueprints import Blueprint, PartitionSpec
from twist_lightning.checkpoint import load_gpt
from twist_lightning.guard import check_finite_model
from twist_lightning.io import atomic_path, write_json
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.prune import NEEDS_DATA, calibrate, check_settings, parse_method, parse_structure, prune
from twist_lightning.selection import check_size, select_blueprint
from twist_lightning.subnets import extract
from twist_lightning.vocab import CompactVocab

__all__ = ["CONFIG", "FORMAT", "VOCAB", "WEIGHTS", "export_checkpoint_subnet", "export_pruned", "export_subnet",
           "load_exported", "load_exported_vocab", "write_export"]

FORMAT = "twist-lightning-export/1"
WEIGHTS, CONFIG, VOCAB = "model.safetensors", "config.json", "vocab.json"


def export_subnet(model: GPT, blueprint: Blueprint, out_dir: str | os.PathLike[str], vocab: CompactVocab | None = None,
                  scale: bool = True, metadata: dict[str, Any] | None = None) -> GPT:
    """Write ``blueprint``'s subnet of the full-size ``model`` as a standalone dense GPT folder.

    Args:
        model: The full-size model.
        blueprint: The subnet.
        out_dir: Created if needed; ``model.safetensors``, ``config.json`` (and ``vocab.json``) are overwritten.
        vocab: The compact vocabulary the model was trained with, if any.
        scale: Fold TwIST's ``sqrt(N_full / N_sub)`` branch scales into the subnet (as it was trained).
        metadata: Extra provenance stored in ``config.extra["export"]`` (selector, seed, source checkpoint ...).

    Returns:
        The extracted subnet (on ``model``'s device, in eval mode).
    """
    return write_export(extract(model, blueprint, scale=scale), out_dir, vocab, metadata,
                        what=f"subnet {blueprint}")


def write_export(sub: GPT, out_dir: str | os.PathLike[str], vocab: CompactVocab | None = None,
                 metadata: dict[str, Any] | None = None, what: str = "model") -> GPT:
    """Write the physical GPT ``sub`` (an extracted subnet or a pruned model) as an export folder; returns it.

    Refuses non-finite weights (a diverged checkpoint) before writing anything.
    """
    sub = sub.eval()
    source = (metadata or {}).get("checkpoint")
    check_finite_model(sub, f"checkpoint={source!r}, {what}," if source else f"the {what}")
    sub.config.extra = {**sub.config.extra, "export": {"format": FORMAT, **(metadata or {})}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # save_model drops one name of the tied wte/lm_head pair; load_model restores the tie
    with atomic_path(out / WEIGHTS) as tmp:  # each file complete or absent, also when the process is killed
        save_model(sub, str(tmp), metadata={"format": FORMAT})
    write_json(out / CONFIG, sub.config.to_dict())
    if vocab is not None:
        vocab.save(out / VOCAB)
    elif (out / VOCAB).exists():
        (out / VOCAB).unlink()  # a stale vocabulary from an earlier export would decode wrongly
    return sub


def load_exported(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> GPT:
    """Rebuild an exported subnet (eval mode) from its folder; needs neither the full model nor the strategy.

    Raises:
        FileNotFoundError: The folder or one of its files is missing.
        ValueError: ``config.json`` is not an exported GPTConfig or the weights do not fit it.
    """
    folder = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"export={str(path)!r} has no {name}; write one with "
                                    "`python -m twist_lightning.export ... out=DIR`.")
    try:
        config = GPTConfig(**json.loads((folder / CONFIG).read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"export={str(path)!r}: {CONFIG} is not a GPTConfig ({err}).") from None
    model = GPT(config)
    try:
        missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=True, device=str(map_location))
    except Exception as err:  # safetensors raises RuntimeError on shapes and SafetensorError on corrupt files
        raise ValueError(f"export={str(path)!r}: {WEIGHTS} does not fit {CONFIG} ({str(err)[:300]}).") from err
    return model.to(map_location).eval()


def load_exported_vocab(path: str | os.PathLike[str]) -> CompactVocab | None:
    """The exported compact vocabulary, or ``None`` when the model uses GPT-2's ids."""
    file = Path(path) / VOCAB
    return CompactVocab.load(file) if file.is_file() else None


# ---- from a checkpoint --------------------------------------------------------------------------------------------
def export_checkpoint_subnet(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], selector: str = "random",
                             size: int | float | None = None, seed: int = 0,
                             blueprint: str | os.PathLike[str] | Blueprint | None = None, common: Any = "default",
                             scale: bool = True) -> tuple[GPT, GPT, Blueprint, CompactVocab | None]:
    """Load ``checkpoint``, select a subnet (:func:`~twist_lightning.selection.select_blueprint`) and export it.

    Returns:
        ``(full model, exported subnet, its blueprint, the compact vocabulary or None)``.
    """
    model, vocab, _ = load_gpt(checkpoint)
    spec = PartitionSpec.from_config(model.config, common=common)
    bp = select_blueprint(model, spec, selector, size, seed, blueprint)
    meta = {"checkpoint": str(checkpoint), "selector": selector, "size": size, "seed": seed,
            "common": list(spec.common), "scale": scale}
    return model, export_subnet(model, bp, out, vocab=vocab, scale=scale, metadata=meta), bp, vocab


def export_pruned(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], size: int | float | None,
                  method: str, common: Any = "default", seed: int = 0, scale: bool = True, calib_samples: int = 128,
                  calib_seed: int = 0, structure: str = "uniform", damp: float = 0.01, flap_compensate: bool = True,
                  progress: bool = True) -> tuple[GPT, GPT, Blueprint, CompactVocab | None]:
    """Prune ``checkpoint``'s full model with a post-training ``method`` and export the result.

    Every setting is checked before the checkpoint is loaded. Methods that need data calibrate on
    ``calib_samples`` windows of the checkpoint's *training* split (seeded by ``calib_seed``).

    Returns:
        ``(full model, exported pruned model, the units it kept, the compact vocabulary or None)``.

    Raises:
        ValueError: An unknown method or structure, a bad ``damp``/``size``/``calib_samples``, or a data-hungry
            method on a checkpoint without saved data settings.
    """
    from twist_lightning.checkpoint_data import build_datamodule, train_calibration  # the DataModule, on demand

    method = parse_method(method)  # everything is checked before loading anything
    structure = parse_structure(structure)
    check_settings([method], structure, damp)
    if size is None:
        raise ValueError(f"method={method.value} needs size=N (heads = FFN groups kept per split layer).")
    if isinstance(calib_samples, bool) or not isinstance(calib_samples, int) or calib_samples < 1:
        raise ValueError(f"calib_samples={calib_samples!r} must be an int >= 1.")
    model, vocab, saved = load_gpt(checkpoint)
    spec = PartitionSpec.from_config(model.config, common=common)
    check_size(spec, size)
    calibration = None
    if method in NEEDS_DATA:
        if not saved:
            raise ValueError(f"method={method.value} calibrates on the checkpoint's training split, but "
                             f"checkpoint={str(checkpoint)!r} has no saved data settings; use a checkpoint "
                             "written by twist_lightning.run (or method=random|magnitude, which need no data).")
        dm, remap = build_datamodule(saved, {}, model.config.vocab_size, model.config.block_size, vocab,
                                     str(checkpoint))
        batches = train_calibration(dm, calib_samples, calib_seed, torch.device("cpu"), vocab if remap else None)
        calibration = calibrate(model, batches, progress=progress)
    result = prune(model, size, method, calibration, common=list(spec.common), seed=seed, scale=scale,
                   structure=structure, damp=damp, compensate=flap_compensate, progress=progress)
    meta = {"checkpoint": str(checkpoint), "method": method.value, "size": size, "common": list(spec.common),
            **result.info}
    meta["blueprint"] = result.blueprint.to_dict()
    sub = write_export(result.model, out, vocab, meta, what=f"{method.value}-pruned model")
    return model, sub, result.blueprint, vocab
