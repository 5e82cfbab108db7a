"""The sharded central model: routes cut and paste exactly, and sharded syncs equal unsharded ones bit for bit.

Multi-process tests spawn gloo processes that drive ``TwISTCore`` with a plain torch loop (as tests/test_core.py
does in one process), once sharded and once not, and compare the whole central models.
"""

import contextlib
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from twist_lightning.core import TwISTCore
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.partition import PartitionSpec, param_index, sample_blueprints
from twist_lightning.shards import ShardPlan, cut, paste
from twist_lightning.workers import Layout, flatten_parameters

SHAPE = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)


def gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SHAPE))


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_routes_cut_a_held_vector_into_owned_pieces_and_paste_it_back(world):
    """Held-vector and full-buffer (``full=True``, a masked worker's own values) cuts give the same pieces."""
    model = gpt()
    full = flatten_parameters(model)
    layout = Layout(model)
    plan = ShardPlan(layout, world)
    assert sum(plan.numel(r) for r in range(world)) == full.numel()
    assert torch.equal(plan.gather(plan.take(full, 0), 0), full) if world == 1 else True
    spec = PartitionSpec.from_config(model.config, common="none")
    for bp in sample_blueprints(spec, 3, 2, seed=0, round=1):
        index = param_index(model.config, bp)
        held = layout.gather_held(full, index)
        rebuilt = torch.full_like(held, float("nan"))
        stale = torch.randn_like(full)
        rebuilt_full = stale.clone()
        for r in range(world):
            route = plan.route(index, r)
            piece = torch.empty(route.numel)
            cut(layout, held, index, route, piece)
            # the owner sees the same piece as the held rows of its own shard
            assert torch.equal(piece, plan.shards[r].gather_held(plan.take(full, r), route.index))
            paste(layout, rebuilt, index, route, piece)
            # a masked worker's full buffer gives the same piece in place, and takes it back in place
            direct = torch.empty(route.numel)
            cut(layout, full, index, route, direct, full=True)
            assert torch.equal(direct, piece)
            paste(layout, rebuilt_full, index, route, piece, full=True)
        assert torch.equal(rebuilt, held)
        expected = stale.clone()
        layout.scatter_held(expected, index, held)  # the held units take the new values, the rest stay stale
        assert torch.equal(rebuilt_full, expected)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo(rank: int, world: int, port: int):
    """This spawned process as rank ``rank`` of a ``world``-process gloo group, destroyed on the way out."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


CASES = [  # (name, TwISTCore settings); every case runs sharded and unsharded on every rank
    ("masked", dict(variant="masked")),
    ("true", dict(variant="true")),
    ("hybrid", dict(variant="hybrid")),
    ("masked-virtual", dict(variant="masked", workers_per_process=2)),
    ("true-virtual", dict(variant="true", workers_per_process=2)),
    ("carry-outer", dict(variant="hybrid", optimizer_state="carry", outer="nesterov", outer_lr=0.8,
                         outer_momentum=0.5)),
    ("carry-bf16", dict(variant="masked", workers_per_process=2, optimizer_state="carry", sync_dtype="bfloat16")),
    ("true-bf16", dict(variant="true", sync_dtype="bfloat16")),
    # bf16 parameters (Lightning's precision="bf16-true"): the round's start must be a copy, not the live values
    ("true-bf16-params", dict(variant="true", sync_dtype="bfloat16", param_dtype=torch.bfloat16)),
]


def _start(rank: int, kw: dict, **settings) -> tuple[TwISTCore, GPT, torch.optim.Optimizer, torch.Generator]:
    """A core set up on this rank (a sync every 3 steps) with its live model, optimizer and this rank's data."""
    kw = dict(kw)
    model = gpt().to(kw.pop("param_dtype", torch.float32))
    core = TwISTCore(n_sub=2, sync_every=3, seed=3, **settings, **kw)
    live = core.setup(model, rank=rank, world_size=dist.get_world_size())
    optimizer = torch.optim.AdamW if kw.get("optimizer_state") == "carry" else torch.optim.SGD
    opt = optimizer(live.parameters(), lr=0.05)
    core.bind([opt])
    return core, live, opt, torch.Generator().manual_seed(100 + rank)


def _step(core: TwISTCore, live: GPT, opt: torch.optim.Optimizer, g: torch.Generator) -> bool:
    """One optimizer step of every local worker on its rows of a random batch; whether it ended in a sync."""
    n = core.workers_per_process
    data = torch.randint(0, SHAPE["vocab_size"], (4, SHAPE["block_size"] + 1), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    for k in range(n):
        core.activate(k)
        live(x[k::n], y[k::n])[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        core.deactivate(k)
    return core.end_step()


def _train(rank: int, kw: dict, shard: bool, steps: int = 7) -> tuple[dict, dict]:
    core, live, opt, g = _start(rank, kw, shard_central=shard)
    for _ in range(steps):
        _step(core, live, opt, g)
    core.finish()
    held = core.central.numel()
    model = core.materialize()
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {"received": core.counter.received, "central_numel": held})


def _worker(rank: int, world: int, port: int, out: str) -> None:
    with gloo(rank, world, port):
        results = {}
        for name, kw in CASES:
            if kw["variant"] == "hybrid" and world < 2:
                continue
            results[name] = {shard: _train(rank, kw, shard) for shard in (True, False)}
        torch.save(results, f"{out}.{rank}")


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_and_unsharded_syncs_give_identical_central_models(tmp_path, world):
    out = str(tmp_path / "central")
    mp.spawn(_worker, args=(world, free_port(), out), nprocs=world)
    ranks = [torch.load(f"{out}.{r}") for r in range(world)]
    total = sum(p.numel() for p in gpt().parameters())
    for name, _ in CASES:
        sharded, unsharded = ranks[0][name][True][0], ranks[0][name][False][0]
        for key in unsharded:
            assert torch.equal(sharded[key], unsharded[key]), (name, key)
        moved = any(not torch.equal(unsharded[k], v) for k, v in gpt().state_dict().items())
        assert moved, name  # the runs trained
        for r in range(1, world):  # every rank gathers the same whole model
            for key in unsharded:
                assert torch.equal(ranks[r][name][True][0][key], sharded[key]), (name, r, key)
        for r in range(world):
            numel = ranks[r][name][True][1]["central_numel"]
            assert numel < total / world + total * 0.05, (name, r, numel)  # each rank holds about 1/world
            assert ranks[r][name][False][1]["central_numel"] == total
    if world == 3:  # the all_gather delivers (W - 1) x held per worker; the two all_to_alls ~2 (W - 1) / W x held
        for name, _ in CASES:  # (bf16 halves both, sharded and unsharded alike)
            assert ranks[0][name][True][1]["received"] < 0.8 * ranks[0][name][False][1]["received"], name


def _finite_worker(rank: int, world: int, port: int, out: str) -> None:
    with gloo(rank, world, port):
        core = TwISTCore(variant="masked", n_sub=2)
        core.setup(gpt(), rank=rank, world_size=world)
        seen = [core.central_is_finite()]
        if rank == 0:
            core.central[0] = float("nan")  # only rank 0's rows
        seen.append(core.central_is_finite())
        torch.save(seen, f"{out}.{rank}")


def test_a_non_finite_row_on_one_rank_is_seen_by_every_rank(tmp_path):
    """The divergence guard's check after a sync: sharded, a rank's own rows are not enough, or one rank would stop
    while the others wait in the next sync."""
    out = str(tmp_path / "finite")
    mp.spawn(_finite_worker, args=(2, free_port(), out), nprocs=2)
    assert [torch.load(f"{out}.{r}") for r in range(2)] == [[True, False], [True, False]]


DROPPED = [  # keep_central=False against the kept shard, every variant and the carried moments
    ("masked", dict(variant="masked")),
    ("true", dict(variant="true")),
    ("hybrid", dict(variant="hybrid")),
    ("true-virtual", dict(variant="true", workers_per_process=2)),
    ("masked-carry", dict(variant="masked", optimizer_state="carry")),
]


def _train_probed(rank: int, kw: dict, keep: bool, steps: int, probes=()) -> dict:
    """Train ``steps`` plain steps (a sync every 3); the whole central model after each step in ``probes`` and at
    the end, and the size of this rank's central shard after every step."""
    core, live, opt, g = _start(rank, kw, keep_central=keep)
    out = {"shard_numel": []}

    def whole() -> dict:
        model = core.materialize()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        core.release()
        return state

    for step in range(1, steps + 1):
        if _step(core, live, opt, g):
            out.setdefault("sync_peaks", []).append(core.sync_peak_bytes)
            out["alive_after_sync"] = (core.central.numel() + sum(w.values.numel() for w in core.workers)) * 4
        out["shard_numel"].append(core.central.numel())
        if step in probes:
            peak = core.sync_peak_bytes
            out[step] = whole()
            assert core.sync_peak_bytes == peak  # a look between syncs is not a sync
            out[f"finite{step}"] = core.central_is_finite()
    core.finish()
    out["end"] = whole()
    return out


def _dropped_worker(rank: int, world: int, port: int, out: str) -> None:
    with gloo(rank, world, port):
        results = {}
        for name, kw in DROPPED:
            results[name] = {
                # kept: the model at the sync after step 6, and after 8 steps
                "kept": _train_probed(rank, kw, True, 8, probes=(6,)),
                # kept, finished after step 7: a sync there is the holders' average of the workers after step 7
                "kept7": _train_probed(rank, kw, True, 7),
                # dropped: the same 8 steps, looked at after the sync at 6 and mid-round at 7
                "dropped": _train_probed(rank, kw, False, 8, probes=(6, 7)),
            }
        torch.save(results, f"{out}.{rank}")


@pytest.mark.parametrize("world", [2, 3])
def test_a_central_model_dropped_between_syncs_is_the_kept_one_at_every_sync(tmp_path, world):
    """keep_central=False: no central values between syncs, the kept model at every sync bit for bit, and mid-round
    the holders' average of the workers' values now (what a sync at that step makes), which leaves training alone."""
    out = str(tmp_path / "dropped")
    mp.spawn(_dropped_worker, args=(world, free_port(), out), nprocs=world)
    ranks = [torch.load(f"{out}.{r}") for r in range(world)]
    for name, _ in DROPPED:
        for r in range(world):
            kept, kept7, dropped = ranks[r][name]["kept"], ranks[r][name]["kept7"], ranks[r][name]["dropped"]
            for key in kept["end"]:
                assert torch.equal(dropped[6][key], kept[6][key]), (name, r, key)  # right after a sync
                assert torch.equal(dropped[7][key], kept7["end"][key]), (name, r, key)  # mid-round: a sync's average
                assert torch.equal(dropped["end"][key], kept["end"][key]), (name, r, key)  # the look changed nothing
            assert not torch.equal(dropped[7]["lm_head.weight"], dropped[6]["lm_head.weight"]), name  # it trained
            assert dropped["finite6"] and dropped["finite7"], name
            # the shard exists only from a sync (steps 3, 6) to the next step; the kept one always
            sizes = dropped["shard_numel"]
            assert [s > 0 for s in sizes] == [False, False, True, False, False, True, False, False], (name, sizes)
            assert all(s == kept["shard_numel"][2] for s in kept["shard_numel"]), name
            # a sync's peak is the same with or without a kept shard (both hold it then; a kept run also holds its
            # carried moments' shards while it packs), above shard + values
            peaks = zip(dropped["sync_peaks"], kept["sync_peaks"], strict=False)
            assert all(d == k if "carry" not in name else d <= k for d, k in peaks), name
            assert all(p > dropped["alive_after_sync"] for p in dropped["sync_peaks"]), name


@pytest.mark.parametrize("kw, match", [
    (dict(keep_central=False, shard_central=False), "twist.shard_central=False"),
    (dict(keep_central=False, outer="nesterov"), "twist.outer='nesterov'"),
    (dict(keep_central=False, sync_dtype="bfloat16"), "twist.sync_dtype='bfloat16'"),
    (dict(keep_central="no"), "twist.keep_central='no' must be true, false or null"),
])
def test_keep_central_false_refuses_what_needs_the_previous_central_model(kw, match):
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        TwISTCore(**kw)


def test_keep_central_false_needs_several_processes():
    core = TwISTCore(variant="masked", n_sub=2, keep_central=False)
    with pytest.raises(ValueError, match=r"twist\.keep_central=false needs several processes"):
        core.setup(gpt())


@pytest.mark.parametrize("kw, kept", [
    (dict(), False),  # sharded, float32, no outer step: the holders' average needs no previous central value
    (dict(outer="nesterov"), True),
    (dict(sync_dtype="bfloat16"), True),
    (dict(shard_central=False), True),
    (dict(keep_central=True), True),
    (dict(keep_central=False), False),
])
def test_keep_central_by_default_drops_the_shard_where_that_is_exact(kw, kept):
    core = TwISTCore(variant="true", n_sub=2, **kw)
    assert core.keep_central is kept  # with several processes
    assert core.keep_central_setting is kw.get("keep_central")


def test_keep_central_by_default_keeps_the_one_copy_of_a_single_process():
    core = TwISTCore(variant="masked", n_sub=2, workers_per_process=2)
    core.setup(gpt())
    assert core.keep_central is True and core.keep_central_setting is None


def test_a_mid_round_look_refuses_a_resume_that_needs_the_rounds_start():
    """A checkpoint that keep_central=false wrote mid-round holds the holders' average then, not the round's start:
    an outer step or a bf16 sync would subtract from the wrong values, so the resume is refused before any work."""
    state = {"round": 1, "step_in_round": 2, "steps_done": 5, "workers": [], "central_at_round_start": False}
    TwISTCore(variant="true", n_sub=2).load_state_dict(state)  # the holders' average needs nothing before it
    TwISTCore(variant="true", n_sub=2, outer="nesterov").load_state_dict({**state, "central_at_round_start": True})
    for kw, names in ((dict(outer="nesterov"), "twist.outer='nesterov'"),
                      (dict(sync_dtype="bfloat16"), "twist.sync_dtype='bfloat16'")):
        with pytest.raises(ValueError, match=f"written mid-round.*{names}.*HINT"):
            TwISTCore(variant="true", n_sub=2, **kw).load_state_dict(state)
