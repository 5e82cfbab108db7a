"""``TwISTStrategy``: independent subnetwork training as a Lightning DDP-family strategy.

Every rank trains its own subnet(s) with no per-step gradient all-reduce; every ``sync_every`` optimizer steps
the workers' values are averaged over their holders into the central model and new blueprints are drawn. All
ranks draw the same blueprints from ``(seed, round)``, so the only communication is one ``all_gather`` of the
held values per sync.

Variants:
    masked: the rank's module is the full model running its subnet by index-select; units it does not hold are
        restored after every step (AdamW's momentum and weight decay would otherwise move them).
    true: the rank's module is a physically smaller dense GPT cut from the central model (same shape every
        round, so the optimizer keeps its tensors); only the held values travel.
    hybrid: rank 0 trains masked, the other ranks physically.

With ``workers_per_process=k`` each process simulates k workers in turn (each with its own rows of the batch,
its own values and its own optimizer state), so one CPU process runs the same algorithm as k processes.

Example::

    import twist_lightning  # registers "twist" and "twist_spawn"
    trainer = L.Trainer(strategy=TwISTStrategy(variant="true", sync_every=15, n_sub=0.5), devices=2)
"""

from __future__ import annotations

import copy
from collections import defaultdict
from datetime import timedelta
from enum import Enum
from typing import Any, Callable

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.fabric.utilities.apply_func import apply_to_collection
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import DDPStrategy, Strategy
from torch.optim import Optimizer
from typing_extensions import override

from twist_lightning.accumulation import GradAccumulators
from twist_lightning.model import GPT
from twist_lightning.partition import PartitionSpec, extract, param_index, sample_blueprints
from twist_lightning.workers import (
    CollectiveCounter,
    Layout,
    Worker,
    average_over_holders,
    exchange_held,
    flatten_parameters,
)

VARIANTS = ("masked", "true", "hybrid")
OPTIMIZER_STATES = ("reset", "carry")
OUTERS = ("none", "nesterov")  # the outer step applied to the holders' average at every sync
MOMENTS = ("exp_avg", "exp_avg_sq")  # Adam/AdamW state that "carry" averages over holders


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    value = value.value if isinstance(value, Enum) else str(value)
    if value not in allowed:
        raise ValueError(f"twist.{name}={value!r} is not one of {list(allowed)}.")
    return value


class TwISTStrategy(DDPStrategy):
    """Train independent subnets on every worker and average them over holders every ``sync_every`` steps.

    Args:
        variant: ``"masked"``, ``"true"`` or ``"hybrid"`` (see the module docstring).
        sync_every: optimizer steps between two syncs (the paper uses 15).
        n_sub: units kept per partitioned layer: an int count, or a float fraction in (0, 1].
        common: layers every subnet keeps whole: ``"default"`` (first and last), ``"none"``, or a list of indices.
        scale: multiply subnet attention/FFN outputs by sqrt(N_full / N_sub).
        optimizer_state: ``"reset"`` starts every worker's AdamW moments from zero at every resample; ``"carry"``
            averages the moments over their holders like the weights (two more ``all_gather`` calls per sync) and
            slices them into the next subnets, with Adam's step count continuing. ``carry`` needs Adam or AdamW.
        workers_per_process: virtual workers each process simulates (S = world size x this).
        outer: the step at a sync. ``"none"``: the central model becomes the holders' average. ``"nesterov"``
            (DiLoCo, Douillard et al. 2023): the pseudo-gradient ``central - average`` is applied by an outer SGD
            step with Nesterov momentum, ``m = mu m + delta; central -= outer_lr (delta + mu m)``. With
            ``outer_lr=1, outer_momentum=0`` that is the plain average, exactly.
        outer_lr: the outer step's learning rate (> 0; DiLoCo uses 0.7 for hundreds of local steps).
        outer_momentum: its momentum ``mu`` in [0, 1) (DiLoCo: 0.9). The buffer lives with the central model and
            is checkpointed, so a resumed run continues it.
        seed: seed of the blueprint sequence (same on every rank).
    """

    strategy_name = "twist"

    def __init__(
        self,
        *,
        variant: str = "masked",
        sync_every: int = 15,
        n_sub: int | float = 0.5,
        common: Any = "default",
        scale: bool = True,
        optimizer_state: str = "reset",
        workers_per_process: int = 1,
        seed: int = 0,
        outer: str = "none",
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
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
        self.variant = _choice("variant", variant, VARIANTS)
        self.optimizer_policy = _choice("optimizer_state", optimizer_state, OPTIMIZER_STATES)  # not optimizer_state: a Strategy method
        for name, value in (("sync_every", sync_every), ("workers_per_process", workers_per_process)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"twist.{name}={value!r} must be an integer >= 1.")
        if isinstance(n_sub, bool) or not isinstance(n_sub, (int, float)):
            raise ValueError(f"twist.n_sub={n_sub!r} must be an int count or a float fraction in (0, 1].")
        self.outer = _choice("outer", outer, OUTERS)
        if isinstance(outer_lr, bool) or not isinstance(outer_lr, (int, float)) or not 0 < outer_lr < float("inf"):
            raise ValueError(f"twist.outer_lr={outer_lr!r} must be a finite number > 0 (1 with outer_momentum=0 is "
                             "plain averaging; DiLoCo uses 0.7).")
        if isinstance(outer_momentum, bool) or not isinstance(outer_momentum, (int, float)) \
                or not 0 <= outer_momentum < 1:
            raise ValueError(f"twist.outer_momentum={outer_momentum!r} must lie in [0, 1) (DiLoCo uses 0.9).")
        self.outer_lr, self.outer_momentum = float(outer_lr), float(outer_momentum)
        self.outer_buffer: torch.Tensor | None = None  # Nesterov momentum of the pseudo-gradient, like central
        self.sync_every, self.n_sub, self.common, self.scale = sync_every, n_sub, common, scale
        self.workers_per_process, self.seed = workers_per_process, seed
        self.round, self.step_in_round = 0, 0
        self.counter = CollectiveCounter()
        self.central_model: GPT | None = None
        self.central: torch.Tensor | None = None
        self.workers: list[Worker] = []
        self._live: torch.Tensor | None = None
        self._active: int | None = None
        self._swapped_out: GPT | None = None
        self._pending: dict[str, Any] | None = None
        self.central_moments: dict[str, torch.Tensor] | None = None
        self._steps_done = 0
        self._grads: GradAccumulators | None = None  # per-worker gradient sums between micro-batches

    # ---- set-up ---------------------------------------------------------------------------------------------------
    @property
    def num_subnets(self) -> int:
        return self.world_size * self.workers_per_process

    def physical_on(self, rank: int) -> bool:
        return self.variant == "true" or (self.variant == "hybrid" and rank != 0)

    def check(self, model: Any, world_size: int) -> PartitionSpec:
        """Validate the settings against the model and world size; raises ``ValueError`` before any training."""
        if not isinstance(model, GPT) or not model.config.is_full:
            raise ValueError("TwISTStrategy needs a LightningModule whose `model` attribute is a full-size "
                             f"twist_lightning.GPT (got {type(model).__name__}); the model is not partitionable.")
        if self.variant == "hybrid" and world_size < 2:
            raise ValueError("twist.variant='hybrid' needs at least 2 processes (rank 0 masked, the others "
                             "physical). HINT: set trainer.devices=2, or use variant masked/true in one process.")
        spec = PartitionSpec.from_config(model.config, common=self.common)
        sample_blueprints(spec, world_size * self.workers_per_process, self.n_sub, self.seed, 0)  # raises if impossible
        if not spec.split_layers:  # TwIST would silently train the full model on every worker
            raise ValueError(f"twist.common={self.common!r} keeps all {spec.n_layer} layers of this model whole, so "
                             "there is no layer to split into subnets. HINT: use twist.common=none, or a model with "
                             "more layers than common ones (model.n_layer).")
        return spec

    @override
    def configure_ddp(self) -> None:
        # No DistributedDataParallel wrapper: there is no per-step gradient all-reduce in TwIST.
        lm = self.lightning_module
        self.spec = self.check(getattr(lm, "model", None), self.world_size)
        if self.world_size > 1:
            for t in lm.model.state_dict().values():  # the DDP wrapper would have broadcast rank 0's weights
                dist.broadcast(t, src=0)
        physical = self.physical_on(self.global_rank)
        self.central_model = lm.model if physical else copy.deepcopy(lm.model)
        self.central = flatten_parameters(self.central_model)
        self.layout = Layout(self.central_model)
        if self._pending is not None:
            self.round, self.step_in_round = self._pending["round"], self._pending["step_in_round"]
            self._steps_done = self._pending.get("steps_done", 0)
        blueprints = self._draw(self.round)
        mine = blueprints[self.global_rank * self.workers_per_process]
        if physical:
            lm.model = extract(self.central_model, mine, scale=self.scale)
        self._live = flatten_parameters(lm.model)
        self._start_round(blueprints)

    def _draw(self, round: int):
        return sample_blueprints(self.spec, self.num_subnets, self.n_sub, self.seed, round)

    def _start_round(self, blueprints) -> None:
        """Give every local worker its new blueprint and its values sliced from the central model."""
        model = self.lightning_module.model
        self.blueprints = blueprints
        device = self.central.device
        self.all_indices = [param_index(self.central_model.config, bp, device) for bp in blueprints]
        physical = self.physical_on(self.global_rank)
        first = self.global_rank * self.workers_per_process
        self.workers = []
        for k in range(self.workers_per_process):
            bp, index = blueprints[first + k], self.all_indices[first + k]
            source = self.layout.gather_held(self.central, index) if physical else self.central
            values = self._live if self.workers_per_process == 1 else torch.empty_like(source)
            values.copy_(source)
            worker = Worker(bp, index, values, physical, self._initial_state(index, physical))
            if not physical:
                model.set_subnet(list(bp.heads), list(bp.ffn), scale=self.scale)
                worker.subnet_cache, worker.mask = model._subnet, self.layout.held_mask(index, device)
            self.workers.append(worker)
        self._activate(0)

    def _initial_state(self, index: dict, physical: bool) -> dict:
        """A new worker's optimizer state: empty (``reset``), or sliced from the central moments (``carry``)."""
        state: dict = defaultdict(dict)
        if self.optimizer_policy != "carry" or self.central_moments is None:
            return state
        params = list(self.lightning_module.model.parameters())  # the live model, in layout order
        step = torch.tensor(float(self._steps_done))
        sliced = {}
        for key, flat in self.central_moments.items():
            if physical:
                sliced[key] = self.layout.split_held(self.layout.gather_held(flat, index), index)
            else:
                sliced[key] = self.layout.views(flat.clone())
        for i, p in enumerate(params):
            state[p] = {"step": step.clone(), **{key: sliced[key][i].clone() for key in MOMENTS}}
        return state

    def _held_moments(self, w: Worker, key: str) -> torch.Tensor:
        """One Adam moment of a worker as a held vector (zeros where a parameter has no state yet)."""
        params = list(self.lightning_module.model.parameters())
        flat = torch.cat([w.optimizer_state[p][key].reshape(-1) if key in w.optimizer_state.get(p, {})
                          else torch.zeros(p.numel(), device=p.device, dtype=p.dtype) for p in params])
        return flat if w.physical else self.layout.gather_held(flat, w.index)

    def coverage(self) -> float:
        """Fraction of the partitioned units held by at least one worker this round (1.0 by construction)."""
        covered = total = 0
        for layer in range(self.spec.n_layer):
            heads = set().union(*(bp.heads[layer] for bp in self.blueprints))
            ffn = set().union(*(bp.ffn[layer] for bp in self.blueprints))
            covered += len(heads) + len(ffn)
            total += self.spec.n_head + self.spec.ffn_groups
        return covered / total

    # ---- training -------------------------------------------------------------------------------------------------
    def _activate(self, k: int) -> None:
        w = self.workers[k]
        if self.workers_per_process > 1:
            self._live.copy_(w.values)
        if not w.physical:
            self.lightning_module.model._subnet = w.subnet_cache
        for opt in self.optimizers:
            opt.state = w.optimizer_state
        self._active = k

    def _deactivate(self, k: int) -> None:
        w = self.workers[k]
        if not w.physical:  # units this worker does not hold go back to their central values
            torch.where(w.mask, self._live, self.central, out=self._live)
        if self.workers_per_process > 1:
            w.values.copy_(self._live)

    @override
    def training_step(self, *args: Any, **kwargs: Any):
        if self.workers_per_process > 1 and self._active is not None and args:
            k, n = self._active, self.workers_per_process  # worker k trains on rows k, k+n, ... of the batch
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
        if self._grads is None or len(self._grads) != len(self.workers):
            self._grads = GradAccumulators(len(self.workers))
        params = [p for g in optimizer.param_groups for p in g["params"]]
        accumulating = self.lightning_module.trainer.fit_loop._should_accumulate()
        output = None
        for k in range(len(self.workers)):
            self._activate(k)
            self._grads.load(k, params)
            if accumulating:  # this worker's forward and backward on its rows; no step, values unchanged
                output = closure()
                self._grads.save(k, params)
                continue
            output = Strategy.optimizer_step(self, optimizer, closure, model, **kwargs)
            self._deactivate(k)
        if accumulating:
            return output
        self._grads.clear()
        self.step_in_round += 1
        self._steps_done += 1
        if self.step_in_round >= self.sync_every:
            self.sync()
        return output

    @torch.no_grad()
    def sync(self) -> None:
        """Average every parameter over its holders into the central model, then resample."""
        carry = self.optimizer_policy == "carry"
        local = [w.held(self.layout) for w in self.workers]
        n_held = local[0].numel()
        if carry:  # values and Adam moments travel in the same all_gather: [values | exp_avg | exp_avg_sq]
            local = [torch.cat([v, *(self._held_moments(w, key) for key in MOMENTS)])
                     for w, v in zip(self.workers, local)]
        parts = [h.split(n_held) for h in exchange_held(local, self.counter)]  # per worker: values(, moments...)
        before = self.central.clone() if self.outer != "none" else None
        average_over_holders(self.central, self.layout, [p[0] for p in parts], self.all_indices)
        if before is not None:
            self._outer_step(before)
        if carry:
            if self.central_moments is None:
                self.central_moments = {key: torch.zeros_like(self.central) for key in MOMENTS}
            for i, key in enumerate(MOMENTS, start=1):
                average_over_holders(self.central_moments[key], self.layout, [p[i] for p in parts], self.all_indices)
        self.round += 1
        self.step_in_round = 0
        self._start_round(self._draw(self.round))

    @torch.no_grad()
    def _outer_step(self, before: torch.Tensor) -> None:
        """Nesterov outer step on ``delta = before - average``; ``self.central`` holds the average on entry.

        ``before - lr (delta + mu m)`` is computed as ``average + (1 - lr) delta - lr mu m`` so that ``lr=1, mu=0``
        leaves the average bit for bit. Every rank holds the same central vector, so every rank takes the same
        step without communication.
        """
        delta = before.sub_(self.central)  # the pseudo-gradient, in place of the copy
        if self.outer_buffer is None:
            self.outer_buffer = torch.zeros_like(self.central)
        self.outer_buffer.mul_(self.outer_momentum).add_(delta)
        self.central.add_(delta, alpha=1.0 - self.outer_lr)
        if self.outer_momentum:
            self.central.add_(self.outer_buffer, alpha=-self.outer_lr * self.outer_momentum)

    # ---- evaluation and checkpoints ------------------------------------------------------------------------------
    def _fitting(self) -> bool:
        return self.central_model is not None and self.lightning_module.model is not self.central_model

    @override
    def on_validation_start(self) -> None:
        super().on_validation_start()
        if self._fitting():  # evaluate the central model (as of the last sync), not this worker's subnet
            self._swapped_out, self.lightning_module.model = self.lightning_module.model, self.central_model

    @override
    def on_validation_end(self) -> None:
        if self._swapped_out is not None:
            self.lightning_module.model, self._swapped_out = self._swapped_out, None
        super().on_validation_end()

    @override
    def on_train_end(self) -> None:
        if self.central_model is not None:
            if self.step_in_round > 0:
                self.sync()  # fold the last partial round in, so no training is lost
            self.lightning_module.model = self.central_model  # after fit, the module holds the central model
        super().on_train_end()

    @override
    def lightning_module_state_dict(self) -> dict[str, Any]:
        state = self.lightning_module.state_dict()
        if self.central_model is None:
            return state
        state = {k: v for k, v in state.items() if not k.startswith("model.")}
        state.update({f"model.{k}": v for k, v in self.central_model.state_dict().items()})
        return state

    def worker_state(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue mid-round: all workers' values and optimizer states."""
        params = self._params()
        local = [{"values": w.values.detach().cpu().clone(), "optimizer": _cpu_state(w.optimizer_state, params)}
                 for w in self.workers]
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, local)
            local = [w for rank in gathered for w in rank]
        return {"round": self.round, "step_in_round": self.step_in_round, "steps_done": self._steps_done,
                "workers": local,
                "outer_buffer": None if self.outer_buffer is None else self.outer_buffer.detach().cpu().clone(),
                "bytes_communicated": self.counter.bytes, "collective_calls": self.counter.calls}

    def load_worker_state(self, state: dict[str, Any]) -> None:
        """Called by ``SubnetResampling.load_state_dict``; applied once the strategy is set up."""
        self._pending = state

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.optimizer_policy == "carry" and not all(isinstance(o, torch.optim.Adam | torch.optim.AdamW)
                                                        for o in self.optimizers):
            raise ValueError("twist.optimizer_state='carry' averages Adam moments, but the optimizer is "
                             f"{[type(o).__name__ for o in self.optimizers]}. HINT: use AdamW or optimizer_state=reset.")
        if self._pending is None or self.central_model is None:
            return
        first = self.global_rank * self.workers_per_process
        params = self._params()
        for k, w in enumerate(self.workers):
            saved = self._pending["workers"][first + k]
            w.values.copy_(saved["values"].to(w.values.device))
            w.optimizer_state = _restore_state(saved["optimizer"], params, w.values.device)
        buffer = self._pending.get("outer_buffer")
        self.outer_buffer = None if buffer is None else buffer.to(self.central.device, self.central.dtype)
        self.counter.bytes = self._pending.get("bytes_communicated", 0)
        self.counter.calls = self._pending.get("collective_calls", 0)
        self._pending = None
        self._activate(0)

    def _params(self) -> list[torch.Tensor]:
        return [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]

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


def _cpu_state(state: dict, params: list[torch.Tensor]) -> dict[int, dict[str, Any]]:
    """An optimizer state keyed by parameter, re-keyed by the parameter's position (pickles across processes)."""
    return {i: {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in state[p].items()}
            for i, p in enumerate(params) if p in state}


def _restore_state(saved: dict[int, dict[str, Any]], params: list[torch.Tensor], device: torch.device) -> dict:
    state: dict = defaultdict(dict)
    for i, s in saved.items():
        state[params[i]] = {k: (v.to(device) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in s.items()}
    return state
