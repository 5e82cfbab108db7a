"""python -m twist_lightning.evaluate: the Hydra CLI on a real checkpoint, the robustness grid and errors."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import twist_lightning.evaluate as evaluate_cli
from test_checkpoint import fit_tiny_checkpoint
from twist_lightning import checkpoint_data, config, evaluation, plots, tables
from twist_lightning.evaluate import register_configs, run_from_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_tiny_checkpoint(tmp_path_factory.mktemp("eval-ckpt"))


def compose_eval(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("evaluate", overrides=["progress=false", *overrides])


def test_cli_compose_writes_json_and_plot(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "res" / "eval.json"
    cfg = compose_eval(f"checkpoint={ckpt}", "sizes=[1,2,3,4]", "samples=3", "common=none", "max_batches=2",
                       f"out={out}")
    result = run_from_config(cfg)
    saved = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert {"checkpoint", "model", "data", "split", "full", "sizes", "samples", "seed", "tokens"} <= set(saved)
    assert [r["heads"] for r in saved["sizes"]] == [1, 2, 3, 4] and saved["split"] == "val"
    assert {"random_ppl", "mean_ppl", "std_ppl", "min_ppl", "max_ppl", "importance_ppl"} <= set(saved["sizes"][0])
    assert saved["full"]["ppl"] == pytest.approx(result["full"]["ppl"]) and not saved["vocab_remapped"]
    assert saved["sizes"][0]["mean_ppl"] >= saved["sizes"][-1]["mean_ppl"] * 0.9  # sanity, not a claim


def test_other_corpus_is_remapped_through_the_saved_vocab(ckpt: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.txt"
    other.write_text("To be, or not to be, that is the question.\n" * 200)
    cfg = compose_eval(f"checkpoint={ckpt}", "sizes=[2]", "samples=1", "common=none", "data.source=local",
                       f"data.path={other}", f"data.cache_dir={tmp_path / 'cache'}", f"out={tmp_path / 'o.json'}",
                       "plot=false")
    result = run_from_config(cfg)
    assert result["vocab_remapped"] and result["data"]["path"] == str(other)


def test_checkpoint_without_data_settings_needs_data_overrides(ckpt: Path, tmp_path: Path) -> None:
    raw = torch.load(ckpt, weights_only=True)
    del raw["datamodule_hyper_parameters"]
    bare = tmp_path / "bare.ckpt"
    torch.save(raw, bare)
    with pytest.raises(ValueError, match="has no datamodule settings.*data.source"):
        run_from_config(compose_eval(f"checkpoint={bare}", "sizes=[1]", "samples=1", f"out={tmp_path / 'x.json'}"))
    with pytest.raises(ValueError, match=r"sizes\[0\]=9 is out of range"):
        run_from_config(compose_eval(f"checkpoint={ckpt}", "sizes=[9]", f"out={tmp_path / 'y.json'}"))
    with pytest.raises(FileNotFoundError, match="checkpoint="):
        run_from_config(compose_eval(f"checkpoint={tmp_path / 'nope.ckpt'}"))
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_grid_csv_and_heatmap(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.csv"
    cfg = compose_eval("grid=true", f"checkpoints=[{ckpt},{ckpt}]", "train_sizes=[2,null]", "sizes=[1,2]",
                       "samples=2", "common=none", "max_batches=1", f"out={out}")
    run_from_config(cfg)
    rows = list(csv.DictReader(out.open()))
    assert [(r["train_size"], r["heads"]) for r in rows] == [("2", "1"), ("2", "2"), ("dense", "1"), ("dense", "2")]
    assert out.with_suffix(".png").stat().st_size > 0 and json.loads(out.with_suffix(".json").read_text())["rows"]
    with pytest.raises(ValueError, match="training size is unknown"):
        run_from_config(compose_eval("grid=true", f"checkpoints=[{ckpt}]", f"out={out}"))


def test_cli_subprocess(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli" / "eval.json"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "twist_lightning.evaluate", f"checkpoint={ckpt}", "sizes=[2]", "samples=1",
         "common=none", "max_batches=1", "progress=false", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["sizes"][0]["heads"] == 2 and "mean_ppl" in proc.stdout


def test_cli_pruning_methods_beside_random_subnets(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "methods" / "eval.json"
    cfg = compose_eval(f"checkpoint={ckpt}", "sizes=[1,2,4]", "samples=2", "common=none", "max_batches=2",
                       "method=[random,importance,activation,flap,reconstruct]", "calib_samples=16", f"out={out}")
    result = run_from_config(cfg)
    saved = json.loads(out.read_text())
    assert saved["calibration"] == {"split": "train", "sequences": 16, "tokens": 16 * 32, "seed": 0}
    for row in saved["sizes"]:
        assert list(row["methods"]) == ["random", "magnitude", "activation", "flap", "reconstruct"]
        assert row["methods"]["random"] == row["mean_ppl"]
        # magnitude pruning is the importance subnet (same units, same scaling), now evaluated physically
        assert row["methods"]["magnitude"] == pytest.approx(row["importance_ppl"], rel=1e-5)
        assert all(math.isfinite(p) for p in row["methods"].values())
    full = saved["sizes"][-1]  # size n_head: every method is the full model, and closes no gap (there is none)
    assert all(p == pytest.approx(saved["full"]["ppl"], rel=1e-5) for p in full["methods"].values())
    assert full["gap_closed"]["flap"] is None
    assert result["sizes"][0]["gap_closed"]["random"] == pytest.approx(0.0)
    assert out.with_suffix(".png").stat().st_size > 0


def test_pruning_settings_fail_before_any_work(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"method\[1\]='obs' is not a pruning method"):
        run_from_config(compose_eval(f"checkpoint={ckpt}", "method=[flap,obs]", f"out={tmp_path / 'a.json'}"))
    with pytest.raises(ValueError, match="structure='global'"):
        run_from_config(compose_eval(f"checkpoint={ckpt}", "method=[flap]", "structure=global",
                                     f"out={tmp_path / 'b.json'}"))
    with pytest.raises(ValueError, match="calib_samples=0"):
        run_from_config(compose_eval(f"checkpoint={ckpt}", "sizes=[2]", "samples=1", "method=[flap]",
                                     "calib_samples=0", "max_batches=1", f"out={tmp_path / 'c.json'}"))
    with pytest.raises(ValueError, match="damp=1.5"):
        run_from_config(compose_eval(f"checkpoint={ckpt}", "method=[reconstruct]", "damp=1.5",
                                     f"out={tmp_path / 'd.json'}"))
    with pytest.raises(ValueError, match="structure=adaptive is FLAP's allocation"):
        run_from_config(compose_eval(f"checkpoint={ckpt}", "method=[activation]", "structure=adaptive",
                                     f"out={tmp_path / 'e.json'}"))
    assert not any((tmp_path / n).exists() for n in ("a.json", "b.json", "c.json", "d.json", "e.json"))


def test_names_that_moved_out_are_re_exported() -> None:
    homes = {evaluation: ["evaluate_checkpoint", "evaluate_grid", "evaluate_subnets", "pick_device",
                          "resolve_methods", "resolve_sizes", "subnet_blueprints", "train_size_of"],
             checkpoint_data: ["CORPUS_KEYS", "build_datamodule", "collect_batches", "train_calibration"],
             tables: ["TABLE_COLUMNS", "table_columns", "table_rows", "write_csv"],
             plots: ["plot_boxes", "plot_grid"], config: ["EvalDataConfig", "EvaluateConfig", "register_configs"]}
    for home, names in homes.items():
        for name in names:
            assert getattr(evaluate_cli, name) is getattr(home, name), name
