"""Atomic file writes: a killed process leaves the old file or the new one, never half of either.

Every file is written to a temporary name *in its own folder*, flushed and fsynced, then moved into place with
``os.replace`` (a rename within one filesystem is atomic on POSIX and Windows). Lightning's own checkpoint save
goes through an fsspec transaction whose temporary file lives in ``$TMPDIR`` and is moved with ``shutil.move``:
atomic only when ``$TMPDIR`` and the checkpoint folder share a filesystem, and never fsynced.
:class:`AtomicCheckpointIO` replaces it and also refuses to write a checkpoint whose weights are not finite, so a
diverged run can never overwrite the last good ``last.ckpt``.

JSON goes through :func:`write_json`, which turns non-finite floats into ``null`` (``json.dump`` would write a bare
``NaN``, which is not JSON) and then dumps with ``allow_nan=False``.

Example::

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()])
    write_json("out/summary.json", {"val_loss": float("nan")})   # {"val_loss": null}
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from typing_extensions import override

__all__ = ["AtomicCheckpointIO", "NonFiniteCheckpointError", "atomic_files", "atomic_path", "finite_json",
           "non_finite_tensors", "write_bytes", "write_json", "write_text"]


class NonFiniteCheckpointError(RuntimeError):
    """A checkpoint was about to be written with NaN or infinite weights."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it replaces ``target``, on error it is removed.

    For writers that want a file name rather than bytes (``safetensors.save_model``, ``savefig``)::

        with atomic_path(out / "model.safetensors") as tmp:
            save_model(model, str(tmp))
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # keep the suffix: some writers (matplotlib) choose the format from it
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # the writer may have closed without fsync
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes it private (0600); give it the mode open() would
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder inside ``folder``; on success each file written there replaces its namesake.

    For writers that fill a folder (``save_pretrained``): every file is complete or absent, as with
    :func:`atomic_path`. Files of ``folder`` the writer did not produce are left alone.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        yield tmp
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            target = folder / file.relative_to(tmp)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(file, target)
        _fsync_dir(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    # makes the rename itself durable; not possible on every platform (Windows), where it is skipped
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (same-folder temporary file, fsync, ``os.replace``)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    write_bytes(target, text.encode("utf-8"))


def finite_json(value: Any) -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by ``None``, and the paths where that happened."""
    found: list[str] = []

    def walk(v: Any, where: str) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            found.append(where or "<root>")
            return None
        if isinstance(v, dict):
            return {k: walk(x, f"{where}.{k}" if where else str(k)) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [walk(x, f"{where}[{i}]") for i, x in enumerate(v)]
        return v

    return walk(value, ""), found


def write_json(target: str | os.PathLike[str], value: Any, indent: int = 2) -> list[str]:
    """Write ``value`` as strict JSON atomically; non-finite floats become ``null``. Returns their paths."""
    clean, found = finite_json(value)
    write_text(target, json.dumps(clean, indent=indent, allow_nan=False) + "\n")
    return found


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold a NaN or an infinity."""
    if torch.is_tensor(state):
        return [prefix or "<tensor>"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        return [n for k, v in state.items() for n in non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    return []


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes through a same-folder temporary file and refuses non-finite weights.

    Args:
        check_finite: Raise :class:`NonFiniteCheckpointError` (and write nothing) when a tensor of the
            checkpoint's ``state_dict`` holds a NaN or an infinity; the file already at ``path`` stays as it was.

    Example::

        trainer = L.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[ModelCheckpoint(save_last=True)])
    """

    def __init__(self, *, check_finite: bool = True) -> None:
        super().__init__()
        self.check_finite = check_finite

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r}).")
        if self.check_finite:
            bad = non_finite_tensors(checkpoint.get("state_dict", {}))
            if bad:
                raise NonFiniteCheckpointError(
                    f"refusing to write checkpoint {str(path)!r} at step {checkpoint.get('global_step')}: "
                    f"{len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}). The previous checkpoint at "
                    "that path is kept. The run diverged; HINT: lower module.lr or raise module.warmup_steps.")
        if "://" in str(path):  # remote storage: fsspec's transaction is the atomic write there
            super().save_checkpoint(checkpoint, path)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise fully before touching the target folder
        write_bytes(path, buffer.getbuffer())
