"""The TwIST settings that take one of a few names: each list of allowed values is defined here, once.

Pure Python: the strategy, its pure-torch core, the Hydra schemas (``config.py``) and the entry point all read
these enums, so a new variant or outer optimizer is added in one place and every layer refuses a typo the same way.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Variant(str, Enum):
    """How the workers hold their subnets (``none`` = plain Lightning data-parallel training, the baseline).

    ``physical`` is accepted as a spelling of ``true``: Hydra reads ``twist=true`` as a boolean, which a config-group
    override refuses, so the group option is named ``physical`` (see :data:`GROUP_SPELLINGS`).
    """

    none = "none"
    masked = "masked"
    true = "true"
    hybrid = "hybrid"

    @classmethod
    def _missing_(cls, value: object) -> "Variant | None":
        return cls.true if value == "physical" else None


TWIST_VARIANTS = (Variant.masked, Variant.true, Variant.hybrid)  # what TwISTStrategy runs; none is plain DDP

# command-line spellings of a config-group option that Hydra cannot take as they are (``twist=true`` is a bool)
GROUP_SPELLINGS = {"twist=true": "twist=physical", "twist=True": "twist=physical"}


class OptimizerState(str, Enum):
    """What happens to the workers' AdamW moments at a resample: restart from zero, or average over holders."""

    reset = "reset"
    carry = "carry"


class OuterOptimizer(str, Enum):
    """The step applied at a sync to ``central - average`` (the pseudo-gradient)."""

    none = "none"
    nesterov = "nesterov"


class SyncDtype(str, Enum):
    """The dtype held values (and moments) travel in at a sync; they are always averaged in float32."""

    float32 = "float32"
    bfloat16 = "bfloat16"

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.value)


def choice(key: str, value: Any, enum: type[Enum], allowed: tuple[Enum, ...] | None = None) -> Any:
    """``value`` as a member of ``enum`` (or of ``allowed``), or a ``ValueError`` naming ``key`` and the choices."""
    allowed = tuple(enum) if allowed is None else allowed
    raw = value.value if isinstance(value, Enum) else value
    try:
        member = enum(raw)
    except ValueError:
        member = None
    if member not in allowed:
        names = [m.value for m in allowed]
        raise ValueError(f"{key}={raw!r} is not one of {names}. HINT: use one of {names}.")
    return member
