"""Communication accounting for Lightning's plain DDP, on TwIST's yardstick.

:class:`CountingDDPStrategy` is Lightning's ``DDPStrategy`` with a DDP communication hook that all-reduces every
gradient bucket exactly like DDP's default (``allreduce_hook``: divide by the world size, then ``all_reduce``) and
adds the bucket's payload (``numel * element_size``) to a :class:`~twist_lightning.workers.CollectiveCounter`.
``TwISTStrategy.counter`` counts the held vectors it hands to ``all_gather`` the same way, so
``strategy.counter.bytes / steps`` compares the two directly: bytes a rank hands to collectives per step
(payload, not wire traffic; a ring all-reduce puts about twice the payload on the wire).

Lightning registers DDP comm hooks only on CUDA (``DDPStrategy._register_ddp_hooks`` checks
``root_device.type == "cuda"``), so this strategy registers its hook itself on any device; gloo on CPU supports
comm hooks (``tests/test_comm.py`` checks the counts on 2 CPU ranks).

Not counted, on either side: the initial broadcast of rank 0's weights, and the 1-element stop flag Lightning
broadcasts every batch.

Example::

    import twist_lightning  # registers "ddp_counting" and "ddp_counting_spawn" (see register_strategies)
    trainer = L.Trainer(strategy=CountingDDPStrategy(start_method="spawn"), devices=2, accelerator="cpu")
    trainer.fit(module, loader)
    trainer.strategy.counter.bytes  # on each rank, e.g. in a callback's on_fit_end
"""

import atexit
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from twist_lightning.workers import CollectiveCounter

__all__ = ["CountingDDPStrategy", "counting_allreduce_hook", "destroy_process_group_at_exit"]

_EXIT_HOOK_REGISTERED = False


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when this process exits, while the interpreter is still whole (once per
    process).

    Lightning does this for NCCL only. A gloo group left to interpreter finalization can abort its process: its
    worker threads still hold work objects whose tensors need the GIL when they are freed, and the process dies
    with SIGABRT ("terminate called without an active exception"), which spawned ranks report as a failed run
    although training finished (seen here at the end of 2-process CPU fits, about one run in several).
    """
    global _EXIT_HOOK_REGISTERED
    if not _EXIT_HOOK_REGISTERED:
        atexit.register(_destroy_process_group)
        _EXIT_HOOK_REGISTERED = True


def counting_allreduce_hook(
    counter: CollectiveCounter, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP's default all-reduce hook that first adds the bucket's payload bytes to ``counter`` (the hook state).

    The annotations must stay real objects (no ``from __future__ import annotations`` here): DDP's
    ``register_comm_hook`` rejects a hook whose ``bucket`` annotation is not ``dist.GradBucket``.
    """
    buffer = bucket.buffer()
    world = dist.get_world_size() if dist.is_initialized() else 1
    # a ring all-reduce delivers 2 (world - 1) / world of the buffer to each rank (reduce-scatter, then all-gather)
    counter.add(buffer, received=2 * (world - 1) * buffer.numel() * buffer.element_size() // max(world, 1))
    return allreduce_hook(None, bucket)  # None: the default (world) process group


class CountingDDPStrategy(DDPStrategy):
    """``DDPStrategy`` that counts the gradient bytes it all-reduces in ``self.counter`` (on CPU too).

    Takes every ``DDPStrategy`` argument except ``ddp_comm_hook`` / ``ddp_comm_state`` / ``ddp_comm_wrapper`` (the
    counting hook replaces them; a model-averaging comm state would bypass it).
    """

    strategy_name = "ddp_counting"

    def __init__(self, **kwargs: Any) -> None:
        clash = sorted({"ddp_comm_hook", "ddp_comm_state", "ddp_comm_wrapper"} & set(kwargs))
        if clash:
            raise ValueError(f"CountingDDPStrategy registers its own counting comm hook; drop {clash}.")
        super().__init__(**kwargs)
        self.counter = CollectiveCounter()

    @override
    def setup_distributed(self) -> None:
        super().setup_distributed()
        destroy_process_group_at_exit()

    @override
    def _register_ddp_hooks(self) -> None:
        # Lightning's version registers hooks on CUDA only; gloo (CPU) and NCCL both run this one
        assert isinstance(self.model, DistributedDataParallel)
        self.model.register_comm_hook(state=self.counter, hook=counting_allreduce_hook)

    @classmethod
    @override
    def register_strategies(cls, strategy_registry) -> None:
        for name, start_method in (("ddp_counting", "popen"), ("ddp_counting_spawn", "spawn")):
            if name not in strategy_registry:
                strategy_registry.register(name, cls, description=f"DDP counting all-reduce bytes, start_method "
                                           f"{start_method!r}", start_method=start_method)
