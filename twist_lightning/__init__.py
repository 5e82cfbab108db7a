"""twist-lightning: TwIST (independent subnetwork training) for GPT-2 as PyTorch Lightning plugins.

Importing the package registers the ``"twist"``, ``"twist_spawn"`` and ``"ddp_counting"`` strategy names with
Lightning (``registry.py``) without importing Lightning itself: the pure-torch modules (``model``, ``partition``,
``core``, ``prune``) load without it, and the public classes below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from twist_lightning import registry as _registry

_registry.install()

_EXPORTS = {
    "GPT": "twist_lightning.model",
    "GPTConfig": "twist_lightning.model",
    "TwISTCore": "twist_lightning.core",
    "CountingDDPStrategy": "twist_lightning.comm",
    "SubnetResampling": "twist_lightning.callbacks",
    "TwISTLitModule": "twist_lightning.module",
    "TwISTStrategy": "twist_lightning.strategy",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'twist_lightning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
