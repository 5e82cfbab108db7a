"""The partition maths under one old name: re-exports :mod:`~twist_lightning.blueprints` (partition specs,
blueprints, the covering sampler), :mod:`~twist_lightning.selection` (random, importance and explicit subnets) and
:mod:`~twist_lightning.subnets` (masked and physical subnets, index maths).

New code imports from those modules; ``from twist_lightning.partition import ...`` keeps working for every name
this module held before they were split out.
"""

from __future__ import annotations

from twist_lightning.blueprints import Blueprint, LayerSpec, PartitionSpec, resolve_n_sub, sample_blueprints
from twist_lightning.selection import explicit_blueprint, importance_blueprint, random_blueprint, unit_scores
from twist_lightning.subnets import extract, param_index, scatter, subnet

__all__ = [
    "Blueprint",
    "LayerSpec",
    "PartitionSpec",
    "explicit_blueprint",
    "extract",
    "importance_blueprint",
    "param_index",
    "random_blueprint",
    "resolve_n_sub",
    "sample_blueprints",
    "scatter",
    "subnet",
    "unit_scores",
]
