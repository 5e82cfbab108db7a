"""End-to-end runs of ``python -m twist_lightning.run`` on real text, and bad input failing before training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from twist_lightning import config as schemas
from twist_lightning.module import TwISTLitModule
from twist_lightning.run import train

ROOT = Path(__file__).resolve().parents[1]


def compose_train(overrides):
    schemas.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=smoke", "~logger", *overrides])


def test_cli_smoke_run_writes_summary_and_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "twist_lightning.run", "experiment=smoke", "trainer.max_steps=6",
                           f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {"global_step", "tokens_per_s", "val_loss", "val_ppl", "wall_s"} <= summary.keys()
    assert summary["global_step"] == 6 and summary["tokens_per_s"] > 0
    module = TwISTLitModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    assert module.vocab is not None and module.vocab.size == module.config.vocab_size  # decoding stays exact
    assert (out / "logs").exists()  # the CSV logger wrote into the run folder


def test_learns_on_real_text_from_a_local_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = train(compose_train(["data=wikitext2", "trainer.max_steps=40", "module.lr=1e-2"]))
    assert summary["val_ppl"] < summary["unigram_ppl"] * 1.5  # far below uniform (256), near unigram at 40 steps
    assert summary["val_ppl"] < 256 / 2


@pytest.mark.parametrize("variant", ["masked", "physical"])
def test_twist_in_one_process_with_virtual_workers(tmp_path, monkeypatch, variant):
    monkeypatch.chdir(tmp_path)
    summary = train(compose_train([f"twist={variant}", "twist.common=none", "twist.workers_per_process=2",
                                   "twist.sync_every=3", "trainer.max_steps=7", "data.batch_size=8"]))
    assert summary["global_step"] == 7 and summary["twist_rounds"] == 3
    assert summary["val_ppl"] == pytest.approx(torch.exp(torch.tensor(summary["val_loss"])).item(), rel=1e-3)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["+trainer.max_stepz=3"], "trainer.max_stepz"),  # without +, Hydra refuses the key at compose time
        (["data=local", "data.path=/nonexistent/corpus.txt"], "data.path"),
        (["twist=hybrid"], "hybrid"),
        (["twist=masked", "twist.n_sub=9"], "n_sub"),
        (["data=local", "data.path=TINY"], "block_size"),  # 30 tokens cannot fill a 32-token window
    ],
)
def test_bad_input_fails_before_training(tmp_path, monkeypatch, overrides, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.txt").write_text("To be, or not to be, that is the question. " * 3)
    overrides = [o.replace("TINY", str(tmp_path / "tiny.txt")) for o in overrides]
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train(compose_train(overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_cli_data_parallel_baseline_on_two_processes_counts_its_bytes(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "twist_lightning.run", "experiment=smoke", "trainer=ddp_cpu",
                           "trainer.max_steps=4", "module.warmup_steps=2",  # a warm-up no longer than the run
                           f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    module = TwISTLitModule.load_from_checkpoint(out / "checkpoints" / "last.ckpt")
    param_bytes = sum(p.numel() * p.element_size() for p in module.model.parameters())
    assert summary["global_step"] == 4 and summary["bytes_per_step"] == param_bytes  # every gradient, every step


def test_twist_true_is_a_spelling_of_the_physical_group_option():
    from twist_lightning.options import Variant
    from twist_lightning.run import _alias_true_variant

    argv = _alias_true_variant(["prog", "twist=true", "twist.n_sub=2", "model.bias=true"])
    assert argv == ["prog", "twist=physical", "twist.n_sub=2", "model.bias=true"]  # only the group option moves
    cfg = compose_train([argv[1]])
    assert cfg.twist.variant == Variant.true == Variant("physical")


def test_final_evaluation_scores_the_held_out_test_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wiki = ROOT / "data" / "wikitext-2-raw"
    summary = train(compose_train(["data=wikitext2", f"data.test_path={wiki / 'wiki.test.raw'}",
                                   "trainer.max_steps=3", "module.warmup_steps=1", "final_eval.split=test",
                                   "final_eval.samples=2", "final_eval.sizes=[2,4]", "final_eval.max_batches=2",
                                   "final_eval.method=[random,magnitude]"]))
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["split"] == "test" and result["data"]["test_path"].endswith("wiki.test.raw")
    assert [r["heads"] for r in result["sizes"]] == [2, 4] and len(result["sizes"][0]["random_ppl"]) == 2
    assert 0.0 < result["unk_share"] < 1.0 and (tmp_path / "eval.png").is_file()
    assert result["full"]["ppl"] != pytest.approx(summary["val_ppl"])  # another text than the validation split


@pytest.mark.parametrize("overrides, match", [
    (["final_eval.split=test"], r"final_eval.split=test but the data has no test split"),
    (["final_eval.split=train"], r"final_eval.split='train' must be val or test"),
    (["final_eval.split=val", "final_eval.method=[nope]"], "final_eval.method"),
])
def test_bad_final_evaluation_fails_before_training(tmp_path, monkeypatch, overrides, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        train(compose_train(overrides))
    assert not (tmp_path / "checkpoints").exists()
