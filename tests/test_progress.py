"""Step-bounded runs show ``Step s/N`` over N optimizer steps, never Lightning's ``Epoch 2/-2``."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from twist_lightning.progress import StepRichProgressBar, StepTQDMProgressBar, step_progress_bar


def fit(bar, **kw) -> L.Trainer:
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[bar], **kw)
    trainer.fit(BoringModel())  # 64 batches per epoch
    return trainer


def test_tqdm_bar_counts_steps_across_epochs():
    bar = StepTQDMProgressBar()
    fit(bar, max_steps=150, max_epochs=-1)  # three epochs' worth of batches
    assert bar.train_progress_bar.desc.startswith("Step 150/150")
    assert bar.train_progress_bar.total == 150 and bar.train_progress_bar.n == 150


def test_rich_bar_counts_steps_and_never_shows_a_negative_epoch():
    pytest.importorskip("rich")
    bar = StepRichProgressBar()
    fit(bar, max_steps=70, max_epochs=-1)
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.description == "Step 70/70" and "-" not in task.description
    assert task.total == 70 and task.completed == 70


def test_epoch_bounded_runs_keep_the_epoch_title():
    bar = StepTQDMProgressBar()
    fit(bar, max_epochs=2)
    assert bar.train_progress_bar.desc.startswith("Epoch 1/1") and bar.train_progress_bar.total == 64
    assert isinstance(step_progress_bar(), (StepRichProgressBar, StepTQDMProgressBar))
