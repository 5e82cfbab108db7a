"""Flat-buffer bookkeeping of TwIST workers: the central model, each worker's subnet, and holder averaging.

Pure torch (plus ``torch.distributed`` collectives); the Lightning strategy drives it. Every parameter of a GPT
is made a view into one flat buffer, so moving a subnet in or out of the central model, restoring the units a
worker does not hold, and averaging over holders are each a single gather / ``index_add_`` / ``where`` on flat
vectors, and one collective per sync carries all workers' values.

A blueprint's *flat index* lists, in the order of its physical subnet's ``named_parameters()`` flattened, the
positions of those elements in the central model's flat vector. All blueprints of a round have the same
sizes (exactly ``n_sub`` units per layer), so every worker's held values form a vector of the same length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from twist_lightning.model import GPT
from twist_lightning.partition import Blueprint, param_index


def flatten_parameters(module: nn.Module) -> torch.Tensor:
    """Re-home every parameter of ``module`` into one contiguous buffer and return it (params become views)."""
    params = list(module.parameters())  # deduplicated: tied weights appear once
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    offset = 0
    for p in params:
        n = p.numel()
        p.data = flat[offset:offset + n].view_as(p)
        offset += n
    return flat


def flat_index(model: GPT, blueprint: Blueprint) -> torch.Tensor:
    """Positions in ``model``'s flat parameter vector of ``blueprint``'s physical-subnet elements, in order."""
    device = model.lm_head.weight.device
    narrowed = param_index(model.config, blueprint, device)
    pieces, offset = [], 0
    for name, p in model.named_parameters():
        n = p.numel()
        if name not in narrowed:
            pieces.append(torch.arange(offset, offset + n, device=device))
        else:
            dim, idx = narrowed[name]
            pos = torch.arange(offset, offset + n, device=device).view_as(p)
            pieces.append(pos.index_select(dim, idx).reshape(-1))
        offset += n
    return torch.cat(pieces)


@dataclass
class Worker:
    """One (real or virtual) worker: its blueprint, where its elements sit, its values and optimizer state."""

    blueprint: Blueprint
    index: torch.Tensor  # (n_held,) positions in the central flat vector
    values: torch.Tensor  # its live parameters: full-size (masked) or (n_held,) (physical)
    physical: bool
    optimizer_state: dict = field(default_factory=dict)
    subnet_cache: list | None = None  # masked workers: the model's index tensors for this blueprint

    def held(self) -> torch.Tensor:
        """The held values as an (n_held,) vector, whatever the worker holds physically."""
        return self.values if self.physical else self.values[self.index]


class CollectiveCounter:
    """Bytes a rank hands to collectives (payload size, not wire traffic): the same yardstick for TwIST and DDP."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0

    def add(self, tensor: torch.Tensor) -> None:
        self.bytes += tensor.numel() * tensor.element_size()
        self.calls += 1


def average_over_holders(
    central: torch.Tensor,
    workers: list[Worker],
    all_indices: list[torch.Tensor],
    counter: CollectiveCounter | None = None,
) -> None:
    """Set each central element to the mean of its holders' values over *all* workers of all ranks.

    Every rank passes its local ``workers`` and the flat indices of every worker in global order (rank-major);
    the held vectors are exchanged with one ``all_gather`` (or none in a single process), then summed locally
    with ``index_add_``. Holder counts need no communication: every rank knows every blueprint.
    """
    local = torch.cat([w.held() for w in workers])  # (n_local * n_held,)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        if counter is not None:
            counter.add(local)
        dist.all_gather(gathered, local)
        everything = torch.cat(gathered)
    else:
        everything = local
    values = everything.view(len(all_indices), -1)  # (S, n_held)
    index = torch.cat(all_indices)  # (S * n_held,)
    sums = torch.zeros_like(central).index_add_(0, index, values.reshape(-1).to(central.dtype))
    counts = torch.zeros_like(central).index_add_(0, index, torch.ones_like(index, dtype=central.dtype))
    central.copy_(torch.where(counts > 0, sums / counts.clamp_min(1.0), central))
