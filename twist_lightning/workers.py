"""Flat-buffer bookkeeping of TwIST workers: the central model, each worker's subnet, and holder averaging.

Pure torch (plus ``torch.distributed`` collectives); the Lightning strategy drives it. Every parameter of a GPT
is made a view into one flat buffer, so swapping a virtual worker in or out, restoring the units a masked worker
does not hold, and the one collective per sync each work on a single flat vector.

A worker's *held vector* is its physical subnet's parameters flattened in ``named_parameters()`` order: for a
physical worker that is its live flat buffer itself, for a masked one it is gathered from its full-size buffer.
All blueprints of a round have the same sizes, so every worker's held vector has the same length and one
``all_gather`` carries them all. Where the elements sit in the full model is kept per parameter (a dimension and
a row/column index from :func:`~twist_lightning.partition.param_index`), never as one index per element, which
for GPT-2 124M would cost 8 bytes x 80M elements per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from twist_lightning.partition import Blueprint

ParamIndex = dict[str, tuple[int, torch.Tensor]]  # name -> (dim, rows/cols held), only narrowed parameters


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


class Layout:
    """Names, shapes and offsets of a full model's parameters inside its flat buffer."""

    def __init__(self, module: nn.Module) -> None:
        self.names: list[str] = []
        self.shapes: list[torch.Size] = []
        for name, p in module.named_parameters():
            self.names.append(name)
            self.shapes.append(p.shape)

    @classmethod
    def from_shapes(cls, names: list[str], shapes: list[torch.Size]) -> Layout:
        """A layout of named shapes with no module behind it (e.g. one rank's rows of every parameter)."""
        layout = cls.__new__(cls)
        layout.names, layout.shapes = list(names), [torch.Size(s) for s in shapes]
        return layout

    @property
    def numel(self) -> int:
        return sum(s.numel() for s in self.shapes)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        out, offset = [], 0
        for shape in self.shapes:
            n = shape.numel()
            out.append(flat[offset:offset + n].view(shape))
            offset += n
        return out

    def held_shapes(self, index: ParamIndex) -> list[torch.Size]:
        """Shape of each parameter in the physical subnet of ``index``."""
        shapes = []
        for name, shape in zip(self.names, self.shapes):
            if name in index:
                dim, idx = index[name]
                shape = shape[:dim] + (len(idx),) + shape[dim + 1:]
            shapes.append(torch.Size(shape))
        return shapes

    def split_held(self, held: torch.Tensor, index: ParamIndex) -> list[torch.Tensor]:
        out, offset = [], 0
        for shape in self.held_shapes(index):
            n = shape.numel()
            out.append(held[offset:offset + n].view(shape))
            offset += n
        return out

    def gather_held(self, flat: torch.Tensor, index: ParamIndex, out: torch.Tensor | None = None) -> torch.Tensor:
        """The held vector of a full-size flat buffer: each parameter, narrowed where ``index`` says.

        Each parameter's ``index_select`` writes straight into its slice of ``out`` (allocated when not given), so
        there is no per-parameter temporary and no final concatenation.
        """
        shapes = self.held_shapes(index)
        if out is None:
            out = torch.empty(sum(s.numel() for s in shapes), dtype=flat.dtype, device=flat.device)
        offset = 0
        for name, view, shape in zip(self.names, self.views(flat), shapes):
            n = shape.numel()
            target = out[offset:offset + n].view(shape)
            if name in index:
                torch.index_select(view, *index[name], out=target)
            else:
                target.copy_(view)
            offset += n
        return out

    def select_held(self, flat: torch.Tensor, index: ParamIndex) -> list[torch.Tensor]:
        """:meth:`gather_held` per parameter: a view of each parameter ``index`` does not narrow, a copy of each
        one it does (no flat vector)."""
        return [torch.index_select(view, *index[name]) if name in index else view
                for name, view in zip(self.names, self.views(flat))]

    def scatter_held(self, flat: torch.Tensor, index: ParamIndex, held: torch.Tensor) -> None:
        """The inverse of :meth:`gather_held`: write a held vector into its places in a full-size flat buffer
        (elements outside the subnet keep their values)."""
        for name, view, piece in zip(self.names, self.views(flat), self.split_held(held, index)):
            if name in index:
                view.index_copy_(index[name][0], index[name][1], piece)
            else:
                view.copy_(piece)

    def held_mask(self, index: ParamIndex, device: torch.device) -> torch.Tensor:
        """A full-size bool vector, True where the subnet holds the element (1 byte an element)."""
        mask = torch.ones(sum(s.numel() for s in self.shapes), dtype=torch.bool, device=device)
        for name, view in zip(self.names, self.views(mask)):
            if name in index:
                dim, idx = index[name]
                view.fill_(False).index_fill_(dim, idx, True)
        return mask


@dataclass
class Worker:
    """One (real or virtual) worker: its blueprint, where its units sit, its values and optimizer state."""

    blueprint: Blueprint
    index: ParamIndex
    values: torch.Tensor  # its live parameters: full-size flat (masked) or held vector (physical)
    physical: bool
    optimizer_state: dict = field(default_factory=dict)
    subnet_cache: list | None = None  # masked workers: the model's index tensors for this blueprint
    mask: torch.Tensor | None = None  # masked workers, unsharded: which elements of ``values`` they hold
    start: torch.Tensor | None = None  # sharded bf16 sync: the held values at the round's start

    def held(self, layout: Layout) -> torch.Tensor:
        """The held values as one vector, whatever the worker holds physically."""
        return self.values if self.physical else layout.gather_held(self.values, self.index)


class CollectiveCounter:
    """Bytes a rank hands to collectives (``bytes``: payload size, the same yardstick for TwIST and DDP) and the
    bytes that reach it from the other ranks (``received``: what the collective's algorithm delivers to it, e.g.
    ``(world - 1) x payload`` for an all_gather, ``2 (world - 1) / world x payload`` for a ring all-reduce)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self.received = 0

    def add(self, tensor: torch.Tensor, received: int = 0) -> None:
        self.bytes += tensor.numel() * tensor.element_size()
        self.calls += 1
        self.received += int(received)


def exchange_held(local: list[torch.Tensor], counter: CollectiveCounter | None = None) -> list[torch.Tensor]:
    """Every worker's held vector on every rank, rank-major, by one ``all_gather`` (none in a single process)."""
    mine = torch.cat(local)  # (n_local * n_held,)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
        if counter is not None:  # every other rank's vector arrives here
            counter.add(mine, received=(dist.get_world_size() - 1) * mine.numel() * mine.element_size())
        dist.all_gather(gathered, mine)
        mine = torch.cat(gathered)
    return list(mine.chunk(mine.numel() // local[0].numel()))


@torch.no_grad()
def average_over_holders(central: torch.Tensor, layout: Layout, held: list[torch.Tensor | list[torch.Tensor]],
                         indices: list[ParamIndex], buffer: torch.Tensor | None = None) -> None:
    """Set each central element to the mean of its holders' values (unheld elements keep theirs).

    ``held[s]`` is worker ``s``'s held vector (or its held tensors, a list per parameter) and ``indices[s]`` its
    parameter index, for all S workers. Holder counts need no communication: every rank knows every blueprint. Per
    parameter, the counts live along the one narrowed dimension (a vector, not a full-size tensor), the sums go into
    one reused buffer the size of the largest parameter, and the division and the "keep unheld" choice run in place:
    one pass per worker over its held values plus two over the parameter, and no other full-size temporary.
    ``buffer``: a spent buffer to use for the sums when it is big enough (a sharded sync passes its phase-1 send
    buffer; a new one costs page faults).
    """
    pieces = [h if isinstance(h, list) else layout.split_held(h, idx) for h, idx in zip(held, indices)]  # [S][P]
    largest = max(shape.numel() for shape in layout.shapes)
    buffer = reuse(buffer, largest, central.dtype, central.device)
    for p, (name, target) in enumerate(zip(layout.names, layout.views(central))):
        narrowed = [index[name] for index in indices if name in index]
        if not narrowed:  # every worker holds all of it: a plain mean
            target.copy_(pieces[0][p])
            for s in range(1, len(indices)):
                target.add_(pieces[s][p].to(target.dtype))
            target.div_(float(len(indices)))
            continue
        dim = narrowed[0][0]
        if any(d != dim for d, _ in narrowed):
            raise ValueError(f"{name}: workers narrow it along different dimensions {sorted({d for d, _ in narrowed})}.")
        sums = buffer[:target.numel()].view(target.shape).zero_()
        counts = torch.zeros(target.shape[dim], dtype=target.dtype, device=target.device)
        for s, index in enumerate(indices):
            piece = pieces[s][p].to(target.dtype)
            if name in index:
                sums.index_add_(dim, index[name][1], piece)
                counts.index_add_(0, index[name][1], torch.ones(len(index[name][1]), dtype=target.dtype,
                                                                 device=target.device))
            else:
                sums.add_(piece)
                counts.add_(1.0)
        shape = [1] * target.dim()
        shape[dim] = -1
        sums.div_(counts.clamp_min(1.0).view(shape))
        torch.where((counts > 0).view(shape), sums, target, out=target)


def reuse(buffer: torch.Tensor | None, numel: int, dtype: torch.dtype, device: torch.device | None = None
          ) -> torch.Tensor:
    """The first ``numel`` elements of ``buffer`` when it is big enough and of ``dtype``, else a new buffer.

    A sync's buffers are hundreds of MB at the GPT-2 shape, and a new one costs its page faults (measured here:
    filling a fresh 328 MB buffer takes about twice as long as copying into a touched one), so each phase passes
    its spent buffer on to the next instead of allocating.
    """
    if buffer is not None and buffer.dtype == dtype and buffer.numel() >= numel:
        return buffer[:numel]
    return torch.empty(numel, dtype=dtype, device=device if buffer is None else buffer.device)
