"""Hydra structured-config schemas that mirror the Python constructors, so a typo fails at compose time.

Each ``conf/<group>/*.yaml`` extends its group's ``base_<group>`` schema (``defaults: [base_<group>, _self_]``),
and ``conf/evaluate.yaml``, ``export.yaml`` and ``generate.yaml`` extend ``base_evaluate`` / ``base_export`` /
``base_generate``, the schemas of the other entry points. ``register_configs()`` puts every schema in Hydra's
ConfigStore and is called by the entry points and the tests. Only the entry points import this module: the
library itself never needs Hydra. The enums the schemas use are the library's own (``DataSource``, ``Selector``,
``HFLayout``), so a value has one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from twist_lightning.corpora import corpus_path
from twist_lightning.hf_export import HFLayout
from twist_lightning.options import OptimizerState, OuterOptimizer, SyncDtype, Variant
from twist_lightning.selection import Selector
from twist_lightning.sources import DataSource

#: The data-source enum of ``sources.py`` (lower-case member names, as OmegaConf matches values by name).
Source = DataSource


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
    # start from these weights (a twist-lightning checkpoint, an exported folder, HF GPT-2 by name or folder);
    # not a GPTConfig field: run.py loads it into the new model (ckpt_path resumes a run instead)
    init_from: Optional[str] = None


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
    vocab_from: Optional[str] = None  # encode with this compact vocabulary (vocab.json, checkpoint, export folder)
    test_path: Optional[str] = None  # a text file held out as the test split (evaluated on, never trained on)
    vocab_extra: list[str] = field(default_factory=list)  # more training text counted for the compact vocabulary
    byte_fallback: bool = False  # the compact vocabulary spells the tokens it leaves out by their bytes (no unknown id)
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
    fused: Optional[bool] = None  # AdamW's fused kernel; null = where torch has it (CPU, CUDA)


@dataclass
class TwISTConfig:
    """Mirrors ``twist_lightning.strategy.TwISTStrategy``; ``variant: none`` trains with plain Lightning DDP."""

    variant: Variant = Variant.none
    sync_every: int = 15
    n_sub: Any = 0.5  # int = units kept per layer, float in (0, 1] = fraction of them
    common: Any = "default"  # "default" (first and last layer whole), "none", or a list of layer indices
    scale: bool = True
    # the aggregation the aggregation ablation found best (recipes/README.md, aggregation_6of12_cpu): AdamW moments
    # averaged over holders, then a mild outer Nesterov step. TwISTStrategy keeps the paper's reset / no outer step
    # (carry needs Adam, and a Python user gets the method as published unless they ask for more)
    optimizer_state: OptimizerState = OptimizerState.carry
    workers_per_process: int = 1
    seed: int = 0
    outer: OuterOptimizer = OuterOptimizer.nesterov  # DiLoCo's outer step on central - average; none: the average
    outer_lr: float = 1.0
    outer_momentum: float = 0.3
    sync_dtype: SyncDtype = SyncDtype.float32  # bfloat16: both ways in bf16 (rounded starts, changes back), fp32 average
    shard_central: bool = True  # several processes: each owns 1/world of the central rows; false: one all_gather
    # false: no central values between syncs (a sync makes each shard from the workers; sharded, float32 sync,
    # outer none; mid-round validation and checkpoints see the holders' average of the workers' values now);
    # null: false where allowed with several processes, else true (here true: the outer step above needs it)
    keep_central: Optional[bool] = None
    # {from_step: sync interval}, e.g. +twist.schedule='{0:1,100:15}' (the + adds keys to the empty default);
    # empty = sync_every throughout
    schedule: dict[int, int] = field(default_factory=dict)
    warm_start: int = 0  # first steps synchronous with full subnets (data-parallel), then TwIST; masked + carry
    eval_subnets: int = 4  # random subnets at the training size evaluated in the final summary


@dataclass
class FinalEvalConfig:
    """After training, evaluate the final checkpoint (``evaluate``'s settings; ``eval.json`` in the run folder).

    ``split: null`` (the default) skips it; ``final_eval.split=test`` scores e.g. ``data.test_path``'s text.
    """

    split: Optional[str] = None
    sizes: Optional[list[Any]] = None  # head counts or fractions; None = 1..n_head
    samples: int = 16
    method: list[str] = field(default_factory=list)  # pruning baselines: random|magnitude|activation|flap|reconstruct
    common: Any = "default"
    scale: bool = True
    importance: bool = False
    max_batches: Optional[int] = None
    batch_tokens: int = 4096
    calib_samples: int = 128
    seed: int = 0


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
    final_eval: FinalEvalConfig = field(default_factory=FinalEvalConfig)
    task_name: str = "train"


# ---- the other entry points: evaluate, export, generate (conf/evaluate.yaml, export.yaml, generate.yaml) ---------
@dataclass
class EvalDataConfig:
    """``TextDataModule`` overrides; ``None`` keeps the checkpoint's own setting."""

    source: Optional[str] = None
    path: Optional[str] = None
    hub_name: Optional[str] = None
    hub_config: Optional[str] = None
    block_size: Optional[int] = None
    batch_size: Optional[int] = None
    val_fraction: Optional[float] = None
    cache_dir: Optional[str] = None
    num_workers: Optional[int] = None
    num_proc: Optional[int] = None
    seed: Optional[int] = None


@dataclass
class EvaluateConfig:
    """``python -m twist_lightning.evaluate`` settings (conf/evaluate.yaml)."""

    checkpoint: Optional[str] = None  # required unless grid=true
    sizes: Optional[list[Any]] = None  # head counts or fractions; None = 1..n_head
    samples: int = 8
    importance: bool = True
    common: Any = "default"
    scale: bool = True
    seed: int = 0
    split: str = "val"
    max_batches: Optional[int] = 20
    batch_tokens: int = 4096
    subnet_batch: Optional[int] = None  # same-size subnets per forward pass; None = 8 on CUDA, 1 on CPU
    method: list[str] = field(default_factory=list)  # pruning baselines: random|magnitude|activation|flap|reconstruct
    calib_samples: int = 128  # calibration sequences from the *training* split
    calib_seed: int = 0
    structure: str = "uniform"  # flap's allocation: uniform | adaptive
    damp: float = 0.01  # reconstruct's ridge term (a fraction of the mean covariance diagonal)
    flap_compensate: bool = True  # flap's bias compensation; false = FLAP's units with the random subnets' scaling
    device: str = "auto"
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    out: Optional[str] = None  # eval.json (grid: the CSV); default: the Hydra run dir
    plot: bool = True
    progress: bool = True
    grid: bool = False
    checkpoints: list[str] = field(default_factory=list)
    train_sizes: Optional[list[Any]] = None


@dataclass
class ExportConfig:
    """``python -m twist_lightning.export`` settings (conf/export.yaml)."""

    checkpoint: str = MISSING
    out: str = MISSING
    size: Any = None  # head count per split layer, or a fraction of n_head in (0, 1]
    selector: str = "random"
    seed: int = 0
    blueprint: Optional[str] = None  # selector=explicit: Blueprint JSON file
    common: Any = "default"  # layers kept whole ("default" = first and last, "none", or indices)
    scale: bool = True
    hf: bool = False
    hf_layout: HFLayout = HFLayout.pruned
    method: Optional[str] = None  # a pruning baseline instead of a subnet: random|magnitude|activation|flap|reconstruct
    calib_samples: int = 128  # method's calibration sequences, from the checkpoint's training split
    calib_seed: int = 0
    structure: str = "uniform"  # method=flap: uniform | adaptive
    damp: float = 0.01  # method=reconstruct's ridge term
    flap_compensate: bool = True  # method=flap's bias compensation; false = FLAP's units, scaled like random subnets


@dataclass
class GenerateConfig:
    """``python -m twist_lightning.generate`` settings (conf/generate.yaml)."""

    checkpoint: Optional[str] = None  # a training checkpoint (.ckpt); or
    ticket: Optional[str] = None  # an exported subnet folder
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: Optional[int] = 200
    seed: int = 0  # of the sampling
    num_samples: int = 1
    stop_at_eot: bool = True  # end a sample at <|endoftext|>
    size: Any = None  # checkpoint only: heads per split layer (or a fraction) of a subnet; None = the full model
    selector: Selector = Selector.random
    subnet_seed: int = 0  # selector=random
    blueprint: Optional[str] = None  # selector=explicit: a Blueprint JSON file
    common: Any = "default"  # layers kept whole by the subnet: "default" (first and last), "none", or indices
    scale: bool = True  # TwIST's sqrt(N_full / N_sub) branch scaling, as trained
    device: str = "cpu"
    out: Optional[str] = None  # also write the samples and settings as JSON here


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
    for name, node in (("base_evaluate", EvaluateConfig), ("base_export", ExportConfig),
                       ("base_generate", GenerateConfig)):  # the primary configs of the other entry points
        cs.store(name=name, node=node)
