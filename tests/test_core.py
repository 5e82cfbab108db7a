"""TwISTCore driven by a plain torch loop (no Lightning): equivalences, schedule, warm start, state, bad settings."""

import subprocess
import sys
import time

import pytest
import torch

from twist_lightning.core import TwISTCore, check_schedule
from twist_lightning.model import GPT, GPTConfig

SHAPE = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)


def gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SHAPE))


def batches(n: int, rows: int = 8, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, SHAPE["vocab_size"], (n, rows, SHAPE["block_size"] + 1), generator=g)
    return [(d[:, :-1], d[:, 1:]) for d in data]


def train_core(core: TwISTCore, steps: list, lr: float = 0.5, optimizer: str = "sgd") -> tuple[GPT, list[list]]:
    """The loop a non-Lightning user writes: every worker steps on its rows, then the core counts the step."""
    live = core.setup(gpt())
    make = torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW
    opt = make(live.parameters(), lr=lr)
    core.bind([opt])
    seen = run_steps(core, live, opt, steps)
    core.finish()
    return core.central_model, seen


def run_steps(core: TwISTCore, live: GPT, opt: torch.optim.Optimizer, steps: list) -> list[list]:
    """Every worker steps on its rows of each batch, then the core counts the step; returns the blueprints seen."""
    n, seen = core.workers_per_process, []
    for x, y in steps:
        seen.append([w.blueprint for w in core.workers])
        for k in range(len(core.workers)):
            core.activate(k)
            live(x[k::n], y[k::n])[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            core.deactivate(k)
        core.end_step()
    return seen


def test_core_imports_neither_lightning_nor_hydra():
    code = ("import sys, twist_lightning.core, twist_lightning.model, twist_lightning.partition, twist_lightning.prune; "
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_full_subnets_sgd_sync_every_step_equals_sgd_on_the_whole_batch():
    """Two virtual workers on half the rows each, averaged every step == plain SGD on the mean gradient."""
    data = batches(4)
    core = TwISTCore(variant="masked", n_sub=1.0, sync_every=1, workers_per_process=2)
    twisted, _ = train_core(core, data)

    plain = gpt()
    opt = torch.optim.SGD(plain.parameters(), lr=0.5)
    for x, y in data:
        loss = (plain(x[0::2], y[0::2])[1] + plain(x[1::2], y[1::2])[1]) / 2
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    moved = False
    for (name, a), b, init in zip(twisted.named_parameters(), plain.parameters(), gpt().parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)
        moved |= bool((b - init).abs().max() > 1e-3)
    assert moved


def test_masked_and_physical_cores_give_the_same_central_model():
    data = batches(5)
    kw = dict(n_sub=2, common="none", sync_every=2, workers_per_process=2)
    masked, _ = train_core(TwISTCore(variant="masked", **kw), data)
    physical, _ = train_core(TwISTCore(variant="true", **kw), data)
    for (name, a), b in zip(masked.named_parameters(), physical.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


def test_a_sync_records_where_its_time_went():
    core = TwISTCore(variant="masked", n_sub=2, common="none", sync_every=2, workers_per_process=2)
    assert core.sync_phases == {}
    started = time.perf_counter()
    train_core(core, batches(2))  # one sync, at step 2
    elapsed = time.perf_counter() - started
    assert list(core.sync_phases) == ["pack", "exchange", "average", "resample", "start_round"]
    assert all(t >= 0 for t in core.sync_phases.values()) and sum(core.sync_phases.values()) <= elapsed


def test_schedule_sets_the_round_lengths():
    core = TwISTCore(variant="masked", n_sub=2, common="none", workers_per_process=2, schedule={0: 1, 3: 2},
                     sync_every=7)
    rounds = []
    live = core.setup(gpt())
    core.bind([torch.optim.SGD(live.parameters(), lr=0.1)])
    for _ in range(9):
        core.end_step()
        rounds.append(core.round)
    assert rounds == [1, 2, 3, 3, 4, 4, 5, 5, 6]
    assert TwISTCore(sync_every=7, schedule={5: 3}).interval_at(4) == 7


def test_warm_start_trains_full_subnets_in_one_step_rounds_then_twist():
    core = TwISTCore(variant="masked", n_sub=2, common="none", workers_per_process=2, sync_every=3, warm_start=3,
                     optimizer_state="carry", outer="nesterov", outer_lr=0.7, outer_momentum=0.9)
    _, seen = train_core(core, batches(9), lr=1e-2, optimizer="adamw")
    full = tuple(range(4))
    for step, blueprints in enumerate(seen):
        held = {bp.heads[1] for bp in blueprints}
        if step < 3:
            assert held == {full}, step  # warm start: every worker holds the whole model
        else:
            assert all(len(h) == 2 for h in held), step
    assert core.round == 3 + 2  # three one-step warm rounds, then two 3-step TwIST rounds
    assert core.outer_buffer is not None  # the outer step starts with TwIST's first round


def test_outer_step_is_skipped_during_the_warm_start():
    core = TwISTCore(variant="masked", n_sub=2, common="none", workers_per_process=2, warm_start=4,
                     optimizer_state="carry", outer="nesterov")
    train_core(core, batches(3), lr=1e-2, optimizer="adamw")
    assert core.outer_buffer is None


@pytest.mark.parametrize("sync_dtype", ["float32", "bfloat16"])
def test_state_dict_round_trip_continues_mid_round_bit_for_bit(sync_dtype):
    data = batches(7)
    kw = dict(variant="true", n_sub=2, common="none", sync_every=3, workers_per_process=2,
              optimizer_state="carry", outer="nesterov", outer_lr=0.8, outer_momentum=0.5, sync_dtype=sync_dtype)
    straight, _ = train_core(TwISTCore(**kw), data, lr=1e-2, optimizer="adamw")

    first = TwISTCore(**kw)
    live = first.setup(gpt())
    opt = torch.optim.AdamW(live.parameters(), lr=1e-2)
    first.bind([opt])
    run_steps(first, live, opt, data[:4])
    state, central = first.state_dict(), first.central_model.state_dict()
    assert state["step_in_round"] == 1 and state["round"] == 1

    resumed = TwISTCore(**kw)
    resumed.load_state_dict(state)
    model = gpt(seed=5)
    model.load_state_dict(central)
    live = resumed.setup(model)
    opt = torch.optim.AdamW(live.parameters(), lr=1e-2)
    resumed.bind([opt])
    run_steps(resumed, live, opt, data[4:])
    resumed.finish()
    for (name, a), b in zip(resumed.central_model.named_parameters(), straight.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("variant", ["masked", "true"])  # hybrid needs 2 processes: tests/test_strategy.py
def test_bfloat16_sync_moves_the_exact_central_model_by_the_rounded_changes(variant, monkeypatch):
    """One round of AdamW with carried moments. In bf16 the workers start from the central model rounded to bf16
    and the exact central model moves by their rounded changes. The yardstick: a float32 run of workers started
    from the same rounded model (so the same steps): the two central models moved by the same amount within the
    rounding of the changes (not of the weights), the moments agree within their own rounding, and the payload
    halves."""
    data = batches(3)
    kw = dict(variant=variant, n_sub=2, common="none", sync_every=3, workers_per_process=2, optimizer_state="carry")
    import twist_lightning.core as core_mod

    cores, payload, starts, round_starts = {}, {}, {}, {}
    real_exchange = core_mod.exchange_held

    def spy(local, counter=None):
        payload[dtype] = (local[0].dtype, sum(t.numel() * t.element_size() for t in local))
        return real_exchange(local, counter)

    monkeypatch.setattr(core_mod, "exchange_held", spy)
    rounded_model = gpt()
    with torch.no_grad():
        for p in rounded_model.parameters():
            p.copy_(p.bfloat16())
    for dtype, model in (("bfloat16", gpt()), ("float32", rounded_model)):
        core = cores[dtype] = TwISTCore(sync_dtype=dtype, **kw)
        live = core.setup(model)
        round_starts[dtype] = [w.values.clone() for w in core.workers]
        opt = torch.optim.AdamW(live.parameters(), lr=1e-2)
        core.bind([opt])
        starts[dtype] = core.central.clone()
        run_steps(core, live, opt, data)
        assert core.round == 1
    bf16, reference = cores["bfloat16"], cores["float32"]
    assert payload["bfloat16"][0] == torch.bfloat16 and 2 * payload["bfloat16"][1] == payload["float32"][1]
    # the bf16 run's workers started from the rounded central model, which the float32 run started from exactly
    for a, b in zip(round_starts["bfloat16"], round_starts["float32"]):
        assert torch.equal(a, b)
    assert not torch.equal(starts["bfloat16"], starts["float32"])  # while its own central model is exact
    moved = bf16.central - starts["bfloat16"]
    change = reference.central - starts["float32"]
    err = (moved - change).abs()
    assert err.max() > 0  # the changes were rounded
    # each holder's change is rounded to 8 significant bits (relative error <= 2^-9); the mean is no worse
    assert err.max() <= 2.0 ** -8 * change.abs().max() + 1e-7
    # the central model itself is not rounded: almost none of its values is a bf16 number
    representable = (bf16.central.bfloat16().float() == bf16.central).float().mean()
    assert representable < 0.05
    for key in reference.central_moments:
        m_err = (bf16.central_moments[key] - reference.central_moments[key]).abs()
        assert (m_err <= 2.0 ** -8 * reference.central_moments[key].abs().max() + 1e-12).all(), key


def test_bfloat16_sync_is_a_no_op_on_the_float32_path():
    data = batches(4)
    kw = dict(variant="masked", n_sub=2, common="none", sync_every=2, workers_per_process=2)
    default, _ = train_core(TwISTCore(**kw), data)
    explicit, _ = train_core(TwISTCore(sync_dtype="float32", **kw), data)
    for (name, a), b in zip(default.named_parameters(), explicit.parameters()):
        assert torch.equal(a, b), name


def test_the_model_subnet_is_switched_through_its_public_state():
    core = TwISTCore(variant="masked", n_sub=2, common="none", workers_per_process=2)
    live = core.setup(gpt())
    core.activate(1)
    assert live.subnet_state is core.workers[1].subnet_cache and live.subnet_active
    core.activate(0)
    assert live.subnet_state is core.workers[0].subnet_cache
    with pytest.raises(ValueError, match="subnet_state"):
        live.subnet_state = [None]


@pytest.mark.parametrize("kw, match", [
    (dict(variant="sparse"), r"twist\.variant='sparse'"),
    (dict(variant="none"), r"twist\.variant='none'"),
    (dict(sync_every=0), r"twist\.sync_every=0"),
    (dict(warm_start=-1), r"twist\.warm_start=-1"),
    (dict(warm_start=5, optimizer_state="carry", variant="true"), "needs twist.variant=masked"),
    (dict(warm_start=5), "needs twist.optimizer_state=carry"),
    (dict(schedule={0: 0}), r"twist\.schedule\[0\]=0"),
    (dict(outer="adam"), r"twist\.outer='adam'"),
    (dict(outer_lr=0), r"twist\.outer_lr=0"),
    (dict(outer_momentum=1.0), r"twist\.outer_momentum=1\.0"),
    (dict(n_sub="half"), r"twist\.n_sub='half'"),
    (dict(sync_dtype="float16"), r"twist\.sync_dtype='float16'"),
])
def test_bad_settings_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        TwISTCore(**kw)


def test_warm_start_longer_than_the_run_is_refused_before_training():
    core = TwISTCore(variant="masked", n_sub=2, common="none", workers_per_process=2, warm_start=10,
                     optimizer_state="carry")
    with pytest.raises(ValueError, match=r"twist\.warm_start=10 is not shorter than the run \(trainer\.max_steps=10\)"):
        core.check(gpt(), 1, max_steps=10)
    core.check(gpt(), 1, max_steps=11)


def test_physical_spelling_and_schedule_checks():
    assert TwISTCore(variant="physical").variant.value == "true"
    assert check_schedule({10: 5, 0: 1}) == {0: 1, 10: 5}
    assert check_schedule(None) == {}
