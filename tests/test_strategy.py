"""TwISTStrategy: equivalences with DDP and between variants, virtual workers, resume, bad settings.

Multi-process tests use the spawn launcher and gloo on CPU, as Lightning's own strategy tests do.
"""

import os
import socket
from datetime import timedelta

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import twist_lightning  # noqa: F401  (registers "twist")
from twist_lightning import SubnetResampling, TwISTLitModule, TwISTStrategy
from twist_lightning.comm import destroy_process_group_at_exit
from twist_lightning.model import GPT, GPTConfig

SHAPE = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)


class ExitSafeDDP(L.pytorch.strategies.DDPStrategy):
    """Lightning's DDP, the reference of the equivalence tests, destroying its gloo group at exit as TwIST's
    strategies do: left to interpreter finalization it aborts a finished spawned rank now and then (SIGABRT,
    "terminate called without an active exception"; seen in CI on 2026-12-06)."""

    def setup_distributed(self) -> None:
        super().setup_distributed()
        destroy_process_group_at_exit()


def reference_ddp() -> ExitSafeDDP:
    return ExitSafeDDP(start_method="spawn", timeout=timedelta(seconds=60))


def make_module(optimizer="adamw", lr=1e-2, seed=0) -> TwISTLitModule:
    torch.manual_seed(seed)
    # a fixed schedule length, so runs with different max_steps share learning rates
    return TwISTLitModule(GPTConfig(**SHAPE), lr=lr, warmup_steps=2, decay_steps=20, optimizer=optimizer,
                          weight_decay=0.1)


def loader(batch_size: int, n: int = 64, seed: int = 1) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, SHAPE["vocab_size"], (n, SHAPE["block_size"] + 1), generator=g)
    return DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=batch_size, shuffle=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fit(module, strategy, devices=1, max_steps=4, batch_size=4, callbacks=(), ckpt_path=None, root=None, n=64):
    if devices > 1:  # a fresh rendezvous port per launch: a just-closed one can still be in TIME_WAIT
        os.environ["MASTER_PORT"] = str(free_port())
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=max_steps,
                        logger=False, enable_checkpointing=bool(callbacks and root), enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks), default_root_dir=root)
    trainer.fit(module, loader(batch_size, n), ckpt_path=ckpt_path)
    return trainer


def twist(**kw) -> TwISTStrategy:
    kw.setdefault("timeout", timedelta(seconds=60))
    return TwISTStrategy(**kw)


def params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def assert_same(a: dict, b: dict, atol=1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_full_subnets_sgd_sync_every_step_equals_ddp():
    """N_sub = N_full, plain SGD, sync every step: averaging weights == averaging gradients (2 ranks)."""
    ddp = make_module("sgd", lr=0.5)
    fit(ddp, reference_ddp(), devices=2)
    tw = make_module("sgd", lr=0.5)
    fit(tw, twist(variant="masked", n_sub=1.0, sync_every=1, start_method="spawn"), devices=2)
    init = params(make_module("sgd", lr=0.5))
    assert any((init[k] - params(ddp)[k]).abs().max() > 1e-3 for k in init)  # training moved the weights
    assert_same(params(tw), params(ddp))


@pytest.fixture(scope="module")
def variant_results():
    out = {}
    for variant in ("masked", "true", "hybrid"):
        m = make_module()
        fit(m, twist(variant=variant, n_sub=2, common="none", sync_every=2, start_method="spawn"), devices=2,
            max_steps=5)
        out[variant] = params(m)
    return out


@pytest.mark.parametrize("variant", ["true", "hybrid"])
def test_variants_give_the_same_parameters(variant_results, variant):
    assert_same(variant_results[variant], variant_results["masked"])


@pytest.mark.parametrize("variant", ["masked", "hybrid"])
def test_bfloat16_sync_on_two_processes_stays_within_its_rounding(variant):
    """Plain SGD (AdamW turns a 1e-7 difference on a near-zero gradient into a full step, whatever its cause)."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        runs[dtype] = make_module("sgd", lr=0.5)
        fit(runs[dtype], twist(variant=variant, n_sub=2, common="none", sync_every=2, sync_dtype=dtype,
                               start_method="spawn"), devices=2, max_steps=5)
    rounded, exact, init = params(runs["bfloat16"]), params(runs["float32"]), params(make_module("sgd", lr=0.5))
    assert any(not torch.equal(rounded[k], exact[k]) for k in exact)  # the rounding happened
    for k in exact:  # 3 syncs of bf16-rounded changes: within a few bf16 ulps of what training moved
        moved = (exact[k] - init[k]).abs().max()
        assert (rounded[k] - exact[k]).abs().max() <= 4 * 2.0 ** -8 * moved + 1e-6, k


def test_virtual_workers_match_real_processes():
    """2 virtual workers in one process (batch 2b, rows k::2) == 2 processes with batch b each.

    Plain SGD: with AdamW the float noise of different batch shapes (~1e-7) is amplified on near-zero gradients
    to ~1e-4 after a few steps, which says nothing about the algorithm.
    """
    kw = dict(variant="masked", n_sub=2, common="none", sync_every=2)
    real = make_module("sgd", lr=0.5)
    fit(real, twist(**kw, start_method="spawn"), devices=2, max_steps=5)
    virtual = make_module("sgd", lr=0.5)
    fit(virtual, twist(**kw, workers_per_process=2), devices=1, max_steps=5, batch_size=8)
    assert_same(params(virtual), params(real))


@pytest.mark.parametrize("variant, policy", [("masked", "reset"), ("true", "reset"), ("true", "carry")])
def test_resume_mid_round_reproduces_uninterrupted_run(tmp_path, variant, policy):
    # 4 batches an epoch: the checkpoint at step 4 is mid-round but at an epoch boundary, since Lightning
    # restarts a map-style dataset's epoch from its first batch on resume
    kw = dict(variant=variant, n_sub=2, common="none", sync_every=3, workers_per_process=2, optimizer_state=policy)
    straight = make_module()
    fit(straight, twist(**kw), max_steps=7, batch_size=8, n=32)

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    first = make_module()
    fit(first, twist(**kw), max_steps=4, batch_size=8, callbacks=[SubnetResampling(), ckpt], root=tmp_path, n=32)
    resumed = make_module(seed=123)  # different init: everything must come from the checkpoint
    fit(resumed, twist(**kw), max_steps=7, batch_size=8, callbacks=[SubnetResampling()],
        ckpt_path=str(tmp_path / "step=4.ckpt"), n=32)
    assert_same(params(resumed), params(straight))


def test_checkpoint_holds_the_full_central_model_loadable_without_the_strategy(tmp_path):
    m = make_module()
    trainer = fit(m, twist(variant="true", n_sub=2, common="none", sync_every=2, workers_per_process=2), max_steps=3)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    gpt = GPT(GPTConfig(**SHAPE))
    gpt.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    assert_same({k: v for k, v in gpt.state_dict().items()}, params(m))
    again = TwISTLitModule.load_from_checkpoint(tmp_path / "last.ckpt")
    assert_same(params(again), params(m))


def test_inactive_units_do_not_move_within_a_round():
    """AdamW momentum and weight decay must not touch units a masked worker does not hold."""

    class Probe(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            strategy = trainer.strategy
            for w in strategy.workers:  # 4 virtual workers: full-size values each
                held = w.mask
                assert held.sum() < held.numel()
                assert torch.equal(w.values[~held], strategy.central[~held])
                assert (w.values[held] - strategy.central[held]).abs().max() > 0
            self.checked = trainer.global_step

    m, probe = make_module(), Probe()
    fit(m, twist(variant="masked", n_sub=1, common="none", sync_every=100, workers_per_process=4), max_steps=3,
        batch_size=8, callbacks=[probe])
    assert probe.checked == 3


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(variant="sparse"), "twist.variant"),
        (dict(sync_every=0), "twist.sync_every"),
        (dict(workers_per_process=0), "twist.workers_per_process"),
        (dict(optimizer_state="keep"), "twist.optimizer_state"),
        (dict(n_sub="half"), "twist.n_sub"),
    ],
)
def test_bad_settings_fail_at_construction(kw, match):
    with pytest.raises(ValueError, match=match):
        TwISTStrategy(**kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(variant="hybrid"), "hybrid"),
        (dict(n_sub=1, common="none", workers_per_process=2), "cover"),
        (dict(n_sub=9), "n_sub"),
    ],
)
def test_impossible_settings_fail_before_training(kw, match):
    m = make_module()
    before = params(m)
    with pytest.raises(ValueError, match=match):
        fit(m, twist(**kw), max_steps=2)
    assert_same(params(m), before)


def test_model_without_a_gpt_is_not_partitionable():
    from lightning.pytorch.demos.boring_classes import BoringModel

    with pytest.raises(ValueError, match="not partitionable"):
        L.Trainer(accelerator="cpu", devices=1, strategy=twist(), max_steps=1, logger=False,
                  enable_progress_bar=False).fit(BoringModel())


def test_resampling_schedule_changes_the_sync_interval():
    class Rounds(L.Callback):
        rounds: list = []

        def on_train_batch_end(self, trainer, *args):
            self.rounds.append(trainer.strategy.round)

    probe = Rounds()
    fit(make_module(), twist(variant="masked", n_sub=2, common="none", workers_per_process=2, schedule={0: 1, 4: 2}),
        max_steps=8, batch_size=8, callbacks=[probe])
    assert probe.rounds == [1, 2, 3, 4, 4, 5, 5, 6]  # every step for 4 steps, then every second step


@pytest.mark.parametrize("schedule, match", [({0: 0}, r"twist\.schedule\[0\]=0"), ({-1: 3}, "from_step -1"),
                                             ([1, 2], "must be a mapping")])
def test_bad_schedule_is_refused(schedule, match):
    with pytest.raises(ValueError, match=match):
        TwISTStrategy(schedule=schedule)


@pytest.fixture(scope="module")
def carried():
    out = {}
    for variant in ("masked", "true"):
        strategy = twist(variant=variant, n_sub=2, common="none", sync_every=2, workers_per_process=2,
                         optimizer_state="carry")
        m = make_module()
        fit(m, strategy, max_steps=5, batch_size=8)
        out[variant] = (params(m), strategy)
    return out


def test_carried_moments_give_the_same_parameters_masked_and_physical(carried):
    assert_same(carried["true"][0], carried["masked"][0])


def test_carry_keeps_averaged_moments_across_a_resample(carried):
    _, strategy = carried["true"]
    assert strategy.central_moments is not None and strategy.central_moments["exp_avg_sq"].abs().max() > 0
    state = next(iter(strategy.workers[0].optimizer_state.values()))
    assert float(state["step"]) == 5 and state["exp_avg_sq"].abs().max() > 0  # sliced, step count continues
    reset = make_module()
    fit(reset, twist(variant="true", n_sub=2, common="none", sync_every=2, workers_per_process=2), max_steps=5,
        batch_size=8)
    assert any((params(reset)[k] - carried["true"][0][k]).abs().max() > 1e-6 for k in params(reset))


def test_carry_needs_adam():
    with pytest.raises(ValueError, match="carry"):
        fit(make_module("sgd"), twist(n_sub=2, common="none", workers_per_process=2, optimizer_state="carry"),
            max_steps=1, batch_size=8)


# ---- the outer step (DiLoCo's Nesterov on central - average) ------------------------------------------------------
OUTER_LR, OUTER_MU = 0.5, 0.9


def flat_sgd_module(lr: float, seed: int = 0, cls=TwISTLitModule) -> TwISTLitModule:
    torch.manual_seed(seed)
    # a flat learning rate: an outer momentum of lr-scaled pseudo-gradients equals SGD's momentum only then
    return cls(GPTConfig(**SHAPE), lr=lr, warmup_steps=0, min_lr_ratio=1.0, optimizer="sgd", weight_decay=0.1)


class NesterovSGDModule(TwISTLitModule):
    """The reference: plain training with torch.optim.SGD(lr, momentum, nesterov=True) and the same schedule."""

    def configure_optimizers(self):
        out = super().configure_optimizers()
        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in out["optimizer"].param_groups]
        opt = torch.optim.SGD(groups, lr=self.hparams.lr, momentum=OUTER_MU, nesterov=True)
        lam = out["lr_scheduler"]["scheduler"].lr_lambdas[0]
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lam),
                                                   "interval": "step"}}


def test_outer_step_with_lr_one_and_no_momentum_is_plain_averaging_exactly():
    kw = dict(variant="masked", n_sub=2, common="none", sync_every=2, workers_per_process=2)
    plain, outer = make_module(), make_module()
    fit(plain, twist(**kw), max_steps=6, batch_size=8)
    fit(outer, twist(**kw, outer="nesterov", outer_lr=1.0, outer_momentum=0.0), max_steps=6, batch_size=8)
    a, b = params(plain), params(outer)
    assert all(torch.equal(a[k], b[k]) for k in a)
    moved = make_module()
    fit(moved, twist(**kw, outer="nesterov", outer_lr=0.7, outer_momentum=0.9), max_steps=6, batch_size=8)
    assert any(not torch.allclose(a[k], params(moved)[k]) for k in a)  # the outer step does change the run


@pytest.mark.parametrize("variant", ["masked", "true"])
def test_outer_nesterov_with_full_subnets_sync_every_step_equals_nesterov_sgd(variant):
    """Full subnets, plain SGD inside, sync every step (2 ranks): the outer Nesterov step is data-parallel training
    with SGD(lr = inner_lr * outer_lr, momentum = outer_momentum, nesterov=True)."""
    inner = 0.5
    tw = flat_sgd_module(inner)
    fit(tw, twist(variant=variant, n_sub=1.0, sync_every=1, outer="nesterov", outer_lr=OUTER_LR,
                  outer_momentum=OUTER_MU, start_method="spawn"), devices=2, max_steps=5)
    ref = flat_sgd_module(inner * OUTER_LR, cls=NesterovSGDModule)
    fit(ref, reference_ddp(), devices=2,
        max_steps=5)
    init = params(flat_sgd_module(inner))
    assert any((init[k] - params(ref)[k]).abs().max() > 1e-3 for k in init)  # training moved the weights
    assert_same(params(tw), params(ref))


def test_resume_mid_round_keeps_the_outer_momentum(tmp_path):
    kw = dict(variant="masked", n_sub=2, common="none", sync_every=3, workers_per_process=2, outer="nesterov",
              outer_lr=0.7, outer_momentum=0.9)
    straight = make_module()
    fit(straight, twist(**kw), max_steps=10, batch_size=8, n=32)
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1, filename="{step}")
    first = make_module()
    fit(first, twist(**kw), max_steps=8, batch_size=8, callbacks=[SubnetResampling(), ckpt], root=tmp_path, n=32)
    resumed = make_module(seed=123)
    fit(resumed, twist(**kw), max_steps=10, batch_size=8, callbacks=[SubnetResampling()],
        ckpt_path=str(tmp_path / "step=8.ckpt"), n=32)
    assert_same(params(resumed), params(straight), atol=0)


@pytest.mark.parametrize("kw, match", [
    (dict(outer="adam"), "twist.outer='adam'"),
    (dict(outer="nesterov", outer_lr=0.0), "twist.outer_lr=0.0"),
    (dict(outer="nesterov", outer_lr=-1), "twist.outer_lr=-1"),
    (dict(outer="nesterov", outer_momentum=1.0), "twist.outer_momentum=1.0"),
    (dict(outer="nesterov", outer_momentum=-0.1), "twist.outer_momentum=-0.1"),
])
def test_bad_outer_settings_fail_at_construction(kw, match):
    with pytest.raises(ValueError, match=match.replace(".", r"\.")):
        TwISTStrategy(**kw)


def test_two_processes_sharded_equal_unsharded_and_resume_mid_round_bit_for_bit(tmp_path):
    """The sharded central model (the default with several processes) through Lightning: the same parameters as
    the unsharded all_gather sync, a checkpoint that holds the whole model and the whole outer momentum, and a
    resumed two-process run that continues mid-round exactly."""
    kw = dict(variant="hybrid", n_sub=2, common="none", sync_every=3, optimizer_state="carry", outer="nesterov",
              outer_lr=0.8, outer_momentum=0.5, start_method="spawn")
    runs = {}
    for shard in (True, False):
        runs[shard] = make_module()
        fit(runs[shard], twist(shard_central=shard, **kw), devices=2, max_steps=7, n=32)
    assert_same(params(runs[True]), params(runs[False]), atol=0)
    assert any(not torch.equal(v, params(make_module())[k]) for k, v in params(runs[True]).items())

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    fit(make_module(), twist(**kw), devices=2, max_steps=4, callbacks=[SubnetResampling(), ckpt], root=tmp_path,
        n=32)
    saved = torch.load(tmp_path / "step=4.ckpt", weights_only=False)
    assert saved["twist"]["central_at_round_start"] is True  # the outer step keeps its shard: the round's start
    gpt = GPT(GPTConfig(**SHAPE))  # the whole central model, loadable without the strategy
    gpt.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")})
    assert saved["twist"]["outer_buffer"].numel() == sum(p.numel() for p in gpt.parameters())
    resumed = make_module(seed=123)
    fit(resumed, twist(**kw), devices=2, max_steps=7, callbacks=[SubnetResampling()],
        ckpt_path=str(tmp_path / "step=4.ckpt"), n=32)
    assert_same(params(resumed), params(runs[True]), atol=0)


def test_two_processes_keep_central_false_equals_kept_and_resumes_mid_round_bit_for_bit(tmp_path):
    """keep_central=False through Lightning: the same trained model as the kept shard, a mid-round checkpoint that
    holds a whole model (the holders' average at step 4) and a resumed run that continues exactly."""
    kw = dict(variant="true", n_sub=2, common="none", sync_every=3, start_method="spawn")
    runs = {}
    for keep in (True, False):
        runs[keep] = make_module()
        fit(runs[keep], twist(keep_central=keep, **kw), devices=2, max_steps=7, n=32)
    assert_same(params(runs[False]), params(runs[True]), atol=0)

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    fit(make_module(), twist(keep_central=False, **kw), devices=2, max_steps=4,
        callbacks=[SubnetResampling(), ckpt], root=tmp_path, n=32)
    saved = torch.load(tmp_path / "step=4.ckpt", weights_only=False)
    gpt = GPT(GPTConfig(**SHAPE))
    gpt.load_state_dict({k.removeprefix("model."): v for k, v in saved["state_dict"].items() if k.startswith("model.")})
    assert saved["twist"]["step_in_round"] == 1
    assert saved["twist"]["central_at_round_start"] is False  # a look at the holders' average at step 4
    resumed = make_module(seed=123)
    fit(resumed, twist(keep_central=False, **kw), devices=2, max_steps=7, callbacks=[SubnetResampling()],
        ckpt_path=str(tmp_path / "step=4.ckpt"), n=32)
    assert_same(params(resumed), params(runs[False]), atol=0)


def test_two_processes_keep_central_by_default_with_gradient_accumulation_equals_kept():
    """The default drops the central shard between syncs (true variant, float32, no outer step); with Lightning's
    gradient accumulation (2 micro-batches per step, syncs every 3 steps) it trains the kept run's model bit for
    bit, and its mid-round checkpoint says its central model is a look, not the round's start."""
    kw = dict(variant="true", n_sub=2, common="none", sync_every=3, start_method="spawn")
    runs = {}
    for keep in (True, None):
        os.environ["MASTER_PORT"] = str(free_port())
        runs[keep] = make_module()
        strategy = twist(keep_central=keep, **kw)
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=5, accumulate_grad_batches=2,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        trainer.fit(runs[keep], loader(2, 48))
        assert strategy.keep_central is (keep is True)
    init = params(make_module())
    assert any((init[k] - params(runs[None])[k]).abs().max() > 1e-3 for k in init)  # training moved the weights
    assert_same(params(runs[None]), params(runs[True]), atol=0)


def test_two_processes_keep_central_false_validates_between_syncs_without_changing_training():
    """keep_central=False with Lightning's validation: the sanity check (shard just made), validations mid-round
    (a look at the holders' average now, a collective on both ranks) and after a sync leave training as it is,
    and the masked variant trains the same model as with the shard kept."""
    kw = dict(variant="masked", n_sub=2, common="none", sync_every=3, start_method="spawn")
    runs = {}
    for keep, validate in ((True, True), (False, True), (False, False)):
        os.environ["MASTER_PORT"] = str(free_port())
        runs[keep, validate] = make_module()
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=twist(keep_central=keep, **kw), max_steps=7,
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, val_check_interval=2 if validate else None,
                            limit_val_batches=2 if validate else 0, num_sanity_val_steps=1)
        trainer.fit(runs[keep, validate], loader(4, 32), loader(4, 16, seed=2))
    assert_same(params(runs[False, True]), params(runs[True, True]), atol=0)
    assert_same(params(runs[False, True]), params(runs[False, False]), atol=0)
