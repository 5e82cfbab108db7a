"""``TwISTCore``: the TwIST algorithm as a pure-torch state machine (no Lightning, no Hydra).

One object per process holds what TwIST is: the central model, the rounds and their blueprints, every local
worker's values and optimizer state, the sync (holder averaging, the optional outer step, carried moments), the
sync schedule and the resume state. ``TwISTStrategy`` drives it from Lightning's hooks; a plain training loop can
drive it the same way::

    core = TwISTCore(variant="masked", n_sub=6, sync_every=15, workers_per_process=4)
    live = core.setup(model)                       # the GPT this process trains (the full model, or a slice)
    opt = torch.optim.AdamW(live.parameters()); core.bind([opt])
    for batch in loader:
        for k in range(len(core.workers)):
            core.activate(k)                       # worker k's values, subnet and optimizer state are live
            loss(live, rows_of(batch, k)).backward(); opt.step(); opt.zero_grad()
            core.deactivate(k)
        core.end_step()                            # counts the step; syncs and resamples at a round's end

All ranks draw the same blueprints from ``(seed, round)``, so the only communication is the held values at a
sync. With several processes the central model is sharded by default (``shard_central``, :mod:`~twist_lightning.
shards`): each rank owns a slice of rows of every parameter, and a sync is two ``all_to_all`` exchanges whose
bytes per rank do not grow with the number of workers; unsharded, it is one ``all_gather`` of every worker's held
values (``workers.exchange_held``), S x held received per rank. One process keeps one copy either way.

Variants:
    masked: the live model is the full model running its subnet by index-select; units a worker does not hold are
        restored after every step (AdamW's momentum and weight decay would otherwise move them). Sharded, they are
        not: the forward never reads them and no sync sends them, so the live model's units outside the subnet
        hold stale values (read the central model, not the live one, for the model's weights).
    true: the live model is a physically smaller dense GPT cut from the central model (the same shape every
        round, so the optimizer keeps its tensors); only the held values travel.
    hybrid: rank 0 trains masked, the other ranks physically.
"""

from __future__ import annotations

import copy
import functools
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from twist_lightning.model import GPT
from twist_lightning.options import TWIST_VARIANTS, OptimizerState, OuterOptimizer, SyncDtype, Variant, choice
from twist_lightning.partition import Blueprint, PartitionSpec, extract, param_index, sample_blueprints
from twist_lightning.shards import ShardPlan, all_to_all, cut, own_pieces, paste
from twist_lightning.workers import (
    CollectiveCounter,
    Layout,
    Worker,
    average_over_holders,
    exchange_held,
    flatten_parameters,
    reuse,
)

MOMENTS = ("exp_avg", "exp_avg_sq")  # Adam/AdamW state that "carry" averages over holders


class _PhaseClock:
    """Wall seconds per phase of one sync (``TwISTCore.sync_phases``): where a sync's time goes. Each call closes
    the phase that ran since the previous one; a phase that runs twice adds up."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.perf_counter()

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - self._last
        self._last = now


def _positive_int(key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key}={value!r} must be an integer >= {minimum}.")
    return value


def check_schedule(schedule: Mapping[int, int] | None, key: str = "twist.schedule") -> dict[int, int]:
    """``{from_step: interval}`` sorted by step, or a ``ValueError`` naming the bad entry."""
    if schedule is None:
        return {}
    if not isinstance(schedule, Mapping):
        raise ValueError(f"{key}={schedule!r} must be a mapping {{from_step: interval}}, e.g. {{0: 1, 100: 15}}.")
    for step, n in schedule.items():
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{key}={dict(schedule)!r}: from_step {step!r} must be an integer >= 0.")
        _positive_int(f"{key}[{step}]", n)
    return dict(sorted(schedule.items()))


class TwISTCore:
    """The TwIST algorithm for one process: rounds, workers, syncs and resume state.

    Args:
        variant: ``"masked"``, ``"true"`` (``"physical"``) or ``"hybrid"`` (see the module docstring).
        sync_every: optimizer steps between two syncs (the paper uses 15).
        schedule: ``{from_step: interval}``, e.g. ``{0: 5, 1000: 15}``: the interval of the largest ``from_step``
            reached applies, before that ``sync_every``. The one place the sync interval is decided.
        n_sub: units kept per partitioned layer: an int count, or a float fraction in (0, 1].
        common: layers every subnet keeps whole: ``"default"`` (first and last), ``"none"``, or a list of indices.
        scale: multiply subnet attention/FFN outputs by sqrt(N_full / N_sub).
        optimizer_state: ``"reset"`` starts every worker's AdamW moments from zero at every resample; ``"carry"``
            averages the moments over their holders like the weights and slices them into the next subnets, with
            Adam's step count continuing. ``carry`` needs Adam or AdamW.
        workers_per_process: virtual workers each process simulates (S = world size x this).
        warm_start: the first ``warm_start`` optimizer steps run synchronously (full subnets, a sync after every
            step, plain averaging: data-parallel training), then TwIST (post-local SGD, Lin et al. 2018). Masked
            variant and ``optimizer_state="carry"`` only: a physical worker keeps one subnet shape, and resetting
            the moments at every one-step round would restart Adam every step.
        outer: the step at a sync. ``"none"``: the central model becomes the holders' average. ``"nesterov"``
            (DiLoCo, Douillard et al. 2023): the pseudo-gradient ``central - average`` is applied by an outer SGD
            step with Nesterov momentum, ``m = mu m + delta; central -= outer_lr (delta + mu m)``. With
            ``outer_lr=1, outer_momentum=0`` that is the plain average, exactly.
        outer_lr: the outer step's learning rate (> 0; DiLoCo uses 0.7 for hundreds of local steps).
        outer_momentum: its momentum ``mu`` in [0, 1) (DiLoCo: 0.9). The buffer lives with the central model and
            is part of :meth:`state_dict`, so a resumed run continues it.
        sync_dtype: ``"float32"`` or ``"bfloat16"``: the dtype held values (and carried moments) travel in, both
            ways. In bfloat16 a worker starts its round from the central values rounded to bfloat16 (what the
            owners send back, sharded; the same rounding unsharded), and sends its *change* since then (its start
            minus its values; every rank can undo it: the start is the rounded central value, which the owner
            holds exactly). The owner subtracts the change from its exact float32 value, so the central model
            keeps float32 precision and moves by the holders' average change: the rounding is relative to what
            training moved, and each round's start is the only place the weights themselves are rounded (as
            bf16 weights against float32 master weights in mixed-precision training). Carried moments travel as
            they are, rounded both ways. Averaging is in float32; half the bytes of float32. With virtual
            workers the same rounding is applied although nothing travels, so a one-process run measures its
            effect.
        shard_central: with several processes, each rank owns 1/world of the rows of every central parameter (and
            of the outer momentum and carried moments), and a sync is an ``all_to_all`` to the owners and one
            back (:mod:`~twist_lightning.shards`): the central model is identical to the unsharded one, bit for
            bit, and no rank holds it whole except while validating or checkpointing (:meth:`materialize`).
            ``False``: every rank keeps the whole central model and a sync is one ``all_gather``.
        keep_central: ``None`` (the default): ``False`` wherever it is allowed and there are several processes,
            else ``True`` (:attr:`keep_central` says which, exactly once :meth:`setup` knows the world size).
            ``True``: each rank keeps its shard of the central model between syncs. ``False`` (sharded, float32
            sync, ``outer="none"``): no rank keeps any central value between syncs. The central model is
            the holders' average, which needs no previous central value because every unit has a holder, so a
            sync makes each rank's shard from the workers' values, sends the next subnets from it and drops it
            when the next step starts (the training state then holds only the workers: at GPT-2 124M on 2
            processes 1/8 of a data-parallel rank less). At every sync the central model is the kept one, bit for
            bit. Between syncs (a validation or checkpoint mid-round) the central model is the holders' average
            of the workers' values now, the model a sync would make at that step, computed by phase 1 of a sync
            without resampling; resuming from such a checkpoint continues bit for bit (the workers' own values
            and moments are in the resume state).
        seed: seed of the blueprint sequence (the same on every rank).
    """

    def __init__(
        self,
        *,
        variant: str | Variant = "masked",
        sync_every: int = 15,
        schedule: Mapping[int, int] | None = None,
        n_sub: int | float = 0.5,
        common: Any = "default",
        scale: bool = True,
        optimizer_state: str | OptimizerState = "reset",
        workers_per_process: int = 1,
        warm_start: int = 0,
        outer: str | OuterOptimizer = "none",
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        sync_dtype: str | SyncDtype = "float32",
        shard_central: bool = True,
        keep_central: bool | None = None,
        seed: int = 0,
    ) -> None:
        self.variant = choice("twist.variant", variant, Variant, TWIST_VARIANTS)
        self.optimizer_policy = choice("twist.optimizer_state", optimizer_state, OptimizerState)
        self.outer = choice("twist.outer", outer, OuterOptimizer)
        self.sync_dtype = choice("twist.sync_dtype", sync_dtype, SyncDtype)
        self.sync_every = _positive_int("twist.sync_every", sync_every)
        self.schedule = check_schedule(schedule)
        self.workers_per_process = _positive_int("twist.workers_per_process", workers_per_process)
        self.warm_start = _positive_int("twist.warm_start", warm_start, minimum=0)
        if isinstance(n_sub, bool) or not isinstance(n_sub, (int, float)):
            raise ValueError(f"twist.n_sub={n_sub!r} must be an int count or a float fraction in (0, 1].")
        if isinstance(outer_lr, bool) or not isinstance(outer_lr, (int, float)) or not 0 < outer_lr < float("inf"):
            raise ValueError(f"twist.outer_lr={outer_lr!r} must be a finite number > 0 (1 with outer_momentum=0 is "
                             "plain averaging; DiLoCo uses 0.7).")
        if isinstance(outer_momentum, bool) or not isinstance(outer_momentum, (int, float)) \
                or not 0 <= outer_momentum < 1:
            raise ValueError(f"twist.outer_momentum={outer_momentum!r} must lie in [0, 1) (DiLoCo uses 0.9).")
        if self.warm_start and self.variant != Variant.masked:
            raise ValueError(f"twist.warm_start={warm_start} needs twist.variant=masked (got "
                             f"{self.variant.value!r}): a physical worker keeps one subnet shape for its optimizer, "
                             "so it cannot train the full model during the warm start. HINT: use twist=masked or "
                             "twist.warm_start=0.")
        if self.warm_start and self.optimizer_policy != OptimizerState.carry:
            raise ValueError(f"twist.warm_start={warm_start} needs twist.optimizer_state=carry: the warm start "
                             "resamples after every step, and resetting AdamW's moments there restarts Adam at "
                             "every step. HINT: add twist.optimizer_state=carry.")
        if not isinstance(shard_central, bool):
            raise ValueError(f"twist.shard_central={shard_central!r} must be true or false.")
        if keep_central is not None and not isinstance(keep_central, bool):
            raise ValueError(f"twist.keep_central={keep_central!r} must be true, false or null (false where allowed).")
        if keep_central is False:  # what needs the previous central values, which keep_central=false drops
            needs = [(not shard_central, f"twist.shard_central={shard_central} (every rank keeps the whole central "
                      "model)", "twist.shard_central=true"),
                     (self.outer != OuterOptimizer.none, f"twist.outer={self.outer.value!r} (the outer step is taken "
                      "from the previous central model)", "twist.outer=none"),
                     (self.sync_dtype != SyncDtype.float32, f"twist.sync_dtype={self.sync_dtype.value!r} (the owners "
                      "subtract the rounded changes from their exact previous values)", "twist.sync_dtype=float32")]
            for bad, why, fix in needs:
                if bad:
                    raise ValueError(f"twist.keep_central=false drops the central model between syncs, which "
                                     f"{why} needs. HINT: use {fix}, or twist.keep_central=true.")
        self.n_sub, self.common, self.scale, self.seed = n_sub, common, bool(scale), seed
        self.shard_central, self.keep_central_setting = shard_central, keep_central
        # what a sync with several processes does; setup settles it for the world size (one process keeps its copy)
        self.keep_central = self._keeps(world_size=2)
        self.outer_lr, self.outer_momentum = float(outer_lr), float(outer_momentum)

        self.rank, self.world_size = 0, 1
        self.round, self.step_in_round, self.steps_done = 0, 0, 0
        self.counter = CollectiveCounter()
        self.sync_phases: dict[str, float] = {}  # seconds per phase of the last sync (see _PhaseClock)
        self.spec: PartitionSpec | None = None
        self.model: GPT | None = None  # the live model this process trains (full, or a physical slice)
        self.central_model: GPT | None = None
        self.central: torch.Tensor | None = None  # the central model's parameters, one flat vector
        self.layout: Layout | None = None
        self.plan: ShardPlan | None = None  # sharded central model: which rows each rank owns (None: one copy)
        self._materialized = True  # sharded: whether central_model holds the central values now
        self._kept = False  # sharded: materialized for good (after fit)
        self._drop_pending = False  # keep_central=False: drop the shard when the next step starts
        self._shard_dropped = False  # keep_central=False: the shard is dropped now (a round's first step to a sync)
        self._finite_when_dropped = True  # keep_central=False: whether the dropped shard was finite
        self.sync_peak_bytes = 0  # the most bytes alive during the last sync (see _note_peak)
        self._out_routes: list[list] = []  # sharded: [local worker][owner] -> Route
        self._in_routes: list = []  # sharded: [every worker] -> Route into this rank's shard
        self.blueprints: list[Blueprint] = []
        self.all_indices: list[dict] = []
        self.workers: list[Worker] = []
        self.active: int | None = None
        self.central_moments: dict[str, torch.Tensor] | None = None
        self.outer_buffer: torch.Tensor | None = None  # Nesterov momentum of the pseudo-gradient, like central
        self.optimizers: list[Optimizer] = []
        self._live: torch.Tensor | None = None
        self._pending: dict[str, Any] | None = None

    # ---- settings -------------------------------------------------------------------------------------------------
    @property
    def num_subnets(self) -> int:
        return self.world_size * self.workers_per_process

    def physical_on(self, rank: int) -> bool:
        return self.variant == Variant.true or (self.variant == Variant.hybrid and rank != 0)

    def _keeps(self, world_size: int) -> bool:
        """Whether ranks keep their central shard between syncs, for ``world_size`` processes.

        ``keep_central=None`` drops it wherever that is exact: sharded (several processes), float32 sync and no
        outer step, the settings under which a sync needs no previous central value."""
        if self.keep_central_setting is not None:
            return self.keep_central_setting
        return not (self.shard_central and world_size > 1 and self.outer == OuterOptimizer.none
                    and self.sync_dtype == SyncDtype.float32)

    def interval_at(self, step: int) -> int:
        """Optimizer steps per round for a round that starts at ``step``."""
        if step < self.warm_start:
            return 1
        reached = [n for start, n in self.schedule.items() if start <= step]
        return reached[-1] if reached else self.sync_every

    def check(self, model: Any, world_size: int, max_steps: int | None = None) -> PartitionSpec:
        """Validate the settings against the model, world size and run length; ``ValueError`` before training."""
        if not isinstance(model, GPT) or not model.config.is_full:
            raise ValueError("TwIST needs a LightningModule whose `model` attribute is a full-size "
                             f"twist_lightning.GPT (got {type(model).__name__}); the model is not partitionable.")
        if self.variant == Variant.hybrid and world_size < 2:
            raise ValueError("twist.variant='hybrid' needs at least 2 processes (rank 0 masked, the others "
                             "physical). HINT: set trainer.devices=2, or use variant masked/true in one process.")
        if max_steps is not None and max_steps > 0 and self.warm_start >= max_steps:
            raise ValueError(f"twist.warm_start={self.warm_start} is not shorter than the run "
                             f"(trainer.max_steps={max_steps}), so TwIST would never start. HINT: use a warm start "
                             "shorter than the run, or twist=none for data-parallel training.")
        if self.keep_central_setting is False and world_size < 2:
            raise ValueError("twist.keep_central=false needs several processes (it drops each rank's shard of the "
                             "central model; one process keeps the one copy its masked workers restore from). "
                             "HINT: set trainer.devices >= 2, or twist.keep_central=true.")
        spec = PartitionSpec.from_config(model.config, common=self.common)
        sample_blueprints(spec, world_size * self.workers_per_process, self.n_sub, self.seed, 0)  # raises if impossible
        if not spec.split_layers:  # TwIST would silently train the full model on every worker
            raise ValueError(f"twist.common={self.common!r} keeps all {spec.n_layer} layers of this model whole, so "
                             "there is no layer to split into subnets. HINT: use twist.common=none, or a model with "
                             "more layers than common ones (model.n_layer).")
        return spec

    # ---- set-up ---------------------------------------------------------------------------------------------------
    def setup(self, model: GPT, rank: int = 0, world_size: int = 1, max_steps: int | None = None) -> GPT:
        """Make ``model`` the central model (rank 0's values on every rank) and return the model this rank trains.

        Masked ranks train ``model`` itself and keep a copy as the central model; physical ranks keep ``model`` as
        the central model and train a slice of it. A state loaded by :meth:`load_state_dict` sets the round here.
        Checks the settings first (:meth:`check`), so a bad one fails before any weight is touched.
        """
        self.rank, self.world_size = rank, world_size
        self.spec = self.check(model, world_size, max_steps)
        self.keep_central = self._keeps(world_size)
        if world_size > 1:
            for t in model.state_dict().values():  # what DistributedDataParallel's wrapper would have broadcast
                dist.broadcast(t, src=0)
        physical = self.physical_on(rank)
        sharded = self.shard_central and world_size > 1
        if sharded:  # the full values are here now (every rank has the broadcast model): take this rank's rows
            full = flatten_parameters(model)
            self.layout = Layout(model)
            self.plan = ShardPlan(self.layout, world_size)
            self.central = self.plan.take(full, rank)
            self.central_model = model if physical else _empty_shell(model)
            self._materialized = physical
        else:
            self.central_model = model if physical else copy.deepcopy(model)
            self.central = full = flatten_parameters(self.central_model)
            self.layout = Layout(self.central_model)
        if self._pending is not None:
            self.round, self.step_in_round = self._pending["round"], self._pending["step_in_round"]
            self.steps_done = self._pending.get("steps_done", 0)
        round_start = self.steps_done - self.step_in_round
        blueprints = self._draw(self.round, round_start)
        live = extract(model, blueprints[rank * self.workers_per_process], scale=self.scale) \
            if physical else model
        self.model = live
        self._live = full if sharded and not physical else flatten_parameters(live)
        self._start_round(blueprints, source=full)
        if sharded and physical:
            self.release()  # the full model's storage goes; the shard and the live slice remain
        self._drop_pending, self._shard_dropped, self._finite_when_dropped = not self.keep_central, False, True
        return live

    def bind(self, optimizers: Sequence[Optimizer]) -> None:
        """The optimizers over the live model's parameters; applies a loaded state's worker values and moments."""
        self.optimizers = list(optimizers)
        if self.optimizer_policy == OptimizerState.carry and not all(
                isinstance(o, torch.optim.Adam | torch.optim.AdamW) for o in self.optimizers):
            raise ValueError("twist.optimizer_state='carry' averages Adam moments, but the optimizer is "
                             f"{[type(o).__name__ for o in self.optimizers]}. HINT: use AdamW or optimizer_state=reset.")
        if self._pending is None or self.central is None:
            return
        first = self.rank * self.workers_per_process
        params = self.params()
        for k, w in enumerate(self.workers):
            saved = self._pending["workers"][first + k]
            w.values.copy_(saved["values"].to(w.values.device))
            w.optimizer_state = _restore_state(saved["optimizer"], params, w.values.device)
        buffer = self._pending.get("outer_buffer")
        if buffer is not None and self.plan is not None:
            buffer = self.plan.take(buffer, self.rank)
        self.outer_buffer = None if buffer is None else buffer.to(self.central.device, self.central.dtype)
        self.counter.bytes = self._pending.get("bytes_communicated", 0)
        self.counter.calls = self._pending.get("collective_calls", 0)
        self.counter.received = self._pending.get("bytes_received", 0)
        ranks = self._pending.get("rank_counters")  # per rank since sharding (rank 0's above, for older readers)
        if ranks and len(ranks) == self.world_size:
            self.counter.bytes, self.counter.calls, self.counter.received = ranks[self.rank]
        self._pending = None
        self.activate(0)

    def params(self) -> list[torch.Tensor]:
        """The optimizers' parameters in order (the keys of every worker's optimizer state)."""
        return [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]

    @property
    def _round_warm(self) -> bool:
        """Whether the current round is a warm-start (synchronous, full) round: it started before ``warm_start``."""
        return self.steps_done - self.step_in_round < self.warm_start

    def _draw(self, round: int, round_start: int) -> list[Blueprint]:
        # the warm start trains full subnets: data-parallel
        n_sub = 1.0 if round_start < self.warm_start else self.n_sub
        return sample_blueprints(self.spec, self.num_subnets, n_sub, self.seed, round)

    def _routes(self, blueprints: list[Blueprint]) -> tuple[list[dict], list[list], list]:
        """Every worker's parameter index for ``blueprints`` and, sharded, how they meet the shards: this rank's
        workers' routes to every owner, and every worker's route into this rank's shard (both ``[]`` unsharded)."""
        indices = [param_index(self.central_model.config, bp, self.central.device) for bp in blueprints]
        if self.plan is None:
            return indices, [], []
        first = self.rank * self.workers_per_process
        out = [[self.plan.route(indices[first + k], r) for r in range(self.world_size)]
               for k in range(self.workers_per_process)]
        return indices, out, [self.plan.route(index, self.rank) for index in indices]

    def _index_round(self, blueprints: list[Blueprint], routes: tuple | None = None) -> None:
        """Install ``blueprints`` with their :meth:`_routes` (``routes``: already computed for them)."""
        self.blueprints = blueprints
        self.all_indices, self._out_routes, self._in_routes = routes or self._routes(blueprints)

    def _start_round(self, blueprints: list[Blueprint], source: torch.Tensor | None = None,
                     received: list[list[torch.Tensor]] | None = None) -> None:
        """Give every local worker its new blueprint and its values: sliced from the full vector ``source``
        (default: the unsharded central model), or, sharded, the held vectors ``received`` from the owners (per
        local worker: values, then carried moments; values ``None``: already pasted into a masked worker's
        buffer)."""
        if self.blueprints is not blueprints:
            self._index_round(blueprints)
        device = self.central.device
        physical = self.physical_on(self.rank)
        first = self.rank * self.workers_per_process
        previous, self.workers = self.workers, []
        single = self.workers_per_process == 1
        for k in range(self.workers_per_process):
            bp, index = blueprints[first + k], self.all_indices[first + k]
            moments = None
            if received is None:
                src = self.central if source is None else source
                start = self.layout.gather_held(src, index) if physical else src
                values = self._live if single else torch.empty_like(start)
                values.copy_(start)
                if self.sync_dtype != SyncDtype.float32:  # what a sharded sync's owners would send back
                    values.copy_(values.to(self.sync_dtype.torch_dtype))
            else:  # sharded: the owners' rows of this worker's new subnet
                held, moments = received[k][0], received[k][1:] or None
                if physical:
                    values = self._live if single else held
                    if values is not held:
                        values.copy_(held)
                else:  # units outside the subnet keep stale values: the forward never reads them
                    values = self._live if single else previous[k].values
                    if held is not None:  # None: the sync pasted the new rows in place
                        self.layout.scatter_held(values, index, held)
            worker = Worker(bp, index, values, physical, self._initial_state(index, physical, moments))
            if not physical:
                self.model.set_subnet(list(bp.heads), list(bp.ffn), scale=self.scale)
                worker.subnet_cache = self.model.subnet_state
                if self.plan is None:
                    worker.mask = self.layout.held_mask(index, device)
            if self.plan is not None and self.sync_dtype != SyncDtype.float32:
                start = worker.held(self.layout)  # the reference its bf16 change is taken against
                # bf16 exactly (the start is the rounded central value): half the bytes of a float32 copy
                worker.start = start.to(self.sync_dtype.torch_dtype, copy=True)  # (never the live values)
            self.workers.append(worker)
        self.activate(0)

    def _initial_state(self, index: dict, physical: bool, moments: list[torch.Tensor] | None = None) -> dict:
        """A new worker's optimizer state: empty (``reset``), or sliced from the central moments (``carry``);
        sharded, from the held ``moments`` the owners sent (zero outside the subnet of a masked worker)."""
        state: dict = defaultdict(dict)
        if self.optimizer_policy != OptimizerState.carry or (self.central_moments is None and moments is None):
            return state
        step = torch.tensor(float(self.steps_done))
        sliced = {}
        if moments is not None:
            for key, held in zip(MOMENTS, moments):
                if physical:
                    sliced[key] = self.layout.split_held(held, index)
                else:
                    full = held.new_zeros(self.layout.numel)
                    self.layout.scatter_held(full, index, held)
                    sliced[key] = self.layout.views(full)
        rounded = self.sync_dtype != SyncDtype.float32  # the moments travel back rounded (sharded: they did)
        for key, flat in ({} if moments is not None else self.central_moments).items():
            part = self.layout.gather_held(flat, index) if physical else flat.clone()
            if rounded:
                part.copy_(part.to(self.sync_dtype.torch_dtype))
            sliced[key] = self.layout.split_held(part, index) if physical else self.layout.views(part)
        for i, p in enumerate(self.model.parameters()):  # the live model, in layout order
            state[p] = {"step": step.clone(), **{key: sliced[key][i].clone() for key in MOMENTS}}
        return state

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
    def activate(self, k: int) -> None:
        """Make worker ``k`` live: its values in the model, its subnet, its optimizer state."""
        if self._drop_pending and k == 0:  # a step starts: keep_central=False needs the shard again only at a sync
            self._drop()
        w = self.workers[k]
        if self.workers_per_process > 1:
            self._live.copy_(w.values)
        if not w.physical:
            self.model.subnet_state = w.subnet_cache
        for opt in self.optimizers:
            opt.state = w.optimizer_state
        self.active = k

    def deactivate(self, k: int) -> None:
        """After worker ``k``'s step: restore the units it does not hold, and keep its values."""
        w = self.workers[k]
        if w.mask is not None:  # units this worker does not hold go back to their central values (unsharded)
            torch.where(w.mask, self._live, self.central, out=self._live)
        if self.workers_per_process > 1:
            w.values.copy_(self._live)

    def end_step(self) -> bool:
        """Count one optimizer step of every local worker; sync and resample at a round's end (returns whether)."""
        self.step_in_round += 1
        self.steps_done += 1
        if self.step_in_round >= self.interval_at(self.steps_done - self.step_in_round):
            self.sync()
            return True
        return False

    def finish(self) -> None:
        """Fold a last partial round into the central model, so no training is lost."""
        if self.central is not None and self.step_in_round > 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """Average every parameter over its holders into the central model, then resample.

        What the round no longer needs is freed first, so the sync's buffers do not sit beside it: the live
        model's gradients (the round's last step has used them, every step makes new ones) and, with
        ``optimizer_state="reset"``, the workers' Adam moments (the next round starts from zero anyway; at GPT-2
        124M twice the held values). Sharded, carried moments are freed once they are packed."""
        if self.model is not None:
            for p in self.model.parameters():
                p.grad = None
        if self.optimizer_policy == OptimizerState.reset:
            self._free_optimizer_state()
        self._drop_pending = False  # a step-start drop must not fire inside the sync (its _start_round activates)
        if self.plan is not None:
            self._sync_sharded()
            return
        clock = _PhaseClock()
        carry = self.optimizer_policy == OptimizerState.carry
        local = [w.held(self.layout) for w in self.workers]
        n_held = local[0].numel()
        if carry:  # values and Adam moments travel in the same all_gather: [values | exp_avg | exp_avg_sq]
            local = [torch.cat([v, *(self._held_moments(w, key) for key in MOMENTS)])
                     for w, v in zip(self.workers, local)]
        if self.sync_dtype != SyncDtype.float32:
            local = [self._encode(w, h) for w, h in zip(self.workers, local)]
        clock("pack")
        received = exchange_held(local, self.counter)
        self.sync_peak_bytes = 0
        self._note_peak(*local, *received)  # the held copies and what the all_gather delivered
        clock("exchange")
        if self.sync_dtype != SyncDtype.float32:
            received = [self._decode(s, h) for s, h in enumerate(received)]
        parts = [h.split(n_held) for h in received]  # per worker: values(, moments...)
        self._aggregate(self.layout, parts, self.all_indices)
        clock("average")
        self.round += 1
        self.step_in_round = 0
        blueprints = self._draw(self.round, self.steps_done)
        clock("resample")
        self._start_round(blueprints)
        clock("start_round")
        self.sync_phases = clock.phases

    def _aggregate(self, layout: Layout, parts: list, indices: list[dict], scratch: torch.Tensor | None = None
                   ) -> None:
        """Average every worker's values (``parts[s][0]``) over their holders into ``self.central`` laid out as
        ``layout`` (the whole model, or this rank's shard), take the outer step, and average carried moments
        (``parts[s][1:]``) likewise. ``scratch``: a spent buffer the averages may use (see
        :func:`average_over_holders`)."""
        outer = self.outer != OuterOptimizer.none and not self._round_warm  # the warm start averages plainly
        before = self.central.clone() if outer else None
        average_over_holders(self.central, layout, [p[0] for p in parts], indices, buffer=scratch)
        if before is not None:
            self._outer_step(before)
        if self.optimizer_policy == OptimizerState.carry:
            if self.central_moments is None:
                self.central_moments = {key: torch.zeros_like(self.central) for key in MOMENTS}
            for i, key in enumerate(MOMENTS, start=1):
                average_over_holders(self.central_moments[key], layout, [p[i] for p in parts], indices,
                                     buffer=scratch)

    def _to_owners(self, clock: _PhaseClock, out_2: list[int], in_2: list[int], sync: bool = True) -> tuple:
        """Phase 1 of a sharded sync: every local worker's pieces to their owners, and this rank's shard of the
        central model (made anew when ``keep_central=False`` dropped it) set to the holders' average. ``out_2`` /
        ``in_2``: phase 2's sizes, which the buffers are made big enough for (zeros: no phase 2). Returns the spent
        buffers phase 2 reuses: the send buffer (the averages' scratch and phase 2's receive buffer), and phase 1's
        received pieces with their buffer (phase 2's send buffer). ``sync``: a training sync, not a look between
        syncs: the exchange counts in ``self.counter``, and carried moments are freed once packed (the next
        round's come from the owners)."""
        carry = self.optimizer_policy == OptimizerState.carry
        bf16 = self.sync_dtype != SyncDtype.float32
        wire = self.sync_dtype.torch_dtype if bf16 else self.central.dtype
        W, me, wpp = self.world_size, self.rank, self.workers_per_process
        channels, others = self._channels(), self._others
        made = self._shard_dropped
        if made:  # keep_central=False: the holders' average needs no previous value (every unit is held)
            self.central = self.central.new_empty(self.plan.numel(me))
        counter = self.counter if sync else None
        # phase 1: every local worker's pieces to their owners
        local = []  # per local worker: (vector, full-size?) per channel
        for w in self.workers:
            if bf16:
                # (a float32 copy of the bf16 start: a mixed-dtype subtraction is several times slower on CPU)
                chans = [(w.start.to(self.central.dtype, copy=True).sub_(w.held(self.layout)).to(wire), False)]
            else:  # a masked worker's values are read from its full buffer
                chans = [(w.values, not w.physical)]
            if carry:  # moments travel as they are (see _reference)
                chans += [(self._held_moments(w, key).to(wire), False) for key in MOMENTS]
            local.append(chans)

        out_1, in_1 = self._out_sizes(self._out_routes), self._in_sizes(self._in_routes)
        # send (phase 1) -> the averages' scratch -> receive (phase 2); receive (phase 1) -> send (phase 2). The
        # pieces a rank owns itself never travel: they are read per parameter from the workers' values (views where
        # a piece is a run of rows) and, in phase 2, written straight from the shard, so they need no buffer.
        scratch = not bf16  # a bf16 buffer is too narrow to be the averages' float32 scratch
        largest = max(shape.numel() for shape in self.plan.shards[me].shapes) if scratch else 0
        new = functools.partial(torch.empty, dtype=wire, device=self.central.device)
        send_buffer = new(max(sum(others(out_1)), sum(others(out_2)), largest))
        recv_buffer = new(max(sum(others(in_1)), sum(others(in_2))))
        send = send_buffer[:sum(others(out_1))]
        at = 0
        for r in range(W):  # rank-major, as all_to_all splits
            for k, w in enumerate(self.workers):
                route = self._out_routes[k][r]
                for vector, full in local[k] if r != me else ():
                    cut(self.layout, vector, w.index, route, send[at:at + route.numel], full=full)
                    at += route.numel
        own = [[own_pieces(self.layout, vector, w.index, self._out_routes[k][me], full=full)
                for vector, full in local[k]] for k, w in enumerate(self.workers)]
        copies = [t for chans in own for pieces in chans for t in pieces if t._base is None]  # not views
        if sync:  # (a look between syncs leaves the last sync's figure alone)
            self.sync_peak_bytes = 0
            self._note_peak(send_buffer, recv_buffer, *copies, *(vector for chans in local for vector, _ in chans))
        del local
        if sync and carry:
            self._free_optimizer_state()
        clock("pack")
        recv = all_to_all(send, others(out_1), others(in_1), me, counter, out=recv_buffer)
        clock("exchange")
        spare = send_buffer  # made big enough for the scratch and phase 2's receive
        del send, send_buffer
        shard = self.plan.shards[me]
        parts, at = [], 0
        for q in range(W):  # rank-major, as sent
            for k in range(wpp):
                route = self._in_routes[q * wpp + k]
                if q == me:
                    chans = own[k]
                else:  # (in the wire dtype: the average reads each piece in float32 once, no copy here)
                    chans = []
                    for _ in range(channels):
                        chans.append(shard.split_held(recv[at:at + route.numel], route.index))
                        at += route.numel
                if bf16:  # undo the change against the round's start, which this rank owns
                    chans[0] = [torch.sub(ref, change.to(ref.dtype))
                                for ref, change in zip(shard.select_held(self.central, route.index), chans[0])]
                parts.append(chans)
        del own
        self._aggregate(shard, parts, [route.index for route in self._in_routes], scratch=spare if scratch else None)
        if sync:
            self._note_peak(spare, recv_buffer, *copies, *(t for chans in parts for pieces in chans for t in pieces))
        del parts, copies
        if made:  # averaged: the shard holds values now (not before, should an exchange fail)
            self._shard_dropped = False
        clock("average")
        return spare, recv, recv_buffer

    def _channels(self) -> int:
        """Vectors a worker sends per sync: its values, then (``carry``) each Adam moment."""
        return 1 + (len(MOMENTS) if self.optimizer_policy == OptimizerState.carry else 0)

    def _out_sizes(self, routes: list[list]) -> list[int]:
        """Per rank: what this rank's workers send it, every channel."""
        wpp = self.workers_per_process
        return [self._channels() * sum(routes[k][r].numel for k in range(wpp)) for r in range(self.world_size)]

    def _in_sizes(self, routes: list) -> list[int]:
        """Per rank: what its workers send this rank, every channel."""
        wpp = self.workers_per_process
        return [self._channels() * sum(routes[q * wpp + k].numel for k in range(wpp)) for q in range(self.world_size)]

    def _others(self, sizes: list[int]) -> list[int]:
        """An exchange's splits: a rank's own pieces skip it, so its split is 0."""
        return [0 if r == self.rank else n for r, n in enumerate(sizes)]

    def _sync_sharded(self) -> None:
        """:meth:`sync` on a sharded central model: held rows to their owners, average there, new rows back.

        Each phase is one ``all_to_all``; the buffers hold, per destination rank and per worker, every channel's
        pieces (channel 0 the values, then the carried moments), in the order both sides derive from the routes.
        A masked worker's values are cut from and pasted into its full-size buffer in place (no held copy), a
        rank's pieces of its own shard skip the exchange and any buffer (read per parameter from the workers'
        values, views where they are runs of rows; written back straight from the shard), and each phase hands its
        spent buffers on (phase 1's send buffer is the averaging scratch and phase 2's receive buffer; phase 1's
        receive buffer is phase 2's send buffer), so a sync makes two buffers rather than six, each once: the next
        round's sizes are known before phase 1, so each is made big enough for every phase it serves.
        """
        clock = _PhaseClock()
        carry = self.optimizer_policy == OptimizerState.carry
        bf16 = self.sync_dtype != SyncDtype.float32
        wire = self.sync_dtype.torch_dtype if bf16 else self.central.dtype
        W, me, wpp = self.world_size, self.rank, self.workers_per_process
        channels, others = self._channels(), self._others
        # The next round's blueprints depend on the seed and the round only, so phase 2's sizes are known now and
        # each buffer is made once, big enough for every phase it serves: a buffer made anew when a later phase
        # outgrows it costs its page faults, on a virtual machine most of an exchange's time (measured here: a
        # 156 MB all_to_all takes 0.18 s into a touched buffer, 0.3-1.3 s into a fresh one).
        blueprints = self._draw(self.round + 1, self.steps_done)
        routes = self._routes(blueprints)
        out_2, in_2 = self._out_sizes(routes[1]), self._in_sizes(routes[2])
        spare, recv, recv_buffer = self._to_owners(clock, out_2, in_2)
        shard, dtype = self.plan.shards[me], self.central.dtype
        self.release()  # a gathered central model is stale now
        self.round += 1
        self.step_in_round = 0
        self._index_round(blueprints, routes)
        clock("resample")
        # phase 2: every owner's rows of every worker's new subnet, to the worker's rank
        sources = [self.central] + ([self.central_moments[key] for key in MOMENTS] if carry else [])
        send = reuse(recv_buffer, sum(others(in_2)), wire)  # phase 1's pieces are averaged: spent
        del recv, recv_buffer
        at = 0
        for q in range(W):
            for k in range(wpp if q != me else 0):
                route = self._in_routes[q * wpp + k]
                for source in sources:
                    piece = send[at:at + route.numel]
                    if bf16:  # rounded on the way: the worker's start, which its next change is taken against
                        piece.copy_(shard.gather_held(source, route.index))
                    else:
                        shard.gather_held(source, route.index, out=piece)
                    at += route.numel
        clock("pack_back")
        recv = all_to_all(send, others(in_2), others(out_2), me, self.counter, out=spare)
        clock("exchange_back")
        del send, spare
        n_held = sum(s.numel() for s in self.layout.held_shapes(self.all_indices[me * wpp]))
        physical = self.physical_on(me)

        # a physical worker's new values go into a held vector (a single one's is the live buffer itself); a
        # masked worker's straight into its own full buffer (None: already in place)
        def target(c: int) -> torch.Tensor | None:
            if c == 0 and not physical:
                return None
            return self._live if c == 0 and wpp == 1 else recv.new_empty(n_held, dtype=dtype)

        received = [[target(c) for c in range(channels)] for _ in range(wpp)]
        at = 0
        for r in range(W):
            for k in range(wpp):
                route, index = self._out_routes[k][r], self.all_indices[me * wpp + k]
                for c in range(channels):
                    if r == me:  # this rank's own rows, straight from its shard (rounded as the wire rounds)
                        piece = shard.select_held(sources[c], route.index)
                        if bf16:
                            piece = [t.to(wire) for t in piece]
                    else:
                        piece = recv[at:at + route.numel]
                        at += route.numel
                    if received[k][c] is None:
                        paste(self.layout, self.workers[k].values, index, route, piece, full=True)
                    else:
                        paste(self.layout, received[k][c], index, route, piece)
        self._note_peak(recv, *(t for chans in received for t in chans))
        del recv
        clock("paste")
        self._start_round(blueprints, received=received)
        clock("start_round")
        self._drop_pending = not self.keep_central
        self.sync_phases = clock.phases

    def _free_optimizer_state(self) -> None:
        """Empty every local worker's optimizer state (the optimizers' ``state`` is the active worker's dict)."""
        for w in self.workers:
            w.optimizer_state.clear()
        for opt in self.optimizers:
            opt.state.clear()

    def _note_peak(self, *temporaries: torch.Tensor | None) -> None:
        """Raise ``sync_peak_bytes`` to what is alive now: the sync's ``temporaries`` and what the rank keeps (the
        live parameters and gradients, every local worker's values, optimizer state and round-start reference, the
        central shard and moments, the outer state). Counted by storage, so a view adds nothing to its base."""
        params = self.params()
        kept = [*params, *(p.grad for p in params), self._live, *(w.values for w in self.workers),
                *(w.start for w in self.workers),
                *(v for w in self.workers for state in w.optimizer_state.values() for v in state.values()),
                *(v for opt in self.optimizers for state in opt.state.values() for v in state.values()),
                self.central, *(self.central_moments or {}).values(), self.outer_buffer]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                    for t in (*kept, *temporaries) if torch.is_tensor(t) and t.dim() > 0}
        self.sync_peak_bytes = max(self.sync_peak_bytes, sum(storages.values()))

    # ---- the whole central model (sharded: on demand) ---------------------------------------------------------------
    def materialize(self, keep: bool = False) -> GPT:
        """The central model with its current values (sharded: gathered from every rank's rows, a collective every
        rank must call; it stays whole, as it was then, until :meth:`release` or the next sync). ``keep``: for good
        (after fit, when the module holds it), so neither :meth:`release` nor a later sync drops its storage."""
        self._kept = self._kept or keep
        if self.plan is not None and not self._materialized:
            preview = self._shard_dropped
            if preview:  # keep_central=False between syncs: the model a sync would make now, nothing resampled
                no_phase_2 = [0] * self.world_size
                self._to_owners(_PhaseClock(), no_phase_2, no_phase_2, sync=False)
            full = self.plan.gather(self.central, self.rank)
            if preview:
                self._drop(after_sync=False)
            for p, view in zip(self.central_model.parameters(), self.layout.views(full)):
                p.data = view
            self._materialized = True
        return self.central_model

    def _drop(self, after_sync: bool = True) -> None:
        """``keep_central=False``: free this rank's shard of the central model (and of the carried moments)."""
        self._drop_pending = False
        if self._shard_dropped:
            return
        if after_sync:  # the divergence guard asks about the last sync's model
            self._finite_when_dropped = bool(torch.isfinite(self.central).all())
        self.central = self.central.new_empty(0)
        self.central_moments = None
        self._shard_dropped = True

    def central_is_finite(self) -> bool:
        """Whether every central value is finite; sharded, on every rank's rows (a collective: every rank calls it,
        so all of them stop together instead of one stopping while the others wait in the next sync). With
        ``keep_central=False`` between syncs: whether the last sync's model was."""
        finite = self._finite_when_dropped if self._shard_dropped else bool(torch.isfinite(self.central).all())
        if self.plan is not None:
            flag = torch.tensor([1.0 if finite else 0.0], device=self.central.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item() > 0)
        return finite

    @property
    def materialized(self) -> bool:
        """Whether ``central_model`` holds the central values now (always, unsharded)."""
        return self.plan is None or self._materialized

    def release(self) -> None:
        """Sharded: drop the whole central model's storage again (the shard keeps the values). A no-op unsharded."""
        if self.plan is not None and self._materialized and not self._kept:
            for p in self.central_model.parameters():
                p.data = p.data.new_empty(0)
            self._materialized = False

    def _reference(self, index: dict) -> torch.Tensor:
        """What every rank knows of a worker's held vector before the exchange, laid out as :meth:`sync` lays out
        the worker's own: the central values on its blueprint, and zeros for carried moments. Moments travel as
        they are (bf16's 8 bits are relative to each moment, and a moment is re-estimated every step rather than
        accumulated as the weights are), which also keeps a resumed run's rounding the same: the central moments
        are not part of the resume state."""
        values = self.layout.gather_held(self.central, index)
        if self.optimizer_policy != OptimizerState.carry:
            return values
        return torch.cat([values, values.new_zeros(values.numel() * len(MOMENTS))])

    def _encode(self, w: Worker, held: torch.Tensor) -> torch.Tensor:
        """A worker's held vector as its change against its round's start (the reference rounded, as the worker
        received it), in the sync dtype."""
        wire = self.sync_dtype.torch_dtype
        return (self._reference(w.index).to(wire).to(held.dtype) - held).to(wire)

    def _decode(self, s: int, change: torch.Tensor) -> torch.Tensor:
        """Worker ``s``'s held vector back in float32 from its rounded change (every rank knows every index)."""
        return self._reference(self.all_indices[s]) - change.to(self.central.dtype)

    def _held_moments(self, w: Worker, key: str) -> torch.Tensor:
        """One Adam moment of a worker as a held vector (zeros where a parameter has no state yet)."""
        flat = torch.cat([w.optimizer_state[p][key].reshape(-1) if key in w.optimizer_state.get(p, {})
                          else torch.zeros(p.numel(), device=p.device, dtype=p.dtype) for p in self.model.parameters()])
        return flat if w.physical else self.layout.gather_held(flat, w.index)

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

    # ---- resume state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue mid-round: all workers' values and optimizer states.

        A collective with several processes (``all_gather_object``): every rank must call it.
        """
        params = self.params()
        local = [{"values": w.values.detach().cpu().clone(), "optimizer": _cpu_state(w.optimizer_state, params)}
                 for w in self.workers]
        counters = [[self.counter.bytes, self.counter.calls, self.counter.received]]
        if self.world_size > 1:  # (sharded, the ranks' counts differ: each rank's are kept)
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, (local, counters[0]))
            local = [w for rank in gathered for w in rank[0]]
            counters = [rank[1] for rank in gathered]
        buffer = self.outer_buffer
        if buffer is not None and self.plan is not None:  # saved whole, so any world size can resume it
            buffer = self.plan.gather(buffer, self.rank)
        return {"round": self.round, "step_in_round": self.step_in_round, "steps_done": self.steps_done,
                "workers": local,
                "outer_buffer": None if buffer is None else buffer.detach().cpu().clone(),
                # keep_central=False mid-round: the checkpoint's central model is a look at the holders' average,
                # not the round's start that an outer step or a bf16 sync subtracts from
                "central_at_round_start": not self._shard_dropped,
                "bytes_communicated": self.counter.bytes, "collective_calls": self.counter.calls,
                "bytes_received": self.counter.received, "rank_counters": counters}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Keep a saved state; :meth:`setup` applies its round, :meth:`bind` its workers' values and moments."""
        missing = {"round", "step_in_round", "workers"} - set(state)
        if missing:
            raise ValueError(f"a TwIST resume state needs the keys {sorted(missing)}; this checkpoint's TwIST state "
                             "is incomplete. HINT: resume from a checkpoint written by a TwIST run.")
        needs = [what for bad, what in ((self.outer != OuterOptimizer.none, f"twist.outer={self.outer.value!r}"),
                                        (self.sync_dtype != SyncDtype.float32,
                                         f"twist.sync_dtype={self.sync_dtype.value!r}")) if bad]
        if not state.get("central_at_round_start", True) and needs:
            raise ValueError(f"this checkpoint was written mid-round (step {state['step_in_round']} of a round) by a "
                             "run that kept no central values between syncs (twist.keep_central false, the default "
                             "with outer=none and a float32 sync), so its central model is the holders' average at "
                             f"that step, not the round's start that {' and '.join(needs)} needs at the next sync. "
                             "HINT: resume it with twist.outer=none and twist.sync_dtype=float32, or from a "
                             "checkpoint written at a sync (every_n_train_steps a multiple of twist.sync_every).")
        self._pending = dict(state)


def _empty_shell(model: GPT) -> GPT:
    """A copy of ``model`` whose parameters hold no storage (tied ones stay tied): the sharded central model's
    container until :meth:`TwISTCore.materialize` fills it."""
    memo = {id(p): torch.nn.Parameter(p.detach().new_empty(0), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def _cpu_state(state: dict, params: list[torch.Tensor]) -> dict[int, dict[str, Any]]:
    """An optimizer state keyed by parameter, re-keyed by the parameter's position (pickles across processes)."""
    return {i: {k: (v.detach().cpu().clone() if torch.is_tensor(v) else v) for k, v in state[p].items()}
            for i, p in enumerate(params) if p in state}


def _restore_state(saved: dict[int, dict[str, Any]], params: list[torch.Tensor], device: torch.device) -> dict:
    state: dict = defaultdict(dict)
    for i, s in saved.items():
        state[params[i]] = {k: (v.to(device) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in s.items()}
    return state
