"""twist_lightning.partition: the old home of the partition maths still exports every name it had."""

from __future__ import annotations

import twist_lightning.blueprints as blueprints
import twist_lightning.partition as partition
import twist_lightning.selection as selection
import twist_lightning.subnets as subnets


def test_every_old_name_is_re_exported_from_its_new_home() -> None:
    homes = {"Blueprint": blueprints, "LayerSpec": blueprints, "PartitionSpec": blueprints,
             "resolve_n_sub": blueprints, "sample_blueprints": blueprints, "explicit_blueprint": selection,
             "importance_blueprint": selection, "random_blueprint": selection, "unit_scores": selection,
             "extract": subnets, "param_index": subnets, "scatter": subnets, "subnet": subnets}
    assert set(partition.__all__) == set(homes)
    for name, home in homes.items():
        assert getattr(partition, name) is getattr(home, name), name
