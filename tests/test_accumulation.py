"""Gradient accumulation with TwIST's virtual workers: each worker accumulates over its own rows of every
micro-batch (``accumulation.py`` and ``TwISTStrategy.handles_gradient_accumulation``)."""

from __future__ import annotations

import os
from collections import Counter
from datetime import timedelta

import lightning as L
import pytest
import torch

import twist_lightning  # noqa: F401  (registers "twist")
from twist_lightning import TwISTLitModule, TwISTStrategy
from twist_lightning.accumulation import GradAccumulators
from twist_lightning.model import GPTConfig
from test_strategy import SHAPE, assert_same, free_port, loader, params


class Recording(TwISTLitModule):
    """Records every whole micro-batch and, per training step, which virtual worker ran which of its rows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.micro_batches: list[torch.Tensor] = []
        self.seen: list[tuple[int, int, torch.Tensor]] = []  # (micro-batch index, worker, rows it trained on)

    def on_train_batch_start(self, batch, batch_idx):
        self.micro_batches.append(batch[0].clone())  # before the strategy hands each worker its rows

    def training_step(self, batch, batch_idx):
        self.seen.append((len(self.micro_batches) - 1, self.trainer.strategy.core.active, batch[0].clone()))
        return super().training_step(batch, batch_idx)


def make(seed=0) -> Recording:
    torch.manual_seed(seed)
    # plain SGD with no weight decay: the sum of two half-batch gradients is the full batch's gradient
    return Recording(GPTConfig(**SHAPE), lr=0.5, warmup_steps=2, decay_steps=20, optimizer="sgd", weight_decay=0.0)


def fit(module, variant, accumulate, batch_size, max_steps, devices=1, workers=4):
    if devices > 1:
        os.environ["MASTER_PORT"] = str(free_port())
    strategy = TwISTStrategy(variant=variant, n_sub=2, common="none", sync_every=2, workers_per_process=workers,
                             timeout=timedelta(seconds=60), start_method="spawn" if devices > 1 else "popen")
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=max_steps,
                        accumulate_grad_batches=accumulate, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader(batch_size))
    return trainer


def test_accumulators_park_and_restore_each_workers_sum():
    p = torch.nn.Parameter(torch.zeros(3))
    acc = GradAccumulators(workers=2)
    for scale in (1.0, 2.0):  # two micro-batches
        for k in range(2):
            acc.load(k, [p])
            (p * (k + 1) * scale).sum().backward()
            acc.save(k, [p])
            assert p.grad is None
    assert acc.pending()
    acc.load(0, [p])
    torch.testing.assert_close(p.grad, torch.full((3,), 3.0))  # 1 + 2
    acc.load(1, [p])
    torch.testing.assert_close(p.grad, torch.full((3,), 6.0))  # 2 + 4
    acc.clear()
    acc.load(1, [p])
    assert p.grad is None and not acc.pending()


@pytest.mark.parametrize("variant", ["masked", "true"])
def test_every_worker_runs_its_own_rows_of_every_micro_batch(variant):
    module = make()
    trainer = fit(module, variant, accumulate=2, batch_size=8, max_steps=3)
    assert trainer.global_step == 3
    per_worker = Counter(k for _, k, _ in module.seen)
    assert per_worker == {0: 6, 1: 6, 2: 6, 3: 6}  # 3 steps x 2 micro-batches each (was 5, 3, 3, 4)
    assert len(module.micro_batches) == 6
    # every micro-batch is run once by each worker, on its rows k, k+4 of that micro-batch
    assert sorted((m, k) for m, k, _ in module.seen) == [(m, k) for m in range(6) for k in range(4)]
    for m, k, rows in module.seen:
        torch.testing.assert_close(rows, module.micro_batches[m][k::4], rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["masked", "true"])
def test_two_micro_batches_equal_one_large_batch_under_sgd(variant):
    """A=2 with batch 8 and A=1 with batch 16: each worker sees the same 4 rows a step, so the same weights.

    5 steps with a sync every 2 cross two resamples and an epoch boundary (4 steps an epoch in both runs).
    """
    accumulated, large = make(), make()
    fit(accumulated, variant, accumulate=2, batch_size=8, max_steps=5)
    fit(large, variant, accumulate=1, batch_size=16, max_steps=5)
    init = params(make())
    assert any((init[k] - params(large)[k]).abs().max() > 1e-3 for k in init)  # training moved the weights
    assert_same(params(accumulated), params(large))


def test_hybrid_on_two_processes_accumulates_like_one_large_batch():
    accumulated, large = make(), make()
    fit(accumulated, "hybrid", accumulate=2, batch_size=4, max_steps=3, devices=2, workers=2)
    fit(large, "hybrid", accumulate=1, batch_size=8, max_steps=3, devices=2, workers=2)
    assert_same(params(accumulated), params(large))
