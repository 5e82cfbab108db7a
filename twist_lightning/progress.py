"""Progress bars that count optimizer steps in step-bounded runs (``max_epochs=-1``, ``max_steps=N``).

Lightning's bars count batches per epoch and title themselves ``Epoch e/max_epochs-1``: with ``max_epochs=-1`` the
Rich bar shows ``Epoch 2/-2`` and neither says how far the run is. In a step-bounded run these bars show
``Step s/N`` over a bar of ``N`` optimizer steps; in an epoch-bounded run they are Lightning's bars unchanged.

Example::

    trainer = L.Trainer(max_steps=400, callbacks=[step_progress_bar()])
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import _RICH_AVAILABLE
from typing_extensions import override

__all__ = ["StepRichProgressBar", "StepTQDMProgressBar", "step_description", "step_progress_bar"]


def _step_bounded(trainer: pl.Trainer) -> bool:
    return trainer.max_steps > 0 and trainer.max_epochs in (None, -1)


def step_description(trainer: pl.Trainer) -> str:
    """``Step s/N`` for a step-bounded run, else Lightning's ``Epoch e/E``."""
    if _step_bounded(trainer):
        return f"Step {trainer.global_step}/{trainer.max_steps}"
    return f"Epoch {trainer.current_epoch}/{trainer.max_epochs - 1}"


class StepTQDMProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` over optimizer steps in step-bounded runs (see the module docstring)."""

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        if _step_bounded(trainer):
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.n = trainer.global_step  # a resumed run starts part-way
        self.train_progress_bar.set_description(step_description(trainer))

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not _step_bounded(trainer):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        bar = self.train_progress_bar
        step = trainer.global_step
        if bar is not None and not bar.disable and (step % max(self.refresh_rate, 1) == 0 or step == bar.total):
            bar.n = trainer.global_step
            bar.set_description(step_description(trainer), refresh=False)
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes


class StepRichProgressBar(RichProgressBar):
    """``RichProgressBar`` over optimizer steps in step-bounded runs (see the module docstring)."""

    def _show_steps(self, trainer: pl.Trainer) -> None:
        if self.progress is not None and self.train_progress_bar_id is not None:
            extra = {"total": trainer.max_steps, "completed": trainer.global_step} if _step_bounded(trainer) else {}
            self.progress.update(self.train_progress_bar_id, description=step_description(trainer), **extra)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._show_steps(trainer)
        self.refresh()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)  # counts batches, then:
        self._show_steps(trainer)
        self.refresh()


def step_progress_bar(**kwargs: Any) -> StepRichProgressBar | StepTQDMProgressBar:
    """The bar Lightning would pick (Rich when installed, else tqdm), counting steps in step-bounded runs."""
    return StepRichProgressBar(**kwargs) if _RICH_AVAILABLE else StepTQDMProgressBar(**kwargs)
