"""Where a corpus comes from: the :class:`DataSource` enum, local split-file discovery and the dataset hub.

* ``bundled``: Tiny Shakespeare, shipped inside the package (works offline, no arguments).
* ``local``: ``path`` is either one text file (split into train/val by chunks, see
  :mod:`twist_lightning.token_cache`) or a folder with train/validation(/test) files (``train.txt``,
  ``valid.txt``/``validation.txt``, ``test.txt`` or WikiText's ``wiki.train.raw``/``wiki.valid.raw``/``wiki.test.raw``).
* ``hub``: ``datasets.load_dataset(hub_name, hub_config)`` with splits train/validation(/test) and a ``text``
  column. Offline it fails within seconds (:class:`HubUnavailableError`), pointing at ``data.source=local``.

This module is light on purpose (no torch, no Lightning; ``datasets`` is imported only when a hub corpus is
loaded), so code that only needs the enum, such as checkpoint loading, pulls in neither Lightning nor the
DataModule.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from twist_lightning.tokenizer import asset_path

__all__ = ["DataSource", "HubUnavailableError", "describe_source", "files_under", "load_hub", "local_files",
           "parse_source", "select_hub_splits"]

#: Seconds to wait for a TCP connection to the Hub before declaring it unreachable.
HUB_PROBE_TIMEOUT_S = 3.0
#: File names of each split in a local corpus folder, in order of preference.
FOLDER_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train.txt", "wiki.train.raw", "train.raw", "train"),
    "val": ("validation.txt", "valid.txt", "val.txt", "wiki.valid.raw", "validation.raw", "valid.raw", "validation"),
    "test": ("test.txt", "wiki.test.raw", "test.raw", "test"),
}
#: Split names of a hub dataset that become train / val / test.
HUB_SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "val": ("validation", "valid", "val"),
    "test": ("test",),
}
_TRUE_VALUES = {"1", "on", "yes", "true"}


class DataSource(str, Enum):
    """Where :class:`~twist_lightning.data.TextDataModule` reads its text from.

    Member names are lower-case because OmegaConf matches an enum value by member name (``data.source=local``);
    the upper-case names are aliases of the same members, kept for code written against the first spelling.
    """

    bundled = "bundled"
    local = "local"
    hub = "hub"
    BUNDLED = "bundled"
    LOCAL = "local"
    HUB = "hub"


class HubUnavailableError(ConnectionError):
    """The dataset hub cannot be reached; the message names the ``local`` alternative."""


def parse_source(source: DataSource | str) -> DataSource:
    """``source`` as a :class:`DataSource`; any Enum counts by its value (Hydra configs may pass their own type).

    Raises:
        ValueError: An unknown source (the message lists the allowed ones).
    """
    raw = source.value if isinstance(source, Enum) else source
    try:
        return DataSource(str(raw).lower())
    except ValueError:
        allowed = ", ".join(s.value for s in DataSource)
        raise ValueError(f"data.source={source!r} is not supported. Fix: use one of {allowed}.") from None


def describe_source(source: DataSource, path: str | None, hub_name: str | None, hub_config: str | None) -> str:
    """The settings that name a corpus, as they appear in error messages."""
    if source is DataSource.hub:
        return f"data.hub_name={hub_name} data.hub_config={hub_config}"
    if source is DataSource.local:
        return f"data.path={path}"
    return "data.source=bundled"


# ---------------------------------------------------------------------- local files


def local_files(source: DataSource, path: str | None) -> dict[str, Path]:
    """Map split -> file for a bundled or local corpus (only ``train`` for a single file).

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder has no training file.
        ValueError: A split file is empty.
    """
    if source is DataSource.bundled:
        return {"train": asset_path("tinyshakespeare.txt")}
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            f"data.path={path} does not exist. Fix: point data.path at a text file or a folder "
            f"with train/validation files, or use data.source=bundled."
        )
    if folder.is_file():
        _check_nonempty(folder)
        return {"train": folder}
    return _resolve_folder(folder)


def _check_nonempty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise ValueError(f"data.path={path} is an empty file. Fix: point data.path at a file with text.")


def _resolve_folder(folder: Path) -> dict[str, Path]:
    """Find the split files of a corpus folder; a folder without a train file is an error."""
    found = {}
    for split, names in FOLDER_NAMES.items():
        match = next((folder / n for n in names if (folder / n).is_file()), None)
        if match is not None:
            _check_nonempty(match)
            found[split] = match
    if "train" not in found:
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        example = found.get("val", folder / "corpus.txt")
        raise FileNotFoundError(
            f"data.path={folder} has no training file (looked for {', '.join(FOLDER_NAMES['train'])}; found "
            f"{present}). Fix: add a train file, or point data.path at a single file (e.g. data.path={example}) "
            f"to split it into train/val by chunks."
        )
    return found


def files_under(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, hidden ones left out), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


# ---------------------------------------------------------------------- hub


def _offline_flag(names: tuple[str, ...] = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")) -> str | None:
    for var in names:
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


def hub_unreachable_reason(flags: tuple[str, ...] = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")) -> str | None:
    """Why the Hugging Face Hub cannot serve a model now (one of ``flags`` set, or a failed 3 s probe), or ``None``."""
    flag = _offline_flag(flags)
    return f"{flag} is set" if flag is not None else _probe_hub()


def load_hub(name: str, config: str | None, hf_cache: str) -> Any:
    """``load_dataset(name, config)``, failing fast with a helpful error when the Hub is unreachable."""
    import datasets

    if Path(name).is_dir():
        # A local dataset folder needs no network; a folder of text files keeps its line breaks
        # so it tokenizes exactly like data.source=local.
        kwargs: dict[str, Any] = {"cache_dir": hf_cache}
        if all(p.suffix in {".txt", ".raw"} for p in files_under(Path(name))):
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


def select_hub_splits(loaded: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Rename hub splits to train/val/test and check for a ``text`` column."""
    splits = {}
    for split, candidates in HUB_SPLIT_NAMES.items():
        key = next((c for c in candidates if c in loaded), None)
        if key is not None:
            splits[split] = loaded[key]
    if "train" not in splits:
        raise ValueError(f"data.hub_name={name} has no train split (splits: {list(loaded)}). Fix: use data.source=local.")
    columns = splits["train"].column_names
    if "text" not in columns:
        raise ValueError(f"data.hub_name={name} has no 'text' column (columns: {columns}). Fix: use a text dataset.")
    return splits
