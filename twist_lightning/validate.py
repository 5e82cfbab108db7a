"""Settings checked where they enter, before any work: each error names the key, the value and the fix.

The constructors check their own arguments (``GPTConfig``, ``TwISTLitModule``, ``TwISTStrategy``,
``TextDataModule``, ``SubnetResampling``); this module holds the checks that need more than one object
(``data.block_size`` against the model's, ``module.warmup_steps`` against ``trainer.max_steps``), the entry points'
own settings (``run``, ``evaluate``, ``export``) and the file checks (a resume checkpoint of the right shape, a
UTF-8 corpus, an output path that is not a file). It takes plain dicts, so it needs no Hydra.

Example::

    check_train_settings(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))   # raises SettingError
"""

from __future__ import annotations

import codecs
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["SettingError", "check_count", "check_evaluate_settings", "check_export_settings", "check_out_file",
           "check_out_folder", "check_resume", "check_train_settings", "check_utf8", "fail"]


class SettingError(ValueError):
    """A setting that cannot work; the message names the key, the value and the fix."""


def fail(key: str, value: Any, rule: str, fix: str) -> None:
    """Raise :class:`SettingError` as ``key=value rule. Fix: fix.``"""
    raise SettingError(f"{key}={value!r} {rule}. Fix: {fix}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_count(key: str, value: Any, minimum: int = 1, fix: str | None = None) -> None:
    """``value`` must be an int >= ``minimum`` (counts, divisors, intervals)."""
    if not _is_int(value) or value < minimum:
        fail(key, value, f"must be an integer >= {minimum}", fix or f"use e.g. {key}={max(minimum, 1)}")


def _check_fraction(key: str, value: Any, low: float, high: float, closed_high: bool, fix: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and low <= value and (value <= high if closed_high else value < high)
    if not ok:
        fail(key, value, f"must lie in [{low}, {high}{']' if closed_high else ')'}", fix)


# ---- the training run ---------------------------------------------------------------------------------------------
def _check_trainer(trainer: Mapping[str, Any]) -> None:
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    step_bounded = max_epochs in (None, -1)
    if step_bounded and (not _is_int(max_steps) or max_steps <= 0):
        fail("trainer.max_steps", max_steps, f"leaves the run unbounded or empty (trainer.max_epochs={max_epochs}): a "
             "step-bounded run requires trainer.max_steps > 0", "set e.g. trainer.max_steps=400 (or bound it by "
             "epochs with trainer.max_epochs=N)")
    if not step_bounded and (not _is_int(max_epochs) or max_epochs < 1):
        fail("trainer.max_epochs", max_epochs, "must be -1 (step-bounded) or an integer >= 1", "use e.g. "
             "trainer.max_epochs=-1 with trainer.max_steps=400")
    if step_bounded and _is_int(max_steps) and max_steps != -1 and max_steps < 0:
        fail("trainer.max_steps", max_steps, "must be -1 or > 0", "use e.g. trainer.max_steps=400")
    val = trainer.get("val_check_interval")
    if val is not None and (isinstance(val, bool) or not isinstance(val, (int, float)) or val <= 0):
        fail("trainer.val_check_interval", val, "must be a positive step count or a fraction of an epoch in (0, 1]",
             "use e.g. trainer.val_check_interval=200")
    for key in ("accumulate_grad_batches", "log_every_n_steps", "num_nodes"):
        if key in trainer and trainer[key] is not None:
            check_count(f"trainer.{key}", trainer[key])
    limit = trainer.get("limit_val_batches")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0):
        fail("trainer.limit_val_batches", limit, "must be >= 0 (a batch count or a fraction)",
             "use e.g. trainer.limit_val_batches=40")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float)) or not clip >= 0):
        fail("trainer.gradient_clip_val", clip, "must be >= 0 (0 or null: no clipping)",
             "use e.g. trainer.gradient_clip_val=1.0")
    devices = trainer.get("devices", 1)
    if _is_int(devices) and devices < 1 and devices != -1:
        fail("trainer.devices", devices, "must be >= 1 (or -1 for all, or 'auto')", "use e.g. trainer.devices=1")


def _check_schedule(module: Mapping[str, Any], trainer: Mapping[str, Any]) -> None:
    precision, clip = str(trainer.get("precision", "")), trainer.get("gradient_clip_val")
    if module.get("fused") is True and "mixed" in precision and clip:
        fail("module.fused", True, f"cannot run with trainer.precision={precision} and trainer.gradient_clip_val="
             f"{clip}: Lightning refuses to clip the gradients of the fused AdamW under mixed precision",
             "leave module.fused=null (it then picks the foreach kernel here) or set trainer.gradient_clip_val=0")
    max_steps, warmup = trainer.get("max_steps", -1), module.get("warmup_steps", 0)
    if _is_int(max_steps) and max_steps > 0 and _is_int(warmup) and warmup > max_steps:
        fail("module.warmup_steps", warmup, f"is longer than the run (trainer.max_steps={max_steps}): the learning "
             "rate would never reach module.lr and never decay", f"use module.warmup_steps<={max_steps}")


def _check_twist(twist: Mapping[str, Any], trainer: Mapping[str, Any]) -> None:
    check_count("twist.eval_subnets", twist.get("eval_subnets", 0), minimum=0, fix="use 0 to skip it, or e.g. 4")
    for key in ("sync_every", "workers_per_process"):  # divisors: run.build_strategy splits the batch by the latter
        check_count(f"twist.{key}", twist.get(key, 1))
    variant = str(twist.get("variant", "none"))
    max_steps, every = trainer.get("max_steps", -1), twist.get("sync_every")
    if variant != "none" and _is_int(max_steps) and max_steps > 0 and _is_int(every) and every > max_steps:
        # a warning, not an error: short trial runs of a long recipe are common, and the end of training still syncs
        rank_zero_warn(f"twist.sync_every={every} is more than trainer.max_steps={max_steps}: the subnets are never "
                       f"resampled, only averaged once at the end. Fix: use twist.sync_every<={max_steps}.")


def check_train_settings(cfg: Mapping[str, Any]) -> None:
    """Check a resolved ``python -m twist_lightning.run`` config (a plain dict) across groups, before any work.

    Raises:
        SettingError: The first setting that cannot work, named with its value and a fix.
    """
    trainer, model, data = cfg.get("trainer") or {}, cfg.get("model") or {}, cfg.get("data") or {}
    _check_trainer(trainer)
    block, model_block = data.get("block_size"), model.get("block_size")
    if _is_int(block) and _is_int(model_block) and block > model_block:
        fail("data.block_size", block, f"is longer than the model's context (model.block_size={model_block})",
             f"use data.block_size<={model_block} or raise model.block_size")
    check_count("data.num_workers", data.get("num_workers", 0), minimum=0, fix="use data.num_workers=0")
    _check_schedule(cfg.get("module") or {}, trainer)
    _check_twist(cfg.get("twist") or {}, trainer)


def check_resume(path: str | os.PathLike[str], expect: Any, key: str = "ckpt_path") -> None:
    """A checkpoint to resume from must be readable, of the model's shape and finite (read with our own loader).

    Raises:
        SettingError: Missing, truncated or corrupt file, another model shape, or non-finite weights.
    """
    from twist_lightning.checkpoint import CheckpointError, check_shape, load_checkpoint, model_config
    from twist_lightning.io import non_finite_tensors

    try:
        ckpt = load_checkpoint(path)
        check_shape(model_config(ckpt, path), expect, path)
    except (FileNotFoundError, CheckpointError) as err:
        raise SettingError(f"{key}={str(path)!r} cannot be resumed from: {err}") from err
    bad = non_finite_tensors(ckpt["state_dict"])
    if bad:
        fail(key, str(path), f"holds non-finite weights ({len(bad)} tensors, first {bad[0]}): it comes from a "
             "diverged run", "resume from an earlier checkpoint, or start over with ckpt_path=null")


# ---- files --------------------------------------------------------------------------------------------------------
def check_utf8(path: str | os.PathLike[str], key: str = "data.path", chunk: int = 1 << 20) -> None:
    """The file must decode as UTF-8; the error gives the byte offset and line of the first bad byte."""
    decoder, offset, line = codecs.getincrementaldecoder("utf-8")(), 0, 1
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                at = offset + max(err.start, 0)
                line += block[: max(err.start, 0)].count(b"\n")
                fail(key, str(path), f"is not UTF-8 text (byte 0x{block[err.start]:02x} at offset {at}, line {line})"
                     if err.start < len(block) else "is not UTF-8 text (it ends inside a multi-byte character)",
                     "convert it, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`, or pass a text corpus")
            if not block:
                return
            offset += len(block)
            line += block.count(b"\n")


def check_out_file(key: str, path: str | os.PathLike[str] | None) -> None:
    """An output *file* path: not an existing folder, and its parent is not a file."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        fail(key, str(path), "is an existing folder, not a file path", f"name a file, e.g. {key}={p / 'eval.json'}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                fail(key, str(path), f"lies under {str(parent)!r}, which is a file", "choose another output path")
            break


def check_out_folder(key: str, path: str | os.PathLike[str] | None) -> None:
    """An output *folder* path: not an existing file, and no file among its parents."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        fail(key, str(path), "already exists as a file, not a folder", "remove that file or choose another folder")
    check_out_file(key, p / "x")  # parents only; p itself is a folder or absent


# ---- the evaluate and export entry points -------------------------------------------------------------------------
def _check_device(device: Any) -> None:
    import torch

    try:
        dev = torch.device("cpu" if device == "auto" else device)
    except (RuntimeError, TypeError):
        fail("device", device, "is not a device", "use device=auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        fail("device", device, "asks for CUDA but none is available here", "use device=auto or device=cpu")


def check_evaluate_settings(c: Mapping[str, Any]) -> None:
    """Check ``python -m twist_lightning.evaluate`` settings (a plain dict) before loading anything."""
    check_count("samples", c.get("samples"))
    check_count("batch_tokens", c.get("batch_tokens"))
    if c.get("max_batches") is not None:
        check_count("max_batches", c["max_batches"], fix="use max_batches=20, or null for the whole split")
    if c.get("subnet_batch") is not None:
        check_count("subnet_batch", c["subnet_batch"], fix="use subnet_batch=1 (one subnet per pass) or null")
    if c.get("split") not in ("val", "test"):
        fail("split", c.get("split"), "is not a held-out split", "use split=val or split=test")
    _check_device(c.get("device", "auto"))
    data = c.get("data") or {}
    for key in ("block_size", "batch_size", "num_proc"):
        if data.get(key) is not None:
            check_count(f"data.{key}", data[key])
    if c.get("grid"):
        if not c.get("checkpoints"):
            fail("checkpoints", c.get("checkpoints"), "is empty, but grid=true needs them",
                 "pass checkpoints=[a.ckpt,b.ckpt]")
    elif not c.get("checkpoint"):
        fail("checkpoint", c.get("checkpoint"), "is required", "pass checkpoint=PATH/last.ckpt (or grid=true "
             "checkpoints=[...])")
    check_out_file("out", c.get("out"))


def check_export_settings(c: Mapping[str, Any]) -> None:
    """Check ``python -m twist_lightning.export`` settings (a plain dict) before loading anything."""
    for key in ("checkpoint", "out"):
        if not c.get(key):
            fail(key, c.get(key), "is required", f"pass {key}=...")
    check_out_folder("out", c["out"])
    size = c.get("size")
    if c.get("selector") != "explicit" and size is not None and (
            isinstance(size, bool) or not isinstance(size, (int, float)) or size <= 0):
        fail("size", size, "must be a head count >= 1 or a fraction in (0, 1]", "use e.g. size=2 or size=0.5")
