"""Hydra structured-config schemas that mirror the Python constructors, so a typo fails at compose time.

Each ``conf/<group>/*.yaml`` extends its group's ``base_<group>`` schema (``defaults: [base_<group>, _self_]``);
``register_configs()`` puts the schemas in Hydra's ConfigStore and is called by ``run.py`` and the tests. Only
the entry points import this module: the library itself never needs Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from twist_lightning.corpora import corpus_path
from twist_lightning.sources import DataSource

#: The data-source enum of ``sources.py`` (lower-case member names, as OmegaConf matches values by name).
Source = DataSource


class Variant(str, Enum):
    """How the workers hold their subnets (``none`` = plain Lightning data-parallel training, the baseline)."""

    none = "none"
    masked = "masked"
    true = "true"
    hybrid = "hybrid"


class OuterOptimizer(str, Enum):
    """The step a sync applies to the holders' average (see ``TwISTStrategy``)."""

    none = "none"
    nesterov = "nesterov"


class OptimizerState(str, Enum):
    """What a worker's AdamW moments do at a resample (see ``TwISTStrategy``)."""

    reset = "reset"
    carry = "carry"


@dataclass
class ModelConfig:
    """Mirrors ``twist_lightning.model.GPTConfig``."""

    _target_: str = "twist_lightning.model.GPTConfig"
    block_size: int = 128
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    ffn_groups: Optional[int] = None


@dataclass
class DataConfig:
    """Mirrors ``twist_lightning.data.TextDataModule``; ``vocab_size`` comes from ``model.vocab_size``."""

    _target_: str = "twist_lightning.data.TextDataModule"
    source: Source = Source.bundled
    path: Optional[str] = None
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    block_size: int = "${model.block_size}"  # type: ignore[assignment]  # interpolated, checked when resolved
    batch_size: int = 16
    val_fraction: float = 0.1
    cache_dir: Optional[str] = None
    num_workers: int = 0
    num_proc: int = 2
    seed: int = 1337


@dataclass
class ModuleConfig:
    """Mirrors ``twist_lightning.module.TwISTLitModule`` (the model shape comes from ``model``)."""

    _target_: str = "twist_lightning.module.TwISTLitModule"
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    decay_steps: Optional[int] = None
    optimizer: str = "adamw"
    compile: bool = False


@dataclass
class TwISTConfig:
    """Mirrors ``twist_lightning.strategy.TwISTStrategy``; ``variant: none`` trains with plain Lightning DDP."""

    variant: Variant = Variant.none
    sync_every: int = 15
    n_sub: Any = 0.5  # int = units kept per layer, float in (0, 1] = fraction of them
    common: Any = "default"  # "default" (first and last layer whole), "none", or a list of layer indices
    scale: bool = True
    optimizer_state: OptimizerState = OptimizerState.reset
    workers_per_process: int = 1
    seed: int = 0
    outer: OuterOptimizer = OuterOptimizer.none  # nesterov: DiLoCo's outer step on central - average
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    # {from_step: sync interval} (SubnetResampling's), e.g. +twist.schedule='{0:1,100:15}' (the + adds keys to the
    # empty default); empty = sync_every throughout
    schedule: dict[int, int] = field(default_factory=dict)
    eval_subnets: int = 4  # random subnets at the training size evaluated in the final summary


@dataclass
class TrainConfig:
    """The top-level run: groups plus run-wide settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    module: ModuleConfig = field(default_factory=ModuleConfig)
    twist: TwISTConfig = field(default_factory=TwISTConfig)
    trainer: dict[str, Any] = field(default_factory=dict)  # passed to lightning.Trainer as keyword arguments
    logger: Optional[dict[str, Any]] = None
    seed: int = 1337
    ckpt_path: Optional[str] = None  # resume from this Lightning checkpoint
    task_name: str = "train"


def register_configs() -> None:
    """Store the schemas under the names the YAML files extend, and the ``${corpus:NAME}`` resolver for data/."""
    # a path into the repository's data/ folder that does not depend on the working directory (corpora.py)
    OmegaConf.register_new_resolver("corpus", corpus_path, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_train", node=TrainConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="module", name="base_module", node=ModuleConfig)
    cs.store(group="twist", name="base_twist", node=TwISTConfig)
