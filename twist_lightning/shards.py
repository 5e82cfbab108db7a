"""The sharded central model: every rank owns a run of parameter rows (pure torch + collectives).

With one all_gather of every worker's held values per sync, each rank receives S x (held size) bytes: with 64
workers about 40 model copies per sync. Sharded, the rows of all central parameters, in order, are cut into W
(the world size) runs of about 1/W of the elements; rank ``r`` owns the ``r``-th run, and with it the same rows
of the outer step's momentum and the carried Adam moments. A sync is two ``all_to_all`` exchanges:

1. *to the owners*: each worker cuts its held values into the pieces that fall in each rank's rows and sends each
   piece to its owner; the owner averages over the holders on its shard alone (the same arithmetic, in the same
   order, as :func:`~twist_lightning.workers.average_over_holders` on the full vector: bit-identical), then takes
   the outer step on its shard;
2. *back to the workers*: with the next round's blueprints (every rank draws them all), each owner sends every
   worker the rows of its new subnet that it owns, and the worker pastes them into its held vector.

A rank sends and receives about ``workers_per_process x held`` per phase, whatever S is. Nothing needs the whole
central model between syncs: a masked worker's forward index-selects its held units and never reads the others,
so they are neither restored nor refreshed. Validation and checkpoints assemble the whole model on demand
(:meth:`ShardPlan.gather`, one all_gather of the shards).

Rows (dim 0) are the unit of ownership because a TwIST parameter is narrowed along at most one dimension: a
narrowed-on-rows parameter's held rows in an owner's range are found from its small row index (``idx`` in
``[a, b)``), a narrowed-on-columns one's are the rows ``[a, b)`` of the held tensor, so there is never an index per
element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from twist_lightning.workers import CollectiveCounter, Layout, ParamIndex, reuse


# torch 2.13 deprecates all_gather_into_tensor (with a warning per call) for all_gather_single; older torch
# (the package allows >= 2.3) has only the former
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class Route:
    """Where one worker's held values meet one owner's shard, per parameter.

    ``rows[p]`` selects the piece from the worker's held tensor of parameter ``p``: a ``slice`` of rows, or a long
    tensor of held-row positions (parameters narrowed on rows). ``index`` is the worker's parameter index within
    the shard (what :func:`average_over_holders` and :meth:`Layout.gather_held` take on the shard's layout).
    """

    rows: list[slice | torch.Tensor]
    index: ParamIndex
    numel: int
    spans: list[tuple[int, int]]  # per parameter, the owner's rows [a, b) of the whole parameter


class ShardPlan:
    """Which rows of every parameter of ``layout`` each of ``world_size`` ranks owns."""

    def __init__(self, layout: Layout, world_size: int) -> None:
        if world_size < 1:
            raise ValueError(f"world_size={world_size} must be >= 1.")
        self.layout, self.world_size = layout, world_size
        # The rows of all parameters in layout order, cut into world_size runs of about N / W elements: rank r
        # owns the rows that start in [r N / W, (r + 1) N / W) of the flat vector. Balancing the whole row list
        # (not each parameter's rows) keeps shards within one row of N / W even where parameters have fewer
        # rows than there are ranks, so no rank owns a bigger share of the rows every worker sends.
        total, offset = layout.numel, 0
        self.bounds: list[list[tuple[int, int]]] = []  # bounds[p][r] = (a, b): rank r owns rows a..b-1 of p
        for shape in layout.shapes:
            rows, width = shape[0], math.prod(shape[1:])
            starts = [min(max(-(-(r * total - offset * world_size) // (width * world_size)), 0), rows)
                      for r in range(world_size + 1)]  # ceil division; the first row starting at or after r N / W
            starts[-1] = rows
            self.bounds.append([(starts[r], starts[r + 1]) for r in range(world_size)])
            offset += shape.numel()
        self.shards = [Layout.from_shapes(layout.names, [torch.Size((b[r][1] - b[r][0], *s[1:]))
                                                         for b, s in zip(self.bounds, layout.shapes)])
                       for r in range(world_size)]

    def numel(self, rank: int) -> int:
        return sum(s.numel() for s in self.shards[rank].shapes)

    def take(self, flat: torch.Tensor, rank: int) -> torch.Tensor:
        """Rank ``rank``'s shard (a new vector) of a full-size flat vector laid out as ``layout``."""
        out = torch.empty(self.numel(rank), dtype=flat.dtype, device=flat.device)
        for view, piece, (a, b) in zip(self.layout.views(flat), self.shards[rank].views(out),
                                       (bounds[rank] for bounds in self.bounds)):
            piece.copy_(view[a:b])
        return out

    def gather(self, shard: torch.Tensor, rank: int, counter: CollectiveCounter | None = None) -> torch.Tensor:
        """The full-size flat vector from every rank's shard (a collective: every rank calls it)."""
        full = torch.empty(sum(s.numel() for s in self.layout.shapes), dtype=shard.dtype, device=shard.device)
        views = self.layout.views(full)
        if self.world_size == 1:
            for view, piece in zip(views, self.shards[0].views(shard)):
                view.copy_(piece)
            return full
        sizes = [self.numel(r) for r in range(self.world_size)]
        padded = shard.new_zeros(max(sizes))  # all_gather needs equal sizes
        padded[:shard.numel()].copy_(shard)
        gathered = padded.new_empty(self.world_size * padded.numel())  # one flat buffer, rank-major
        if counter is not None:
            counter.add(padded, received=(self.world_size - 1) * padded.numel() * padded.element_size())
        _all_gather_single(gathered, padded)
        for r, part in enumerate(gathered.chunk(self.world_size)):
            for view, piece, bounds in zip(views, self.shards[r].views(part[:sizes[r]]), self.bounds):
                a, b = bounds[r]
                view[a:b].copy_(piece)
        return full

    def route(self, index: ParamIndex, rank: int) -> Route:
        """How a worker with parameter index ``index`` meets rank ``rank``'s shard."""
        rows: list[slice | torch.Tensor] = []
        local: ParamIndex = {}
        spans = [bounds[rank] for bounds in self.bounds]
        for name, bounds in zip(self.layout.names, self.bounds):
            a, b = bounds[rank]
            if name in index and index[name][0] == 0:
                idx = index[name][1]
                inside = (idx >= a) & (idx < b)
                rows.append(inside.nonzero().squeeze(1))
                local[name] = (0, idx[inside] - a)
            else:
                rows.append(slice(a, b))
                if name in index:
                    local[name] = index[name]
        numel = sum(s.numel() for s in self.shards[rank].held_shapes(local))
        return Route(rows, local, numel, spans)


def _pieces(layout: Layout, vector: torch.Tensor, index: ParamIndex, route: Route, full: bool):
    """Per parameter: the tensor a route's piece is read from or written to, and how (rows, or a dim and index).

    ``full=False``: ``vector`` is the worker's held vector; the piece is rows of each held tensor (``route.rows``).
    ``full=True``: ``vector`` is a full-size flat buffer (a masked worker's own values): the piece is the owner's
    rows ``[a, b)`` of the whole parameter, narrowed to the subnet's units, read and written in place, which spares
    the held-vector copy a masked worker would otherwise make in each phase.
    """
    if not full:
        for view, rows in zip(layout.split_held(vector, index), route.rows):
            if isinstance(rows, slice):
                yield view[rows], None, None
            else:
                yield view, 0, rows
        return
    for name, view, (a, b) in zip(layout.names, layout.views(vector), route.spans):
        if name not in route.index:
            yield view[a:b], None, None
        elif route.index[name][0] == 0:
            yield view, 0, route.index[name][1] + a
        else:
            yield view[a:b], route.index[name][0], route.index[name][1]


def cut(layout: Layout, held: torch.Tensor, index: ParamIndex, route: Route, out: torch.Tensor,
        full: bool = False) -> None:
    """Write the pieces of a worker's held vector that ``route``'s owner owns into ``out`` (``route.numel``); with
    ``full=True``, ``held`` is the worker's full-size buffer instead (see :func:`_pieces`)."""
    offset = 0
    for view, dim, idx in _pieces(layout, held, index, route, full):
        if dim is None:
            n = view.numel()
            out[offset:offset + n].view_as(view).copy_(view)
        else:  # straight into the buffer: one pass, no temporary
            shape = list(view.shape)
            shape[dim] = len(idx)
            n = math.prod(shape)
            torch.index_select(view, dim, idx, out=out[offset:offset + n].view(shape))
        offset += n


def own_pieces(layout: Layout, held: torch.Tensor, index: ParamIndex, route: Route, full: bool = False
               ) -> list[torch.Tensor]:
    """What :func:`cut` writes, per parameter instead of into a buffer: views where a piece is a run of rows of
    ``held``, copies (``index_select``) where it is not. A rank's pieces of its own shard never travel, so they
    need no buffer (and the views no copy)."""
    return [view if dim is None else torch.index_select(view, dim, idx)
            for view, dim, idx in _pieces(layout, held, index, route, full)]


def paste(layout: Layout, held: torch.Tensor, index: ParamIndex, route: Route,
          pieces: torch.Tensor | list[torch.Tensor], full: bool = False) -> None:
    """The inverse of :func:`cut`: put an owner's pieces (one flat vector, or a list per parameter) into their places
    in a worker's held vector (or, with ``full=True``, its full-size buffer; elements outside the subnet keep their
    values)."""
    offset = 0
    for p, (view, dim, idx) in enumerate(_pieces(layout, held, index, route, full)):
        shape = list(view.shape)
        if dim is not None:
            shape[dim] = len(idx)
        n = math.prod(shape)
        piece = pieces[p] if isinstance(pieces, list) else pieces[offset:offset + n]
        if dim is None:
            view.copy_(piece.view_as(view))  # (converts a bf16 piece on the way)
        else:  # index_copy_ takes one dtype: a bf16 piece is converted alone, not the whole buffer first
            view.index_copy_(dim, idx, piece.view(shape).to(view.dtype))
        offset += n


def all_to_all(send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int], rank: int,
               counter: CollectiveCounter | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """One ``all_to_all_single`` (uneven splits; gloo and NCCL both take it); counts what leaves and reaches this
    rank, i.e. every split but the one a rank keeps for itself. ``out``: a buffer to receive into (its first
    ``sum(recv_sizes)`` elements; a new one when it is None or too small)."""
    recv = reuse(out, sum(recv_sizes), send.dtype) if out is not None else send.new_empty(sum(recv_sizes))
    if counter is not None:
        size = send.element_size()
        counter.bytes += (sum(send_sizes) - send_sizes[rank]) * size
        counter.received += (sum(recv_sizes) - recv_sizes[rank]) * size
        counter.calls += 1
    dist.all_to_all_single(recv, send, recv_sizes, send_sizes)
    return recv
