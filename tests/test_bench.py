"""Smoke tests for the benchmark CLI (shape of the report, not timing values)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from twist_lightning.bench.__main__ import BENCHES, main
from twist_lightning.bench.common import format_table, time_fn
from twist_lightning.bench.subnet import forward_flops_per_token
from twist_lightning.model import GPTConfig


def test_subnet_bench_tiny_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "subnet.json"
    assert main(["subnet", "--tiny", "--out", str(out), "--warmup", "0", "--repeats", "1"]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"bench", "machine", "config", "rows", "targets"} and report["bench"] == "subnet"
    assert {"cpu_count", "torch", "threads", "platform"} <= set(report["machine"])
    assert report["config"]["model"]["n_head"] == 4 and report["config"]["seq_len"] == 32
    assert [r["name"] for r in report["rows"]] == ["dense", "2/4 C=none", "1/4 C=none", "2/4 C=first+last"]
    for row in report["rows"]:
        assert {"params_M", "param_bytes", "flop_ratio", "time_s", "time_ratio"} <= set(row)
    assert report["rows"][0]["flop_ratio"] == 1.0 and report["rows"][1]["flop_ratio"] < 1.0
    assert report["targets"] and all(set(t) == {"name", "value", "target", "met"} for t in report["targets"])
    assert "dense" in capsys.readouterr().out  # console table


def test_dispatch_errors_and_registry() -> None:
    assert "subnet" in BENCHES
    assert main(["nope"]) == 2 and main([]) == 2 and main(["--help"]) == 0


def test_flops_and_helpers() -> None:
    cfg = GPTConfig.from_preset("gpt2")
    # 2 * (85M block weights + 38.6M LM head) + attention: the classic ~2N per token
    assert forward_flops_per_token(cfg, 256) == 2 * (12 * 12 * 768**2 + 768 * 50257) + 12 * 4 * 256 * 768
    half = GPTConfig.from_preset("gpt2", layer_heads=[6] * 12, layer_ffn_units=[6] * 12)
    assert forward_flops_per_token(half, 256) < forward_flops_per_token(cfg, 256)
    assert time_fn(lambda: None, warmup=0, repeats=3)["median_s"] >= 0
    table = format_table([{"a": 1.0, "b": "x"}], ["a", "b"]).splitlines()
    assert len(table) == 3 and table[0].split() == ["a", "b"]


def test_evaluate_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "evaluate.json"
    assert main(["evaluate", "--cases", "tiny", "--samples", "3", "--subnet-batch", "3", "--repeats", "1",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bench"] == "evaluate" and report["targets"] == []
    one, stacked = report["rows"]
    assert (one["subnet_batch"], stacked["subnet_batch"]) == (1, 3) and one["subnets"] == stacked["subnets"] == 3
    assert stacked["max_rel_ppl_diff"] < 1e-5  # both ways give the same perplexities
    assert one["speedup"] == 1.0 and stacked["speedup"] == pytest.approx(one["time_s"] / stacked["time_s"])
    with pytest.raises(ValueError, match="unknown"):
        main(["evaluate", "--cases", "huge"])


def test_prune_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "prune.json"
    assert main(["prune", "--preset", "tiny", "--samples", "8", "--seq-len", "16", "--common", "none", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bench"] == "prune" and report["config"]["calibration_tokens"] == 8 * 16
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["random", "magnitude", "activation", "flap", "reconstruct"]
    assert rows["random"]["calibration_s"] == 0.0 and rows["flap"]["calibration_s"] > 0.0  # the shared pass
    assert all(r["total_s"] == pytest.approx(r["calibration_s"] + r["method_s"]) for r in rows.values())
    assert all(r["params_ratio"] < 1.0 for r in rows.values())
    assert len(report["targets"]) == 5 and all(t["target"] == "<= 300" for t in report["targets"])


def test_inference_bench_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twist_lightning.bench.__main__ import BENCHES, main

    out = tmp_path / "inference.json"
    argv = ["inference", "--preset", "tiny", "--out", str(out), "--warmup", "0", "--repeats", "1",
            "--latency-repeats", "1"]
    assert "inference" in BENCHES and main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"bench", "machine", "config", "rows", "targets"} and report["bench"] == "inference"
    assert [r["name"] for r in report["rows"]] == ["dense", "3/4", "2/4", "1/4"]
    assert report["config"]["batch"] == 8 and report["config"]["seq_len"] == 32  # capped at the tiny block_size
    ratios = [r["flop_ratio"] for r in report["rows"]]
    assert ratios[0] == 1.0 and ratios == sorted(ratios, reverse=True)
    assert all(r["throughput_tok_s"] > 0 and r["latency_ms"] > 0 for r in report["rows"])
    assert report["targets"][0]["name"].startswith("2/4 batch-8 speedup") and "dense" in capsys.readouterr().out


def test_inference_bench_hf_rows(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from twist_lightning.bench.inference import run

    report = run(preset="tiny", warmup=0, repeats=1, latency_repeats=1, hf=True)
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["dense", "3/4", "2/4", "1/4", "hf dense", "hf 3/4", "hf 2/4", "hf 1/4"]
    for name in ("dense", "3/4", "2/4", "1/4"):  # the HF export is exactly as big as the subnet it came from
        assert rows[f"hf {name}"]["params_M"] == rows[name]["params_M"]
        assert rows[f"hf {name}"]["flop_ratio"] == rows[name]["flop_ratio"]
    assert rows["hf dense"]["speedup"] == 1.0 and [t["name"][:6] for t in report["targets"]] == ["2/4 ba", "hf 2/4"]


def test_data_bench_bundled(tmp_path: Path) -> None:
    out = tmp_path / "data.json"
    assert main(["data", "--warmup", "0", "--repeats", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["bench"] == "data" and report["config"]["source"] == "bundled" and report["config"]["tokens"] > 0
    rows = {r["arm"]: r for r in report["rows"]}
    assert {"cold", "datasets", "cached"} <= set(rows) and all(r["median_s"] > 0 for r in rows.values())
    assert [t["name"] for t in report["targets"]] == ["cold build seconds", "cached reload seconds"]


def test_ratios_are_medians_of_interleaved_pairs(tmp_path: Path) -> None:
    from twist_lightning.bench.common import pair_ratios

    # one slow pair (load on both halves) moves neither the median nor, unlike min/min, the other pairs
    pairs = pair_ratios([2.0, 4.0, 30.0], [1.0, 2.0, 10.0])
    assert (pairs["median"], pairs["min"], pairs["max"]) == (2.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="equally long"):
        pair_ratios([1.0], [1.0, 2.0])
    out = tmp_path / "subnet.json"
    assert main(["subnet", "--tiny", "--out", str(out), "--warmup", "0", "--repeats", "3"]) == 0
    for row in json.loads(out.read_text())["rows"]:
        assert row["time_ratio_min"] <= row["time_ratio"] <= row["time_ratio_max"] and len(row["time_ratios"]) == 3


def test_strategy_rows_keep_the_wait_for_the_slower_rank_out_of_the_sync(tmp_path: Path) -> None:
    from twist_lightning.bench.strategy import _row

    def rank(r: int, step: float, wait: list[float], work: list[float]) -> dict:
        return {"rank": r, "threads": 1, "steps": 8, "times_s": [step] * 4, "sync_times_s": work,
                "sync_wait_times_s": wait,
                "state": {"total": 10, "params": 4, "grads": 4, "optimizer": 2}, "bytes": 60, "calls": 4,
                "received": 30, "syncs": 2, "sharded": True, "central_bytes": 8, "index_bytes": 1,
                "held_peak_bytes": 18, "sync_peaks": [20 + r, 25]}

    # rank 0 is 0.5 s a step faster and waits for rank 1 at both syncs; the sync itself is 0.4 s on both
    passes = [[rank(0, 1.0, [2.0, 2.0], [0.4, 0.4]), rank(1, 1.5, [0.0, 0.0], [0.4, 0.4])]]
    row = _row("tiny", "true C=none", "true", passes, warmup=0, sync_every=4)
    assert row["step_s"] == 1.5 and row["sync_s"] == pytest.approx(0.4)
    assert row["sync_wait_s"] == pytest.approx(1.0) and row["sync_total_s"] == pytest.approx(1.4)
    assert row["step_amortized_s"] == pytest.approx(1.5 + 0.4 / 4)  # the wait is in the slower rank's steps
    # memory: the most held at a step's end, and the largest sync peak of any rank, both with the indices
    assert row["rank_total_bytes"] == 19 and row["sync_peak_bytes"] == 26


def test_strategy_passes_bracket_the_twist_rows_with_ddp_and_alternate_their_order() -> None:
    from twist_lightning.bench.strategy import ROWS, _pass_order

    twist = list(range(1, len(ROWS)))
    assert _pass_order(0) == [0, *twist, 0] and _pass_order(1) == [0, *twist[::-1], 0] == _pass_order(3)
    assert all(sorted(_pass_order(i)) == [0, 0, *twist] for i in range(4))  # every row once, DDP at both ends
