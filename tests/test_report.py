"""``python -m twist_lightning.report``: run folders (summaries, evaluations, grids) into one markdown report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from twist_lightning.checkpoint import load_gpt
from twist_lightning.report import collect, main, units_removed, write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _recipe_folder(tmp_path: Path) -> Path:
    """A recipe's layout from committed JSON: two runs with their overrides, an evaluation, a grid."""
    sweep = tmp_path / "multirun" / "golden"
    for job, name, overrides in ((0, "golden612_twist", ["twist.variant=masked"]),
                                 (1, "golden612_dp", ["twist.variant=none"])):
        run = sweep / str(job)
        (run / ".hydra").mkdir(parents=True)
        shutil.copy(RESULTS / f"{name}_summary.json", run / "summary.json")
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    shutil.copy(RESULTS / "prune_dp612_methods.json", sweep / "1" / "eval.json")
    grid = {"rows": [{"checkpoint": f"c{t}", "train_size": f"{t}/12", "heads": h, "mean_ppl": 100.0 + t + h}
                     for t in (3, 6) for h in (3, 6, 9)]}
    (sweep / "grid.json").write_text(json.dumps(grid))
    (sweep / "notes.json").write_text(json.dumps({"unrelated": 1}))  # ignored
    return sweep


def test_report_holds_every_table_and_is_reproducible_byte_for_byte(tmp_path: Path) -> None:
    sweep = _recipe_folder(tmp_path)
    found = collect([sweep])
    assert [len(found[k]) for k in ("run", "evaluate", "grid")] == [2, 1, 1]
    first = write_report([sweep], tmp_path / "a" / "report.md")
    text = first.read_text()
    twist = json.loads((RESULTS / "golden612_twist_summary.json").read_text())
    assert f"{twist['val_ppl']:.1f}" in text and "`twist.variant=masked`" in text
    assert "| 6/12 |" in text and "reconstruct" in text and "| 3/12 | 106.00 | 109.00 | 112.00 |" in text
    assert text.count("![") == 2 and (tmp_path / "a" / "report_1.png").stat().st_size > 1000
    again = write_report([sweep], tmp_path / "a" / "report.md")
    assert again.read_text() == text
    second = write_report([sweep], tmp_path / "b" / "report.md")  # a fresh folder: the same bytes, PNGs too
    assert second.read_text() == text
    for png in ("report_1.png", "report_2.png"):
        assert (tmp_path / "a" / png).read_bytes() == (tmp_path / "b" / png).read_bytes()


def test_units_removed_counts_every_layer() -> None:
    result = {"model": {"n_layer": 6, "n_head": 12, "ffn_groups": 12}, "common": [0, 5]}
    assert units_removed(result, 6, 6) == pytest.approx(4 * 12 / (6 * 24))  # 4 split layers lose half their units
    assert units_removed(result, 12, 12) == 0.0


def test_report_of_a_real_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_run import compose_train
    from twist_lightning.run import train

    monkeypatch.chdir(tmp_path)
    summary = train(compose_train(["twist=masked", "twist.workers_per_process=2", "twist.common=none",
                                   "trainer.max_steps=4", "module.warmup_steps=1", "data.batch_size=8"]))
    assert main([str(tmp_path), "--no-plots"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert f"| {summary['val_ppl']:.1f} |" in text and summary["subnet_size"] in text


def test_bad_folders_fail_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 1
    assert "no summary.json" in capsys.readouterr().err


def test_paper_claim_recipe_runs_end_to_end_with_tiny_overrides_and_reports(tmp_path: Path) -> None:
    """Every stage of recipe=paper_claim_cpu (pretrain, fine-tunes, final test evaluations), tiny, then its report."""
    import subprocess
    import sys

    sweep = tmp_path / "sweep"
    tiny = ["model.n_layer=3", "model.n_embd=48", "model.block_size=32", "model.vocab_size=300", "data.batch_size=8",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=2",
            "module.warmup_steps=1", "final_eval.samples=2", "final_eval.max_batches=1", "final_eval.calib_samples=4",
            "twist.eval_subnets=1", "~logger", "+trainer.enable_progress_bar=false"]
    proc = subprocess.run([sys.executable, "-m", "twist_lightning.run", "recipe=paper_claim_cpu", *tiny,
                           f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = sorted(sweep.glob("*/eval.json"))
    assert len(evals) == 7 and all(json.loads(e.read_text())["split"] == "test" for e in evals)
    plain = json.loads((sweep / "1" / "eval.json").read_text())
    assert set(plain["sizes"][0]["methods"]) == {"random", "magnitude", "activation", "flap", "reconstruct"}
    # byte fallback: no test token is unknown, and the fine-tunes keep the pretrained (byte-fallback) ids
    assert all(json.loads(e.read_text())["unk_share"] == 0 for e in evals)
    # the fine-tunes' test text went through the pretrained vocabulary (encoded whole as it was cached)
    assert plain["vocab_remapped"] and not json.loads((sweep / "0" / "eval.json").read_text())["vocab_remapped"]
    vocabs = [load_gpt(sweep / str(i) / "checkpoints" / "last.ckpt")[1] for i in range(7)]
    assert vocabs[0].byte_fallback and vocabs[0].size == 300 and all(v == vocabs[0] for v in vocabs)
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "## TwIST's random subnets against post-training pruning" in text and "| 6/12 |" in text
    assert "## Trained size x evaluated size" in text and "3/12" in text and "9/12" in text and "no scale" in text
    assert (sweep / "report_trained.png").is_file()


def test_committed_aggregation_report_is_reproduced_byte_for_byte(tmp_path: Path) -> None:
    """bench/results/aggregation/report.md is what the report command makes of the JSON beside it."""
    folder = RESULTS / "aggregation"
    copy = tmp_path / "aggregation"
    shutil.copytree(folder, copy)
    (copy / "report.md").unlink()
    assert main([str(copy), "--no-plots"]) == 0
    assert (copy / "report.md").read_text() == (folder / "report.md").read_text()


@pytest.mark.parametrize("name", ["paper_claim_cpu", "paper_claim_cpu_w96_gpt2ids"])
def test_committed_paper_claim_report_is_reproduced_byte_for_byte(tmp_path: Path, name: str) -> None:
    """bench/results/<name>/report.md is what the report command makes of the run JSON beside it (the recipe's
    run, and the earlier one with GPT-2's ids at 96 wide)."""
    folder = RESULTS / name
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    for made in [copy / "report.md", *copy.glob("report_*.png")]:
        made.unlink()
    assert main([str(copy)]) == 0
    assert (copy / "report.md").read_text() == (folder / "report.md").read_text()
    assert sorted(p.name for p in copy.glob("report_*.png")) == sorted(p.name for p in folder.glob("report_*.png"))
