"""Bad input, table by table: every case fails before any training with an error that names its key.

Tables: the training config (Hydra compose, then ``run.train``), resume checkpoints, corpora, the Python API
constructors, the ``evaluate`` and ``export`` entry points, and runtime faults (divergence). One CLI case checks the
exit code end to end. Each row is ``(overrides or call, key the message must name)``.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from twist_lightning import config as schemas
from twist_lightning import evaluate as evaluate_cli
from twist_lightning import export as export_cli
from twist_lightning.callbacks import SubnetResampling
from twist_lightning.data import TextDataModule
from twist_lightning.guard import DivergenceError, DivergenceGuard
from twist_lightning.io import AtomicCheckpointIO
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.module import TwISTLitModule
from twist_lightning.run import train
from twist_lightning.strategy import TwISTStrategy
from twist_lightning.validate import check_train_settings

ROOT = Path(__file__).resolve().parents[1]
SMOKE = GPTConfig.from_preset("tiny")  # experiment=smoke's model
EXPECTED = (ValueError, FileNotFoundError, RuntimeError, HydraException, OmegaConfBaseException)


def fake_checkpoint(path: Path, config: GPTConfig, poison: bool = False) -> Path:
    """What a TwISTLitModule checkpoint holds as far as the loader cares (weights and the model config)."""
    state = {f"model.{k}": v for k, v in GPT(config).state_dict().items()}
    if poison:
        state["model.lm_head.weight"] = torch.full_like(state["model.lm_head.weight"], math.nan)
    torch.save({"state_dict": state, "hyper_parameters": {"model": config.to_dict()}, "global_step": 1}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    good = fake_checkpoint(root / "good.ckpt", SMOKE)
    (root / "truncated.ckpt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "random.ckpt").write_bytes(bytes(range(256)) * 40)
    (root / "latin1.txt").write_bytes("caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * 200)
    (root / "empty.txt").write_text("")
    (root / "a_file").write_text("not a folder")
    (root / "a_dir").mkdir()
    fake_checkpoint(root / "other.ckpt", GPTConfig.from_preset("tiny", n_layer=3))
    fake_checkpoint(root / "nan.ckpt", SMOKE, poison=True)
    return {p.stem if p.suffix else p.name: str(p) for p in root.iterdir()}


def fill(items: list[str], files: dict[str, str]) -> list[str]:
    return [re.sub(r"\{(\w+)\}", lambda m: files[m.group(1)], s) for s in items]


def expect_error(call, key: str) -> BaseException:
    with pytest.raises(EXPECTED) as info:
        call()
    message = str(info.value)
    assert key in message, f"{type(info.value).__name__} does not name {key!r}: {message}"
    return info.value


# ---- the training config: compose, then run.train (which validates before touching data or the Trainer) ---------
TRAIN_CASES = [
    (["trainer.max_steps=-1"], "trainer.max_steps"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["trainer.val_check_interval=0"], "trainer.val_check_interval"),
    (["trainer.val_check_interval=-0.5"], "trainer.val_check_interval"),
    (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps"),
    (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches"),
    (["trainer.gradient_clip_val=-1.0"], "trainer.gradient_clip_val"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.num_nodes=0"], "trainer.num_nodes"),
    (["+trainer.max_stepz=3"], "trainer.max_stepz"),
    (["model.n_layer=0"], "model.n_layer"),
    (["model.n_head=0"], "model.n_head"),
    (["model.n_head=3"], "model.n_head"),  # 32 is not divisible by 3
    (["model.n_embd=0"], "model.n_embd"),
    (["model.dropout=1.5"], "model.dropout"),
    (["model.block_size=0"], "model.block_size"),
    (["model.vocab_size=1"], "model.vocab_size"),
    (["model.ffn_groups=0"], "model.ffn_groups"),
    (["data.block_size=64"], "data.block_size"),  # longer than model.block_size=32: failed at step 1 before
    (["data.batch_size=0"], "data.batch_size"),
    (["data.val_fraction=0.0"], "data.val_fraction"),
    (["data.num_proc=0"], "data.num_proc"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["data.source=ftp"], "source"),  # the schema's enum refuses it at compose time
    (["data=local", "data.path=/nonexistent/corpus.txt"], "data.path"),
    (["data=local", "data.path={latin1}"], "data.path"),  # not UTF-8
    (["data=local", "data.path={empty}"], "data.path"),
    (["module.lr=0"], "module.lr"),
    (["module.lr=-1e-3"], "module.lr"),
    (["module.betas=[0.9,1.0]"], "module.betas"),
    (["module.betas=[-0.1,0.9]"], "module.betas"),
    (["module.weight_decay=-0.1"], "module.weight_decay"),
    (["module.warmup_steps=-1"], "module.warmup_steps"),
    (["module.warmup_steps=50"], "module.warmup_steps"),  # longer than the run
    (["module.decay_steps=3"], "module.decay_steps"),  # not after the 5-step warm-up: no decay at all
    (["module.min_lr_ratio=2.0"], "module.min_lr_ratio"),
    (["module.optimizer=lion"], "module.optimizer"),
    (["module.fused=true", "trainer.precision=bf16-mixed"], "module.fused"),  # Lightning refuses to clip it
    (["twist=masked"], "twist.common"),  # 2 layers, both common by default: nothing to split
    (["twist=masked", "twist.common=none", "twist.sync_every=0"], "twist.sync_every"),
    (["twist=masked", "twist.common=[0]", "twist.n_sub=0.1"], "twist.n_sub"),  # rounds to 0 heads
    (["twist=masked", "twist.common=none", "twist.workers_per_process=0"], "twist.workers_per_process"),
    (["twist=masked", "twist.common=none", "twist.workers_per_process=3"], "twist.workers_per_process"),
    (["twist=masked", "twist.common=none", "twist.n_sub=9"], "twist.n_sub"),
    (["twist=masked", "twist.common=none", "twist.n_sub=0.0"], "twist.n_sub"),
    (["twist=masked", "twist.eval_subnets=-1"], "twist.eval_subnets"),
    (["twist=hybrid"], "twist.variant"),  # needs two processes
    (["twist.sync_evry=3"], "sync_evry"),
    (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path"),
    (["ckpt_path={truncated}"], "ckpt_path"),
    (["ckpt_path={random}"], "ckpt_path"),
    (["ckpt_path={other}"], "n_layer"),  # another model shape: the differing field, not a state-dict wall
    (["ckpt_path={nan}"], "ckpt_path"),  # from a diverged run
    (["ckpt_path={a_dir}"], "ckpt_path"),
]


def compose_train(overrides: list[str]):
    schemas.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=smoke", "~logger", *overrides])


@pytest.mark.parametrize("overrides, key", TRAIN_CASES, ids=[" ".join(o) for o, _ in TRAIN_CASES])
def test_train_setting_fails_before_training_naming_its_key(overrides, key, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expect_error(lambda: train(compose_train(fill(overrides, files))), key)
    assert not (tmp_path / "checkpoints").exists()


def test_resume_with_another_shape_names_every_differing_field(files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = expect_error(lambda: train(compose_train([f"ckpt_path={files['other']}"])), "ckpt_path")
    assert "n_layer: checkpoint 3 vs expected 2" in str(err) and "size mismatch" not in str(err)


# ---- the Python API: constructors check their own arguments ------------------------------------------------------
API_CASES = [
    (lambda: TwISTStrategy(variant="sparse"), "twist.variant"),
    (lambda: TwISTStrategy(optimizer_state="keep"), "twist.optimizer_state"),
    (lambda: TwISTStrategy(sync_every=-2), "twist.sync_every"),
    (lambda: TwISTStrategy(n_sub="half"), "twist.n_sub"),
    (lambda: SubnetResampling(every_n_steps=0), "every_n_steps"),
    (lambda: SubnetResampling(schedule={-1: 5}), "schedule"),
    (lambda: SubnetResampling(log_every_n_steps=0), "log_every_n_steps"),
    (lambda: TextDataModule(source="local"), "data.path"),
    (lambda: TextDataModule(block_size=0), "data.block_size"),
    (lambda: TextDataModule(num_workers=-2), "data.num_workers"),
    (lambda: TextDataModule(source="ftp"), "data.source"),
    (lambda: GPTConfig(n_layer=2, layer_heads=[5, 5], n_head=4, n_embd=32), "model.layer_heads"),
    (lambda: GPTConfig(n_embd=-8, n_head=4), "model.n_embd"),
    (lambda: GPTConfig.from_preset("gpt3"), "model.preset"),
    (lambda: TwISTLitModule(model=SMOKE, betas=(0.9,)), "module.betas"),
    (lambda: TwISTLitModule(model=SMOKE, lr=math.inf), "module.lr"),
    (lambda: TwISTLitModule(model=SMOKE, warmup_steps=10, decay_steps=10), "module.decay_steps"),
    (lambda: TwISTStrategy(variant="hybrid", common="none").check(GPT(SMOKE), world_size=1), "twist.variant"),
    (lambda: TwISTStrategy(common=[0, 1]).check(GPT(SMOKE), world_size=1), "twist.common"),
]


@pytest.mark.parametrize("call, key", API_CASES, ids=[k for _, k in API_CASES])
def test_public_constructor_rejects_a_bad_argument_naming_it(call, key):
    expect_error(call, key)


# ---- the evaluate and export entry points ------------------------------------------------------------------------
EVALUATE_CASES = [
    (["checkpoint={good}", "samples=0"], "samples"),
    (["checkpoint={good}", "max_batches=0"], "max_batches"),
    (["checkpoint={good}", "batch_tokens=0"], "batch_tokens"),
    (["checkpoint={good}", "subnet_batch=0"], "subnet_batch"),
    (["checkpoint={good}", "split=train"], "split"),
    (["checkpoint={good}", "device=tpu9"], "device"),
    (["checkpoint={good}", "out={a_dir}"], "out"),
    (["checkpoint={good}", "out={a_file}/eval.json"], "out"),
    (["checkpoint={good}", "+data.batch_size=0"], "data.batch_size"),
    ([], "checkpoint"),
    (["grid=true"], "checkpoints"),
    (["checkpoint=/nonexistent.ckpt"], "checkpoint"),
    (["checkpoint={truncated}"], "checkpoint"),
    (["checkpoint={good}", "sizes=[9]"], "sizes[0]"),
]
if not torch.cuda.is_available():
    EVALUATE_CASES.append((["checkpoint={good}", "device=cuda"], "device"))

EXPORT_CASES = [
    (["checkpoint={good}", "out={a_file}", "size=2"], "out"),
    (["checkpoint={good}", "out=OUT", "size=0"], "size"),
    (["checkpoint={good}", "out=OUT", "size=1.5"], "size"),
    (["checkpoint={good}", "out=OUT", "size=2", "selector=best"], "selector"),
    (["checkpoint={random}", "out=OUT", "size=2"], "checkpoint"),
    (["checkpoint={good}", "out=OUT", "selector=explicit"], "blueprint"),
    (["checkpoint={good}", "out=OUT", "size=2", "hf_layout=wide"], "hf_layout"),
    (["checkpoint={nan}", "out=OUT", "size=2", "common=none"], "checkpoint"),  # refuses NaN weights
    (["out=OUT", "size=2"], "checkpoint"),
]


def compose_cli(name: str, overrides: list[str]):
    (evaluate_cli if name == "evaluate" else export_cli).register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("overrides, key", EVALUATE_CASES, ids=[" ".join(o) for o, _ in EVALUATE_CASES])
def test_evaluate_setting_fails_before_evaluating_naming_its_key(overrides, key, files):
    expect_error(lambda: evaluate_cli.run_from_config(compose_cli("evaluate", fill(overrides, files))), key)


@pytest.mark.parametrize("overrides, key", EXPORT_CASES, ids=[" ".join(o) for o, _ in EXPORT_CASES])
def test_export_setting_fails_before_writing_naming_its_key(overrides, key, files, tmp_path):
    out = tmp_path / "export"
    overrides = [o.replace("OUT", str(out)) for o in fill(overrides, files)]
    expect_error(lambda: export_cli.export_from_config(compose_cli("export", overrides)), key)
    assert not out.exists() or not any(out.iterdir())  # nothing half written


# ---- runtime faults ----------------------------------------------------------------------------------------------
def test_nan_loss_during_fit_names_the_step_and_module_lr(tmp_path):
    data = torch.randint(0, SMOKE.vocab_size, (16, SMOKE.block_size + 1))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:]), batch_size=4)
    module = TwISTLitModule(model=SMOKE, lr=1e6, warmup_steps=1)
    trainer = L.Trainer(accelerator="cpu", max_steps=8, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[DivergenceGuard()],
                        plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path)
    err = expect_error(lambda: trainer.fit(module, loader), "module.lr")
    assert isinstance(err, DivergenceError) and re.search(r"at step \d", str(err))


def test_cli_exits_non_zero_with_the_key_and_no_traceback(files):
    proc = subprocess.run([sys.executable, "-m", "twist_lightning.run", f"hydra.run.dir={files['a_file']}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "hydra.run.dir=" in proc.stderr and "Traceback" not in proc.stderr


def test_a_sync_interval_longer_than_the_run_warns_that_subnets_are_never_resampled():
    with pytest.warns(UserWarning, match="twist.sync_every=50 .*never"):
        check_train_settings({"trainer": {"max_steps": 20}, "twist": {"variant": "masked", "sync_every": 50}})


def test_at_least_forty_distinct_bad_inputs():
    cases = [str(o) for o, _ in TRAIN_CASES + EVALUATE_CASES + EXPORT_CASES] + [k for _, k in API_CASES]
    assert len(cases) >= 40 and len(set(cases)) >= 40
