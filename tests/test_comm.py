"""Communication accounting: Lightning DDP (counting comm hook, gloo on CPU) against TwIST, on 2 spawned ranks.

Spawned ranks cannot hand their counters back (the spawn launcher returns rank 0's weights only), so a callback
writes each rank's figures to ``tmp_path/rank{r}.json`` once training (TwIST's final sync included) is over.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import StrategyRegistry
from torch.utils.data import DataLoader, TensorDataset

import twist_lightning  # noqa: F401  (registers "twist")
from twist_lightning import TwISTLitModule, TwISTStrategy
from twist_lightning.comm import CountingDDPStrategy
from twist_lightning.model import GPT, GPTConfig

SHAPE = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)
TIMEOUT = timedelta(seconds=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordCounter(L.Callback):
    """Writes this rank's collective counter and step count after fit (TwIST's last sync runs in on_train_end)."""

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def on_fit_end(self, trainer, pl_module) -> None:
        c = trainer.strategy.counter
        record = {"rank": trainer.global_rank, "bytes": c.bytes, "calls": c.calls, "received": c.received,
                  "steps": trainer.global_step}
        Path(self.folder, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def run_two_ranks(strategy, folder: Path, max_steps: int) -> list[dict]:
    torch.manual_seed(0)
    module = TwISTLitModule(GPTConfig(**SHAPE), lr=1e-2, warmup_steps=1, decay_steps=20)
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, SHAPE["vocab_size"], (64, SHAPE["block_size"] + 1), generator=g)
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=4)
    os.environ["MASTER_PORT"] = str(free_port())  # a just-closed port can still be in TIME_WAIT
    folder.mkdir(parents=True, exist_ok=True)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=max_steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[RecordCounter(folder)])
    trainer.fit(module, loader)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


def param_bytes(config: GPTConfig) -> int:
    return sum(p.numel() * p.element_size() for p in GPT(config).parameters())  # tied wte/lm_head counted once


def test_registry_names_and_rejected_hook_arguments():
    CountingDDPStrategy.register_strategies(StrategyRegistry)  # what twist_lightning/__init__.py does on import
    for name, method in (("ddp_counting", "popen"), ("ddp_counting_spawn", "spawn")):
        assert name in StrategyRegistry
        strategy = StrategyRegistry.get(name)
        assert isinstance(strategy, CountingDDPStrategy) and strategy._start_method == method
        assert strategy.counter.bytes == 0 and strategy.counter.calls == 0
    with pytest.raises(ValueError, match="ddp_comm_hook"):
        CountingDDPStrategy(ddp_comm_hook=lambda state, bucket: None)


def test_ddp_counts_every_gradient_byte_and_twist_counts_held_vectors(tmp_path):
    steps, sync_every, n_sub = 5, 2, 2
    full = param_bytes(GPTConfig(**SHAPE))
    held = param_bytes(GPTConfig(**SHAPE, layer_heads=[n_sub] * 3, layer_ffn_units=[n_sub] * 3))  # C = none
    assert held < full

    ddp = run_two_ranks(CountingDDPStrategy(start_method="spawn", timeout=TIMEOUT), tmp_path / "ddp", steps)
    for rank in ddp:  # gloo ran the counting comm hook on CPU: every parameter's gradient, every step
        assert rank["steps"] == steps
        assert rank["bytes"] == steps * full
        assert rank["calls"] >= steps  # at least one bucket a step

    twist = run_two_ranks(TwISTStrategy(variant="masked", n_sub=n_sub, common="none", sync_every=sync_every,
                                        shard_central=False, start_method="spawn", timeout=TIMEOUT),
                          tmp_path / "twist", steps)
    syncs = steps // sync_every + (1 if steps % sync_every else 0)  # + the final partial round at train end
    for rank in twist:
        assert rank["steps"] == steps
        assert rank["calls"] == syncs == 3
        assert rank["bytes"] == syncs * held  # one all_gather of the held vector per sync
        assert rank["received"] == syncs * held  # the other rank's

    sharded = run_two_ranks(TwISTStrategy(variant="masked", n_sub=n_sub, common="none", sync_every=sync_every,
                                          start_method="spawn", timeout=TIMEOUT), tmp_path / "sharded", steps)
    for rank in sharded:  # two all_to_alls a sync; a rank keeps the rows it owns, so it sends less than held
        assert rank["calls"] == 2 * syncs
        assert 0 < rank["bytes"] < 2 * syncs * held and 0 < rank["received"] < 2 * syncs * held
    assert sum(r["bytes"] for r in sharded) == sum(r["received"] for r in sharded)  # what leaves one rank arrives

    # the comparison the benchmark reports: steady-state bytes a step, TwIST against DDP
    ratio = (held / sync_every) / (ddp[0]["bytes"] / steps)
    assert ratio == pytest.approx(held / (full * sync_every))
    assert ratio < 1 / sync_every


def test_strategy_bench_tiny_writes_report(tmp_path, capsys):
    from twist_lightning.bench.__main__ import BENCHES, main

    assert "strategy" in BENCHES
    out = tmp_path / "strategy.json"
    assert main(["strategy", "--preset", "tiny", "--steps", "4", "--sync-every", "2", "--warmup", "1",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"bench", "machine", "config", "rows", "targets"} and report["bench"] == "strategy"
    names = [r["name"] for r in report["rows"]]
    assert names == ["tiny ddp", "tiny masked C=none", "tiny true C=none", "tiny hybrid C=none",
                     "tiny true C=first+last", "tiny true C=none bf16", "tiny true C=none unsharded",
                     "tiny true C=none kept"]
    for row in report["rows"]:
        assert {"step_s", "bytes_per_step", "bytes_per_sync", "train_state_bytes", "central_bytes",
                "comm_ratio", "time_ratio", "state_ratio", "per_rank"} <= set(row)
        assert len(row["per_rank"]) == 2 and row["step_s"] > 0
    ddp, masked, true = report["rows"][:3]
    # DDP at both ends of the pass; each TwIST row's ratio is to DDP's step interpolated to the row's place
    assert len(ddp["step_s_per_pass"]) == 2
    for row in report["rows"][1:]:
        (reference,) = row["ddp_reference_s"]
        assert min(ddp["step_s_per_pass"]) <= reference <= max(ddp["step_s_per_pass"])
        assert row["time_ratio"] == pytest.approx((row["step_s_per_pass"][0] + row["sync_s"] / 2) / reference)
    assert ddp["bytes_per_step"] == param_bytes(GPTConfig.from_preset("tiny", n_layer=3))
    assert ddp["central_bytes"] == 0 and masked["central_bytes"] == true["central_bytes"] > 0
    assert masked["bytes_per_sync"] == true["bytes_per_sync"] and 0 < masked["comm_ratio"] < 1
    assert true["train_state_bytes"] < ddp["train_state_bytes"]
    keys = {"name", "value", "target", "met"}
    assert report["targets"] and all(keys <= set(t) <= keys | {"kept_ratio", "kept_floor"} for t in report["targets"])
    memory = next(t for t in report["targets"] if "bytes held" in t["name"])
    # the default (no shard between syncs) holds less than the least any kept shard can
    assert 0 < memory["value"] < memory["kept_floor"] <= memory["kept_ratio"]
    assert "tiny ddp" in capsys.readouterr().out
    # every byte a rank holds, the bf16 row's halved payload, the timed syncs, and the traffic table by S
    bf16, unsharded, kept = report["rows"][5:8]
    # sharded, bf16 halves both ways (to the owners and back)
    assert true["sync_s"] > 0 and bf16["bytes_per_step"] == pytest.approx(0.5 * true["bytes_per_step"], rel=0.02)
    assert true["sharded"] and bf16["sharded"] and kept["sharded"] and not unsharded["sharded"]
    assert unsharded["central_bytes"] == param_bytes(GPTConfig.from_preset("tiny", n_layer=3))
    assert true["central_bytes"] < 0.6 * unsharded["central_bytes"]  # each of 2 ranks owns about half the rows
    assert true["received_per_sync"] < 2 * unsharded["received_per_sync"]
    for row in (kept, bf16, unsharded):  # the busiest rank's sum of the parts (each part: its busiest rank's)
        parts = ("train_state_bytes", "central_bytes", "moments_bytes", "outer_bytes", "index_bytes", "reference_bytes")
        assert row["train_state_bytes"] + row["central_bytes"] * 0.9 < row["rank_total_bytes"] <= sum(row[k] for k in parts)
    assert unsharded["rank_total_bytes"] == sum(unsharded[k] for k in parts)  # equal shards: every rank alike
    assert bf16["reference_bytes"] > 0 == true["reference_bytes"]
    assert ddp["rank_total_bytes"] == ddp["train_state_bytes"]
    # the default (keep_central=None: false here): between syncs the rank holds its training state and indices
    # only; at a sync, what the kept run holds (the shard it makes, the buffers), less than the kept run's weights
    # + moments + grads + shard
    assert true["rank_total_bytes"] == true["train_state_bytes"] + true["index_bytes"]
    assert true["rank_total_bytes"] < kept["rank_total_bytes"] - 0.9 * kept["central_bytes"]
    assert true["sync_peak_bytes"] == kept["sync_peak_bytes"] > kept["central_bytes"] + kept["param_bytes"]
    assert ddp["sync_peak_bytes"] == ddp["rank_total_bytes"]
    traffic = {t["workers"]: t for t in report["config"]["traffic"]}
    assert sorted(traffic) == [2, 3, 4, 8, 64, 512] and all(traffic[s]["run"] == (s <= 4) for s in traffic)
    for s in (2, 3, 4):  # unsharded, an all_gather: each rank receives the other S - 1 workers' held vectors
        assert traffic[s]["unsharded_received_per_sync"] == (s - 1) * traffic[s]["unsharded_sent_per_sync"]
        # sharded: what the ranks counted is what the accounting used for S = 8, 64, 512 computes
        assert traffic[s]["received_per_sync"] == traffic[s]["computed_received_per_sync"]
    assert traffic[512]["received_over_model"] < 2.5 < traffic[512]["unsharded_received_over_model"]
    assert any(t["name"].startswith("sharded: received bytes per rank") for t in report["targets"])


def test_the_process_group_is_destroyed_at_exit_once_per_process(monkeypatch, tmp_path):
    """Lightning destroys an NCCL group at exit but leaves gloo to interpreter finalization, where it can abort a
    finished rank; the strategies register one exit hook that destroys it while Python is still whole."""
    import atexit

    import torch.distributed as dist

    from twist_lightning import comm

    hooks = []
    monkeypatch.setattr(atexit, "register", hooks.append)
    monkeypatch.setattr(comm, "_EXIT_HOOK_REGISTERED", False)
    comm.destroy_process_group_at_exit()
    comm.destroy_process_group_at_exit()
    assert hooks == [comm._destroy_process_group]  # once, however many Trainers set up
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    hooks[0]()
    assert not dist.is_initialized()
    hooks[0]()  # nothing left to destroy: a no-op
