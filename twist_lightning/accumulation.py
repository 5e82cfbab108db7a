"""Per-worker gradient accumulators for virtual workers (pure torch).

With ``workers_per_process=k`` the k virtual workers of a process share one set of parameter tensors, so they also
share ``p.grad``. Accumulating gradients over micro-batches therefore needs each worker's running sum kept apart
between micro-batches: :class:`GradAccumulators` parks a worker's ``.grad`` tensors when it hands the parameters
to the next worker and puts them back before that worker's next backward pass, which then adds into them. The
tensors are moved, never copied.

Example::

    acc = GradAccumulators(workers=2)
    for micro_batch in window:
        for k in range(2):
            acc.load(k, params)      # p.grad = worker k's sum so far (None at the start of a window)
            loss_k(micro_batch).backward()
            acc.save(k, params)      # park it again
    acc.clear()                      # after the optimizer step
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["GradAccumulators"]


class GradAccumulators:
    """One parked list of ``.grad`` tensors per worker.

    Args:
        workers: number of workers sharing the parameters.
    """

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers={workers} must be >= 1")
        self._grads: list[list[torch.Tensor | None] | None] = [None] * workers

    def load(self, worker: int, params: Sequence[torch.Tensor]) -> None:
        """Set every ``p.grad`` to ``worker``'s running sum (``None`` where it has none)."""
        saved = self._grads[worker]
        for i, p in enumerate(params):
            p.grad = None if saved is None else saved[i]

    def save(self, worker: int, params: Sequence[torch.Tensor]) -> None:
        """Park the current ``p.grad`` tensors as ``worker``'s running sum and detach them from the parameters."""
        self._grads[worker] = [p.grad for p in params]
        for p in params:
            p.grad = None

    def clear(self) -> None:
        """Forget every worker's sum (a window ended in an optimizer step)."""
        self._grads = [None] * len(self._grads)

    def __len__(self) -> int:
        return len(self._grads)

    def pending(self) -> bool:
        """Whether any worker holds a sum not yet applied."""
        return any(g is not None for g in self._grads)
