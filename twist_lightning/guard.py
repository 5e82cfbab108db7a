"""``DivergenceGuard``: stop a run at the first non-finite training loss, or non-finite weights after a TwIST sync.

Without it a diverged run trains on NaN to the end, exits 0 and overwrites the last good checkpoint with NaN
weights. The guard raises :class:`DivergenceError` naming the step and the setting to change, *before* the
backward pass of the bad loss, so the in-memory weights are those of the last finite step. Checkpoint callbacks
run after this callback (Lightning moves them to the end), and :class:`~twist_lightning.io.AtomicCheckpointIO`
refuses to write non-finite weights in any case, so the last finite checkpoint on disk stays untouched.

Under several processes each rank checks its own loss (no collective per step, which TwIST exists to avoid):
the rank that raises exits, and the others fail at their next collective (gloo notices within seconds).

Example::

    trainer = L.Trainer(callbacks=[DivergenceGuard()], plugins=[AtomicCheckpointIO()])
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from twist_lightning.strategy import TwISTStrategy

__all__ = ["DivergenceError", "DivergenceGuard", "check_finite_model", "divergence_hint", "finite_stats"]


_KEPT = "Any checkpoint written before this step is kept (none with non-finite weights is written)."


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or non-finite weights."""


def divergence_hint(pl_module: pl.LightningModule | None, trainer: pl.Trainer | None = None) -> str:
    """What to change, with the run's current values where it has them."""
    hp = getattr(pl_module, "hparams", {}) or {}
    lr, warmup = hp.get("lr"), hp.get("warmup_steps")
    fixes = [f"lower module.lr (now {lr:g}, e.g. module.lr={lr / 10:g})" if isinstance(lr, float | int) else
             "lower module.lr"]
    if warmup is not None:
        fixes.append(f"lengthen module.warmup_steps (now {warmup})")
    if trainer is not None and not trainer.gradient_clip_val:
        fixes.append("set trainer.gradient_clip_val=1.0")
    return f"HINT: {', or '.join(fixes)}."


def check_finite_model(model: torch.nn.Module, what: str, hint: str = "") -> None:
    """Raise :class:`DivergenceError` naming the first parameter of ``model`` that holds a NaN or an infinity."""
    bad = [n for n, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise DivergenceError(f"{what} has non-finite weights in {len(bad)} tensor(s) (first: {bad[0]}): the model "
                              f"diverged during training. {hint or 'HINT: retrain with a lower module.lr.'}")


class DivergenceGuard(Callback):
    """Raise :class:`DivergenceError` at the first non-finite training loss or post-sync weights.

    Args:
        check_sync: After every TwIST sync, also check the averaged central model (one reduction per sync).

    Raises:
        DivergenceError: During ``fit``, naming the step, the loss and the setting to change.
    """

    def __init__(self, *, check_sync: bool = True) -> None:
        self.check_sync = check_sync

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        # before backward: the bad loss never reaches the weights, so the module still holds the last finite step
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DivergenceError(f"train/loss is {value} at step {trainer.global_step + 1} (trainer.global_step="
                                  f"{trainer.global_step}, batch {trainer.fit_loop.epoch_loop.batch_idx}): the run "
                                  f"diverged and was stopped. {divergence_hint(pl_module, trainer)} {_KEPT}")

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        strategy = trainer.strategy
        if not (self.check_sync and isinstance(strategy, TwISTStrategy) and strategy.central is not None):
            return
        if strategy.step_in_round == 0 and strategy.round > 0 and not strategy.core.central_is_finite():
            raise DivergenceError(f"the central model is non-finite after TwIST sync {strategy.round} (step "
                                  f"{trainer.global_step}): the run diverged and was stopped. "
                                  f"{divergence_hint(pl_module, trainer)} {_KEPT}")


def finite_stats(values: list[float]) -> dict[str, float | int]:
    """Mean, std, min and max perplexity over the finite ``values``; ``diverged`` counts the others.

    A diverged (NaN or infinite) subnet is reported as such instead of poisoning or crashing the statistics
    (``statistics.stdev`` of an infinity raises); with no finite value every statistic is NaN (``null`` in JSON).
    """
    finite = [v for v in values if math.isfinite(v)]
    nan = math.nan
    return {"mean_ppl": statistics.fmean(finite) if finite else nan,
            "std_ppl": statistics.stdev(finite) if len(finite) > 1 else (0.0 if finite else nan),
            "min_ppl": min(finite, default=nan), "max_ppl": max(finite, default=nan),
            "diverged": len(values) - len(finite)}
