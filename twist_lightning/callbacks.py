"""``SubnetResampling``: TwIST's ``twist/*`` metrics and its resume state in checkpoints.

The strategy's core owns the algorithm and the sync interval (``TwISTStrategy(sync_every=..., schedule=...)``);
this callback is the piece Lightning calls on every rank when it writes a checkpoint, so it puts the core's resume
state there (``checkpoint["twist"]``) and a resumed run continues the same blueprint sequence, mid-round included.
``TwISTStrategy`` adds one to the trainer when none is given.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from twist_lightning.strategy import CHECKPOINT_KEY, TwISTStrategy


class SubnetResampling(Callback):
    """Log ``twist/*`` metrics and write TwIST's resume state into every checkpoint.

    Args:
        log_every_n_steps: how often to log ``twist/round``, ``twist/units_per_worker``, ``twist/coverage`` and
            ``twist/bytes_per_step``.

    The sync interval is the strategy's: ``TwISTStrategy(sync_every=15)`` or ``TwISTStrategy(schedule={0: 5,
    1000: 15})`` (``every_n_steps`` and ``schedule`` here moved there in 0.2, and are refused with that hint).

    Raises:
        ValueError: on a bad setting, or if the trainer's strategy is not a ``TwISTStrategy``.

    Example::

        trainer = L.Trainer(strategy=TwISTStrategy(variant="masked", sync_every=15), callbacks=[SubnetResampling()])
    """

    def __init__(self, log_every_n_steps: int = 10, *, every_n_steps: Any = None, schedule: Any = None) -> None:
        for name, value in (("every_n_steps", every_n_steps), ("schedule", schedule)):
            if value is not None:
                key = "sync_every" if name == "every_n_steps" else "schedule"
                raise ValueError(f"SubnetResampling({name}={value!r}): the sync interval belongs to the strategy now. "
                                 f"HINT: use TwISTStrategy({key}={value!r}) (twist.{key} in Hydra).")
        if isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ValueError(f"SubnetResampling(log_every_n_steps={log_every_n_steps!r}): use an integer >= 1.")
        self.log_every_n_steps = log_every_n_steps

    @staticmethod
    def _strategy(trainer: pl.Trainer) -> TwISTStrategy:
        if not isinstance(trainer.strategy, TwISTStrategy):
            raise ValueError(f"SubnetResampling needs Trainer(strategy=TwISTStrategy(...)) or strategy='twist'; "
                             f"got {type(trainer.strategy).__name__}.")
        return trainer.strategy

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._strategy(trainer)  # fail before any work with another strategy

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
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # every rank builds the checkpoint dict (rank 0 writes it), so the core's all_gather may run here
        state = self._strategy(trainer).twist_state_dict()
        if state is not None:
            checkpoint[CHECKPOINT_KEY] = state
