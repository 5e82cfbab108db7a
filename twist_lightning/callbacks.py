"""``SubnetResampling``: when TwIST resamples, what it logs, and its state in checkpoints.

The strategy does the mechanics (averaging and slicing); this callback is the policy a user tunes and the piece
Lightning checkpoints: a resumed run continues the same blueprint sequence, mid-round included.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from twist_lightning.strategy import TwISTStrategy


class SubnetResampling(Callback):
    """Resample TwIST subnets every ``every_n_steps`` optimizer steps and log ``twist/*`` metrics.

    Args:
        every_n_steps: steps between syncs; ``None`` keeps the strategy's ``sync_every``.
        schedule: ``{from_step: every_n_steps}``, e.g. ``{0: 5, 1000: 15}`` to sync often early in training and
            less later; the interval of the largest ``from_step`` reached applies. Overrides ``every_n_steps``.
        log_every_n_steps: how often to log ``twist/round``, ``twist/units_per_worker``, ``twist/coverage`` and
            ``twist/bytes_per_step``.

    Raises:
        ValueError: on a bad setting, or if the trainer's strategy is not a ``TwISTStrategy``.

    Example::

        trainer = L.Trainer(strategy=TwISTStrategy(variant="masked"), callbacks=[SubnetResampling(every_n_steps=15)])
    """

    def __init__(self, every_n_steps: int | None = None, log_every_n_steps: int = 10,
                 schedule: dict[int, int] | None = None) -> None:
        checks = [("every_n_steps", every_n_steps), ("log_every_n_steps", log_every_n_steps)]
        checks += [(f"schedule[{step}]", n) for step, n in (schedule or {}).items()]
        for name, value in checks:
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"SubnetResampling({name}={value!r}): use an integer >= 1.")
        if schedule is not None and (not schedule or any(not isinstance(k, int) or k < 0 for k in schedule)):
            raise ValueError(f"SubnetResampling(schedule={schedule!r}): use {{from_step: interval}} with steps >= 0.")
        self.every_n_steps = every_n_steps
        self.schedule = dict(sorted(schedule.items())) if schedule else None
        self.log_every_n_steps = log_every_n_steps

    def _strategy(self, trainer: pl.Trainer) -> TwISTStrategy:
        if not isinstance(trainer.strategy, TwISTStrategy):
            raise ValueError(f"SubnetResampling needs Trainer(strategy=TwISTStrategy(...)) or strategy='twist'; "
                             f"got {type(trainer.strategy).__name__}.")
        return trainer.strategy

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # runs before Lightning restores callback state and before the strategy sets up, see load_state_dict
        strategy = self._strategy(trainer)
        self._trainer_ref = trainer
        if self.every_n_steps is not None:
            strategy.sync_every = self.every_n_steps

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx) -> None:
        if self.schedule is not None:
            reached = [n for step, n in self.schedule.items() if step <= trainer.global_step]
            if reached:
                self._strategy(trainer).sync_every = reached[-1]

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        strategy = self._strategy(trainer)
        if trainer.global_step % self.log_every_n_steps:
            return
        spec, worker = strategy.spec, strategy.workers[0]
        held = sum(len(h) + len(f) for h, f in zip(worker.blueprint.heads, worker.blueprint.ffn))
        full = spec.n_layer * (spec.n_head + spec.ffn_groups)
        pl_module.log_dict({
            "twist/round": float(strategy.round),
            "twist/units_per_worker": held / full,
            "twist/coverage": strategy.coverage(),
            "twist/bytes_per_step": strategy.counter.bytes / max(trainer.global_step, 1),
        }, on_step=True, on_epoch=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer_ref
        state: dict[str, Any] = {"every_n_steps": self.every_n_steps}
        if trainer is not None and isinstance(trainer.strategy, TwISTStrategy) and trainer.strategy.workers:
            state["strategy"] = trainer.strategy.worker_state()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.every_n_steps = state_dict.get("every_n_steps", self.every_n_steps)
        trainer = self._trainer_ref
        if "strategy" in state_dict and trainer is not None and isinstance(trainer.strategy, TwISTStrategy):
            trainer.strategy.load_worker_state(state_dict["strategy"])

    _trainer_ref: pl.Trainer | None = None
