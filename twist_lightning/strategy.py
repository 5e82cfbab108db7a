"""``TwISTStrategy``: independent subnetwork training as a Lightning DDP-family strategy.

Every rank trains its own subnet(s) with no per-step gradient all-reduce; every ``sync_every`` optimizer steps
the workers' values are averaged over their holders into the central model and new blueprints are drawn. The
algorithm itself (rounds, workers, syncs, resume state) is the pure-torch :class:`~twist_lightning.core.TwISTCore`;
this class drives it from Lightning's hooks and adds what only Lightning knows: the launcher, the optimizer step
closure, gradient accumulation, validation of the central model and checkpoints.

With ``workers_per_process=k`` each process simulates k workers in turn (each with its own rows of the batch,
its own values and its own optimizer state), so one CPU process runs the same algorithm as k processes.

Example::

    import twist_lightning  # registers "twist" and "twist_spawn"
    trainer = L.Trainer(strategy=TwISTStrategy(variant="true", sync_every=15, n_sub=0.5), devices=2)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, Strategy
from torch.optim import Optimizer
from typing_extensions import override

from twist_lightning.accumulation import GradAccumulators
from twist_lightning.comm import destroy_process_group_at_exit
from twist_lightning.core import TwISTCore
from twist_lightning.model import GPT
from twist_lightning.partition import PartitionSpec

CHECKPOINT_KEY = "twist"  # where a checkpoint holds TwISTCore.state_dict()


def _from_core(name: str, doc: str) -> property:
    return property(lambda self: getattr(self.core, name), doc=doc)


class TwISTStrategy(DDPStrategy):
    """Train independent subnets on every worker and average them over holders every ``sync_every`` steps.

    The TwIST keyword arguments are :class:`~twist_lightning.core.TwISTCore`'s (variant, sync_every, schedule,
    n_sub, common, scale, optimizer_state, workers_per_process, warm_start, outer, outer_lr, outer_momentum,
    sync_dtype, shard_central, keep_central, seed), checked here at construction; the rest are ``DDPStrategy``'s.
    The core is ``strategy.core``, and its state (round, workers, central model, counters) reads through the
    properties below.

    Checkpoints hold the core's resume state under ``checkpoint["twist"]`` (written by ``SubnetResampling``, which
    the strategy adds to the trainer when it is missing), and :meth:`load_checkpoint` reads it back, so a resumed
    run continues mid-round bit for bit.
    """

    strategy_name = "twist"

    def __init__(
        self,
        *,
        variant: str = "masked",
        sync_every: int = 15,
        schedule: dict[int, int] | None = None,
        n_sub: int | float = 0.5,
        common: Any = "default",
        scale: bool = True,
        optimizer_state: str = "reset",
        workers_per_process: int = 1,
        warm_start: int = 0,
        seed: int = 0,
        outer: str = "none",
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        sync_dtype: str = "float32",
        shard_central: bool = True,
        keep_central: bool | None = None,
        accelerator: pl.accelerators.Accelerator | None = None,
        parallel_devices: list[torch.device] | None = None,
        cluster_environment: ClusterEnvironment | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: str = "popen",
    ) -> None:
        super().__init__(accelerator=accelerator, parallel_devices=parallel_devices,
                         cluster_environment=cluster_environment, checkpoint_io=checkpoint_io,
                         precision_plugin=precision_plugin, process_group_backend=process_group_backend,
                         timeout=timeout, start_method=start_method)
        self.core = TwISTCore(variant=variant, sync_every=sync_every, schedule=schedule, n_sub=n_sub, common=common,
                              scale=scale, optimizer_state=optimizer_state, workers_per_process=workers_per_process,
                              warm_start=warm_start, outer=outer, outer_lr=outer_lr, outer_momentum=outer_momentum,
                              sync_dtype=sync_dtype, shard_central=shard_central, keep_central=keep_central,
                              seed=seed)
        self._swapped_out: GPT | None = None
        self._grads: GradAccumulators | None = None  # per-worker gradient sums between micro-batches

    # the core's settings and state, read-only: the core is their one owner
    variant = _from_core("variant", "masked, true or hybrid (an options.Variant)")
    sync_every = _from_core("sync_every", "steps per round where no schedule entry applies")
    schedule = _from_core("schedule", "{from_step: interval}")
    warm_start = _from_core("warm_start", "synchronous full-model steps before TwIST starts")
    n_sub = _from_core("n_sub", "units kept per split layer (count or fraction)")
    common = _from_core("common", "layers every subnet keeps whole")
    scale = _from_core("scale", "sqrt(N_full / N_sub) activation scaling")
    workers_per_process = _from_core("workers_per_process", "virtual workers per process")
    seed = _from_core("seed", "seed of the blueprint sequence")
    optimizer_policy = _from_core("optimizer_policy", "reset or carry (not optimizer_state: a Strategy method)")
    outer = _from_core("outer", "the outer step at a sync")
    outer_lr = _from_core("outer_lr", "the outer step's learning rate")
    outer_momentum = _from_core("outer_momentum", "the outer step's momentum")
    sync_dtype = _from_core("sync_dtype", "the dtype held values travel in (an options.SyncDtype)")
    shard_central = _from_core("shard_central", "whether several processes shard the central model")
    keep_central = _from_core("keep_central", "whether ranks keep their central shard between syncs (settled at "
                                              "setup; keep_central_setting is what was asked)")
    keep_central_setting = _from_core("keep_central_setting", "keep_central as asked: True, False or None (auto)")
    round = _from_core("round", "syncs done")
    step_in_round = _from_core("step_in_round", "optimizer steps since the last sync")
    counter = _from_core("counter", "bytes and calls handed to collectives")
    central = _from_core("central", "the central model's parameters as one flat vector (sharded: this rank's rows)")
    central_model = _from_core("central_model", "the central model (a GPT)")
    central_moments = _from_core("central_moments", "holder-averaged Adam moments (carry)")
    outer_buffer = _from_core("outer_buffer", "the outer step's momentum buffer")
    workers = _from_core("workers", "this process's workers this round")
    blueprints = _from_core("blueprints", "every worker's blueprint this round")
    spec = _from_core("spec", "the partition of the model into units")

    @property
    def num_subnets(self) -> int:
        return self.world_size * self.workers_per_process  # the core learns the world size only at set-up

    def physical_on(self, rank: int) -> bool:
        return self.core.physical_on(rank)

    def coverage(self) -> float:
        return self.core.coverage()

    def check(self, model: Any, world_size: int, max_steps: int | None = None) -> PartitionSpec:
        """Validate the settings against the model, world size and run length; raises ``ValueError`` early."""
        return self.core.check(model, world_size, max_steps)

    # ---- set-up ---------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer) -> None:
        from twist_lightning.callbacks import SubnetResampling  # callbacks.py imports this module

        if not any(isinstance(c, SubnetResampling) for c in trainer.callbacks):
            # it writes the resume state into checkpoints on every rank; without it a resumed run would restart
            # its round from the central model and lose the workers' progress and moments
            trainer.callbacks.append(SubnetResampling())
        super().setup(trainer)

    @override
    def setup_distributed(self) -> None:
        super().setup_distributed()
        destroy_process_group_at_exit()  # gloo left to interpreter finalization can abort a finished rank

    @override
    def configure_ddp(self) -> None:
        # No DistributedDataParallel wrapper: there is no per-step gradient all-reduce in TwIST.
        lm = self.lightning_module
        lm.model = self.core.setup(getattr(lm, "model", None), self.global_rank, self.world_size,
                                   max_steps=lm.trainer.max_steps)

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        self.core.bind(self.optimizers)

    # ---- training -------------------------------------------------------------------------------------------------
    @override
    def training_step(self, *args: Any, **kwargs: Any):
        n = self.workers_per_process
        if n > 1 and self.core.active is not None and args:
            k = self.core.active  # worker k trains on rows k, k+n, ... of the batch
            rows = min(len(t) for t in _tensors(args[0]))
            if rows < n:
                raise ValueError(f"A batch of {rows} rows cannot feed twist.workers_per_process={n} virtual workers. "
                                 f"HINT: use a per-process batch size (data.batch_size) that is a multiple of {n}.")
            args = (apply_to_collection(args[0], torch.Tensor, lambda t: t[k::n]), *args[1:])
        return super().training_step(*args, **kwargs)

    @property
    @override
    def handles_gradient_accumulation(self) -> bool:
        # Otherwise Lightning runs the closure of a micro-batch that does not step itself, as whichever worker is
        # active, and every worker's rows and gradients go astray; routed through optimizer_step, every worker runs
        # its own rows of every micro-batch into its own gradient sum. As with DeepSpeed, a window cut short by the
        # end of an epoch is dropped (Lightning's zero_grad at the next window start), not stepped.
        return True

    @override
    def optimizer_step(self, optimizer: Optimizer, closure: Callable[[], Any], model=None, **kwargs: Any) -> Any:
        workers = len(self.core.workers)
        if self._grads is None or len(self._grads) != workers:
            self._grads = GradAccumulators(workers)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        accumulating = self.lightning_module.trainer.fit_loop._should_accumulate()
        output = None
        for k in range(workers):
            self.core.activate(k)
            self._grads.load(k, params)
            if accumulating:  # this worker's forward and backward on its rows; no step, values unchanged
                output = closure()
                self._grads.save(k, params)
                continue
            output = Strategy.optimizer_step(self, optimizer, closure, model, **kwargs)
            self.core.deactivate(k)
        if accumulating:
            return output
        self._grads.clear()
        self.core.end_step()
        return output

    def sync(self) -> None:
        """Average every parameter over its holders into the central model now, then resample."""
        self.core.sync()

    # ---- evaluation and checkpoints ------------------------------------------------------------------------------
    def _fitting(self) -> bool:
        return self.core.central_model is not None and self.lightning_module.model is not self.core.central_model

    @override
    def on_validation_start(self) -> None:
        super().on_validation_start()
        if self._fitting():  # evaluate the central model (as of the last sync), not this worker's subnet
            self._swapped_out, self.lightning_module.model = self.lightning_module.model, self.core.materialize()
            # Lightning put the module in eval mode before this hook, with the live model inside; the central
            # model takes the same mode (dropout off)
            self.lightning_module.model.train(self._swapped_out.training)

    @override
    def on_validation_end(self) -> None:
        if self._swapped_out is not None:
            self.lightning_module.model, self._swapped_out = self._swapped_out, None
            self.core.release()  # sharded: the whole model's storage goes until it is needed again
        super().on_validation_end()

    @override
    def on_train_end(self) -> None:
        if self.core.central_model is not None:
            self.core.finish()  # fold the last partial round in, so no training is lost
            self.lightning_module.model = self.core.materialize(keep=True)  # after fit, the module holds it
        super().on_train_end()

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        state = self.lightning_module.state_dict()
        if self.core.central_model is None:
            return state
        state = {k: v for k, v in state.items() if not k.startswith("model.")}
        whole = self.core.materialized  # sharded: gathered for this checkpoint only (every rank calls this hook)
        state.update({f"model.{k}": v for k, v in self.core.materialize().state_dict().items()})
        if not whole:
            self.core.release()  # the state dict keeps its tensors alive until the checkpoint is written
        return state

    def twist_state_dict(self) -> dict[str, Any] | None:
        """The core's resume state (a collective with several processes: every rank calls it), or ``None``."""
        return self.core.state_dict() if self.core.workers else None

    @override
    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        state = checkpoint.get(CHECKPOINT_KEY)
        if state is None:  # written before 0.2: inside SubnetResampling's callback state
            for key, value in (checkpoint.get("callbacks") or {}).items():
                if str(key).startswith("SubnetResampling") and isinstance(value, dict) and "strategy" in value:
                    state = value["strategy"]
        if state is not None:
            self.core.load_state_dict(state)
        return checkpoint

    @classmethod
    @override
    def register_strategies(cls, strategy_registry) -> None:
        for name, start_method in (("twist", "popen"), ("twist_spawn", "spawn"), ("twist_fork", "fork")):
            if name not in strategy_registry:
                strategy_registry.register(name, cls, description=f"TwIST with start_method {start_method!r}",
                                           start_method=start_method)


def _tensors(batch: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    apply_to_collection(batch, torch.Tensor, found.append)
    return found
