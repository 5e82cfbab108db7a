"""Which units each TwIST subnet holds: partition specs, blueprints and the covering sampler of one round.

A *unit* is one attention head or one FFN group of one layer (see :mod:`twist_lightning.model`). A
:class:`PartitionSpec` says which layers are split into units; a :class:`Blueprint` lists, per layer, the active
heads and FFN groups of one subnet. TwIST trains ``S`` such subnets independently (one per worker) and averages the
parameters each holds; :func:`sample_blueprints` draws the ``S`` blueprints of one round so that

1. the common layers ``C`` (default: first and last) are whole in every blueprint,
2. together they cover every unit of every partitioned layer,
3. each holds exactly ``N_sub`` heads and ``N_sub`` FFN groups of every partitioned layer,
4. and they are otherwise random -- deterministically from ``(seed, round)`` with a local generator, so every
   rank computes the same blueprints without communication.

Choosing one subnet to deploy is :mod:`twist_lightning.selection`; running a blueprint (masked or as a physical
narrower GPT) is :mod:`twist_lightning.subnets`. Pure torch + stdlib; knows nothing of Lightning.

Example:
    >>> spec = PartitionSpec(n_layer=4, n_head=4, ffn_groups=4)   # C = {0, 3}
    >>> bps = sample_blueprints(spec, num_subnets=2, n_sub=2, seed=0, round=0)
    >>> [bp.sizes()[1] for bp in bps]
    [(2, 2), (2, 2)]
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from twist_lightning.model import GPT, GPTConfig

__all__ = ["Blueprint", "LayerSpec", "PartitionSpec", "layer_units", "resolve_n_sub", "sample_blueprints",
           "seeded_rng"]

LayerSpec = str | Iterable[int] | None  # "default" | "none" | "all" | "0,11" | [0, 11] | None (= none)


# ---- partition spec -----------------------------------------------------------------------------------------------
def _parse_layers(value: LayerSpec, n_layer: int, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Normalise a layer-set option to a sorted tuple of unique layer indices.

    Accepts ``"default"``, ``"all"``, ``"none"``/``""``/``None``/empty iterable, a comma-separated string of
    indices (CLI / Hydra overrides) or an iterable of ints (a Hydra ``ListConfig`` included).
    """
    if isinstance(value, str):
        key = value.strip().lower()
        if key == "default":
            return default
        if key == "all":
            return tuple(range(n_layer))
        if key in ("none", "", "[]"):
            return ()
        try:
            value = [int(v) for v in key.strip("[]").split(",") if v.strip()]
        except ValueError:
            raise ValueError(
                f"twist.{name}={value!r} is not understood: use 'default', 'all', 'none' or layer indices like '0,11'."
            ) from None
    if value is None:
        return ()
    layers = list(value)
    bad = [v for v in layers if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < n_layer]
    if bad:
        raise ValueError(
            f"twist.{name}={layers} has invalid layer indices {bad}: valid layers are 0..{n_layer - 1} "
            f"(n_layer={n_layer})."
        )
    return tuple(sorted(set(layers)))


@dataclass(frozen=True)
class PartitionSpec:
    """Which layers are split into per-subnet units and which are kept whole.

    Args:
        n_layer: Number of layers of the full model.
        n_head: Full number of attention heads per layer.
        ffn_groups: Full number of FFN groups per layer.
        common: The common set ``C`` of layers kept whole in every blueprint. ``"default"`` = first and last
            layer; ``"none"``, ``""``, ``None`` or an empty list = no common layer; or layer indices.
        partitioned: Layers eligible for splitting (default ``"all"``). A layer is split (its units sampled) iff
            it is partitioned and not common (:attr:`split_layers`); every other layer is whole.

    Raises:
        ValueError: On unit counts < 1 or layer indices outside ``0..n_layer-1`` (the message names
            ``twist.common`` / ``twist.partitioned``, the value and the valid range).
    """

    n_layer: int
    n_head: int
    ffn_groups: int
    common: LayerSpec = "default"
    partitioned: LayerSpec = "all"

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "ffn_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"PartitionSpec.{name}={getattr(self, name)} must be >= 1.")
        ends = tuple(sorted({0, self.n_layer - 1}))
        # frozen dataclass: normalise in place once, so equality/hash see canonical tuples
        object.__setattr__(self, "common", _parse_layers(self.common, self.n_layer, "common", ends))
        everything = tuple(range(self.n_layer))
        object.__setattr__(self, "partitioned", _parse_layers(self.partitioned, self.n_layer, "partitioned", everything))

    @classmethod
    def from_config(cls, config: GPTConfig, common: LayerSpec = "default", partitioned: LayerSpec = "all") -> PartitionSpec:
        """Spec for a full-size model of shape ``config``."""
        return cls(config.n_layer, config.n_head, config.ffn_groups, common=common, partitioned=partitioned)

    @property
    def split_layers(self) -> tuple[int, ...]:
        """Layers whose units are sampled: partitioned and not common."""
        common = set(self.common)
        return tuple(layer for layer in self.partitioned if layer not in common)

    def check_model(self, model: GPT) -> None:
        """Raise ``ValueError`` unless ``model`` is a full-size GPT of this spec's shape."""
        cfg = model.config
        got = (cfg.n_layer, cfg.n_head, cfg.ffn_groups)
        if got != (self.n_layer, self.n_head, self.ffn_groups):
            raise ValueError(f"model shape (n_layer, n_head, ffn_groups)={got} does not match the spec's "
                             f"{(self.n_layer, self.n_head, self.ffn_groups)}.")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def resolve_n_sub(spec: PartitionSpec, n_sub: int | float) -> tuple[int, int]:
    """Subnet size as ``(heads, ffn_groups)`` per split layer.

    An ``int`` is a head count ``k``; a ``float`` in ``(0, 1]`` is a fraction ``f`` of ``n_head``. FFN groups take
    the same fraction of ``ffn_groups``. Both round half up: ``heads = round(f * n_head)`` and
    ``ffn = round(heads / n_head * ffn_groups)`` for a count, ``round(f * ffn_groups)`` for a fraction.

    Raises:
        ValueError: If either count falls outside ``1..N_full``.
    """
    if isinstance(n_sub, bool) or not isinstance(n_sub, (int, float)):
        raise ValueError(f"twist.n_sub={n_sub!r} must be a head count (int) or a fraction of n_head in (0, 1].")
    if isinstance(n_sub, int):
        heads, ffn = n_sub, _round_half_up(n_sub * spec.ffn_groups / spec.n_head)
    elif 0.0 < n_sub <= 1.0:
        heads, ffn = _round_half_up(n_sub * spec.n_head), _round_half_up(n_sub * spec.ffn_groups)
    else:
        raise ValueError(f"twist.n_sub={n_sub} as a float must be a fraction in (0, 1]; pass an int for a count.")
    for what, got, full in (("heads", heads, spec.n_head), ("FFN groups", ffn, spec.ffn_groups)):
        if not 1 <= got <= full:
            raise ValueError(f"twist.n_sub={n_sub} gives {got} {what} per layer; it must be in 1..{full}.")
    return heads, ffn


# ---- blueprint ----------------------------------------------------------------------------------------------------
def layer_units(units: Iterable[int], full: int, what: str, layer: int) -> tuple[int, ...]:
    """One layer's unit indices as a sorted tuple; a ``ValueError`` naming ``layer`` and ``what`` unless they are
    1..``full`` unique indices in ``0..full-1``."""
    units = list(units)
    out = tuple(sorted(set(int(u) for u in units)))
    if len(out) != len(units) or not out or out[0] < 0 or out[-1] >= full:
        raise ValueError(f"layer {layer} {what} {units} must be 1..{full} unique indices in 0..{full - 1}.")
    return out


@dataclass(frozen=True)
class Blueprint:
    """The units one subnet holds: per layer, the sorted active heads and FFN groups.

    Args:
        heads: Per layer, the active head indices (sorted, unique, non-empty).
        ffn: Per layer, the active FFN group indices.
        n_head: Full head count per layer (so "all" and scales are known without the model).
        ffn_groups: Full FFN group count per layer.

    The constructor sorts and validates; equality and hashing are by value.
    """

    heads: tuple[tuple[int, ...], ...]
    ffn: tuple[tuple[int, ...], ...]
    n_head: int
    ffn_groups: int

    def __post_init__(self) -> None:
        if len(self.heads) != len(self.ffn) or not self.heads:
            raise ValueError(f"Blueprint needs heads and ffn for the same >= 1 layers (got {len(self.heads)} and "
                             f"{len(self.ffn)}).")
        heads = tuple(layer_units(h, self.n_head, "heads", i) for i, h in enumerate(self.heads))
        ffn = tuple(layer_units(f, self.ffn_groups, "FFN groups", i) for i, f in enumerate(self.ffn))
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "ffn", ffn)

    # -- constructors / serialisation --
    @classmethod
    def full(cls, spec: PartitionSpec) -> Blueprint:
        """The blueprint holding every unit (the full model)."""
        return cls(heads=(tuple(range(spec.n_head)),) * spec.n_layer,
                   ffn=(tuple(range(spec.ffn_groups)),) * spec.n_layer,
                   n_head=spec.n_head, ffn_groups=spec.ffn_groups)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible dict; the inverse of :meth:`from_dict`."""
        return {"n_head": self.n_head, "ffn_groups": self.ffn_groups,
                "heads": [list(h) for h in self.heads], "ffn": [list(f) for f in self.ffn]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Blueprint:
        return cls(heads=tuple(tuple(h) for h in d["heads"]), ffn=tuple(tuple(f) for f in d["ffn"]),
                   n_head=int(d["n_head"]), ffn_groups=int(d["ffn_groups"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> Blueprint:
        return cls.from_dict(json.loads(s))

    def __str__(self) -> str:
        def units(u: tuple[int, ...], full: int) -> str:
            return "all" if len(u) == full else ",".join(map(str, u))

        return " | ".join(f"L{i} h[{units(h, self.n_head)}] f[{units(f, self.ffn_groups)}]"
                          for i, (h, f) in enumerate(zip(self.heads, self.ffn)))

    # -- sizes --
    @property
    def n_layer(self) -> int:
        return len(self.heads)

    def sizes(self) -> list[tuple[int, int]]:
        """Per layer ``(active heads, active FFN groups)``."""
        return [(len(h), len(f)) for h, f in zip(self.heads, self.ffn)]

    @property
    def num_heads(self) -> int:
        """Active heads over all layers."""
        return sum(len(h) for h in self.heads)

    @property
    def num_ffn(self) -> int:
        """Active FFN groups over all layers."""
        return sum(len(f) for f in self.ffn)

    @property
    def is_full(self) -> bool:
        return all(h == self.n_head and f == self.ffn_groups for h, f in self.sizes())

    def branch_scales(self, scale: bool = True) -> list[tuple[float, float]]:
        """Per layer ``(attn, mlp)`` branch multipliers: TwIST's ``sqrt(N_full / N_sub)``, or 1 without ``scale``."""
        if not scale:
            return [(1.0, 1.0)] * self.n_layer
        return [(math.sqrt(self.n_head / h), math.sqrt(self.ffn_groups / f)) for h, f in self.sizes()]

    # -- running it --
    def check_model(self, model: GPT) -> None:
        """Raise ``ValueError`` unless ``model`` is a full-size GPT this blueprint indexes."""
        cfg = model.config
        got = (cfg.n_layer, cfg.n_head, cfg.ffn_groups)
        if got != (self.n_layer, self.n_head, self.ffn_groups):
            raise ValueError(f"blueprint shape (n_layer, n_head, ffn_groups)={(self.n_layer, self.n_head, self.ffn_groups)} "
                             f"does not match the model's {got}.")
        if not cfg.is_full:
            raise ValueError("expected a full-size model, got a physical subnet (config.layer_heads is set).")

    def apply(self, model: GPT, scale: bool = True) -> None:
        """Make the full-size ``model`` run this subnet masked (``model.set_subnet``); undo with ``set_subnet(None)``."""
        self.check_model(model)
        model.set_subnet([list(h) for h in self.heads], [list(f) for f in self.ffn], scale=scale)


# ---- sampling -----------------------------------------------------------------------------------------------------
def seeded_rng(*key: object) -> random.Random:
    """A private generator seeded from a stable hash of ``key`` (never the global RNG state)."""
    digest = hashlib.sha256(repr(key).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _deal(rng: random.Random, n_full: int, n_sub: int, num: int) -> list[tuple[int, ...]]:
    """``num`` subsets of ``range(n_full)`` of size ``n_sub`` that together cover every unit.

    A uniform permutation of the units is dealt round-robin to the subsets (taken in a uniformly random order),
    then each subset is topped up with a uniform sample of the units it lacks. The joint law is invariant under
    relabelling the units, so each subset on its own is a uniform ``n_sub``-subset.
    """
    perm = rng.sample(range(n_full), n_full)
    order = rng.sample(range(num), num)
    dealt: list[set[int]] = [set() for _ in range(num)]
    for j, unit in enumerate(perm):
        dealt[order[j % num]].add(unit)  # each gets <= ceil(n_full / num) <= n_sub units
    out = []
    for units in dealt:
        rest = [u for u in range(n_full) if u not in units]
        units.update(rng.sample(rest, n_sub - len(units)))
        out.append(tuple(sorted(units)))
    return out


def _check_cover(num_subnets: int, n_sub: int, n_full: int, what: str) -> None:
    if num_subnets * n_sub < n_full:
        raise ValueError(
            f"{num_subnets} subnets of {n_sub} {what} cannot cover {n_full} {what}; use n_sub >= "
            f"{math.ceil(n_full / num_subnets)} or at least {math.ceil(n_full / n_sub)} workers."
        )


def sample_blueprints(spec: PartitionSpec, num_subnets: int, n_sub: int | float, seed: int, round: int) -> list[Blueprint]:
    """The ``num_subnets`` blueprints of one TwIST round.

    Guarantees: common/unpartitioned layers are whole in every blueprint; each split layer holds exactly
    ``resolve_n_sub(spec, n_sub)`` heads and FFN groups; together the blueprints cover every head and every FFN
    group of every split layer.

    Distribution: independently for every split layer and for heads and FFN groups separately, a uniform random
    permutation of the units is dealt round-robin to the subnets (in a uniformly random subnet order), and each
    subnet is then topped up with a uniform random sample (without replacement) of the units it was not dealt.
    Each single blueprint is therefore marginally uniform over all ``N_sub``-subsets; the joint law is *not*
    the uniform law over all covering tuples (that would need rejection sampling) -- it spreads units as evenly
    as possible (every unit held ``floor``/``ceil`` of ``S * N_sub / N`` times up to the random top-up).

    Deterministic in ``(seed, round)`` (a ``random.Random`` seeded from a SHA-256 of them), identical across
    processes and ranks.

    Args:
        spec: Layers and unit counts.
        num_subnets: ``S >= 1`` (usually the number of workers).
        n_sub: Subnet size per split layer: head count (int) or fraction of ``n_head`` (float); see
            :func:`resolve_n_sub`.
        seed: Run seed.
        round: TwIST round index (a new partition each round).

    Raises:
        ValueError: If ``S < 1``, ``n_sub`` is out of range or ``S * N_sub < N_full`` (message gives the numbers).
    """
    if isinstance(num_subnets, bool) or not isinstance(num_subnets, int) or num_subnets < 1:
        raise ValueError(f"num_subnets={num_subnets!r} must be an int >= 1 (one subnet per worker).")
    n_heads, n_ffn = resolve_n_sub(spec, n_sub)
    if spec.split_layers:
        _check_cover(num_subnets, n_heads, spec.n_head, "heads")
        _check_cover(num_subnets, n_ffn, spec.ffn_groups, "FFN groups")
    rng = seeded_rng("twist.sample_blueprints", int(seed), int(round))
    all_heads, all_ffn = tuple(range(spec.n_head)), tuple(range(spec.ffn_groups))
    heads = [[all_heads] * num_subnets for _ in range(spec.n_layer)]  # [layer][subnet]
    ffn = [[all_ffn] * num_subnets for _ in range(spec.n_layer)]
    for layer in spec.split_layers:
        heads[layer] = _deal(rng, spec.n_head, n_heads, num_subnets)
        ffn[layer] = _deal(rng, spec.ffn_groups, n_ffn, num_subnets)
    return [
        Blueprint(heads=tuple(h[s] for h in heads), ffn=tuple(f[s] for f in ffn),
                  n_head=spec.n_head, ffn_groups=spec.ffn_groups)
        for s in range(num_subnets)
    ]
