"""SubnetResampling: its settings, the twist/* metrics, and the resume state it writes into checkpoints."""

from datetime import timedelta

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from twist_lightning import SubnetResampling, TwISTLitModule, TwISTStrategy
from twist_lightning.model import GPTConfig

SHAPE = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)
KW = dict(variant="masked", n_sub=2, common="none", sync_every=3, workers_per_process=2, optimizer_state="carry")


def module(seed: int = 0) -> TwISTLitModule:
    torch.manual_seed(seed)
    return TwISTLitModule(GPTConfig(**SHAPE), lr=1e-2, warmup_steps=2, decay_steps=20)


def loader(n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, SHAPE["vocab_size"], (n, SHAPE["block_size"] + 1), generator=g)
    return DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=8)


def fit(m, max_steps, callbacks=(), ckpt_path=None, root=None, logger=False, strategy=None):
    trainer = L.Trainer(accelerator="cpu", devices=1, strategy=strategy or TwISTStrategy(**KW), max_steps=max_steps,
                        logger=logger, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                        default_root_dir=root, log_every_n_steps=1)
    trainer.fit(m, loader(), ckpt_path=ckpt_path)
    return trainer


def weights(m) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.model.state_dict().items()}


@pytest.mark.parametrize("kw, match", [
    (dict(every_n_steps=5), r"TwISTStrategy\(sync_every=5\)"),
    (dict(schedule={0: 1}), r"TwISTStrategy\(schedule=\{0: 1\}\)"),
    (dict(log_every_n_steps=0), "log_every_n_steps=0"),
])
def test_bad_or_moved_settings_are_refused_with_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        SubnetResampling(**kw)


def test_needs_the_twist_strategy():
    with pytest.raises(ValueError, match="SubnetResampling needs Trainer"):
        L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                  callbacks=[SubnetResampling()]).fit(module(), loader())


def test_logs_the_twist_metrics(tmp_path):
    fit(module(), 4, callbacks=[SubnetResampling(log_every_n_steps=2)],
        logger=CSVLogger(tmp_path, name="run", version=0))
    text = (tmp_path / "run" / "version_0" / "metrics.csv").read_text()
    header, *rows = text.strip().splitlines()
    for key in ("twist/round", "twist/units_per_worker", "twist/coverage", "twist/bytes_per_step"):
        assert key in header
    cols = header.split(",")
    logged = [dict(zip(cols, r.split(","))) for r in rows if r.split(",")[cols.index("twist/round")]]
    assert {1, 3} <= {int(float(r["step"])) for r in logged}  # global steps 2 and 4 (the logger counts from 0)
    assert float(logged[-1]["twist/round"]) == 1.0  # a sync after step 3; step 4 is in the second round
    assert float(logged[-1]["twist/coverage"]) == 1.0
    units = float(logged[-1]["twist/units_per_worker"])
    assert units == pytest.approx(0.5)  # 2 of 4 heads and groups in every layer


def _checkpointed(tmp_path, callbacks):
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    fit(module(), 4, callbacks=[*callbacks, ckpt], root=tmp_path)
    return tmp_path / "step=4.ckpt"


def test_checkpoint_holds_the_resume_state_mid_round(tmp_path):
    path = _checkpointed(tmp_path, [SubnetResampling()])
    state = torch.load(path, weights_only=False)["twist"]
    assert (state["round"], state["step_in_round"], state["steps_done"]) == (1, 1, 4)
    assert len(state["workers"]) == 2 and all(w["optimizer"] for w in state["workers"])


def test_resume_without_a_callback_given_is_still_exact(tmp_path):
    """The strategy adds SubnetResampling when it is missing, so a plain Trainer(strategy=...) resumes mid-round."""
    straight = module()
    fit(straight, 7)
    path = _checkpointed(tmp_path, [])
    assert "twist" in torch.load(path, weights_only=False)
    resumed = module(seed=9)
    fit(resumed, 7, ckpt_path=str(path))
    a, b = weights(resumed), weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_from_0_1_with_the_state_in_the_callback_still_resumes(tmp_path):
    """0.1 kept the state under checkpoint['callbacks']['SubnetResampling']['strategy']."""
    straight = module()
    fit(straight, 7)
    path = _checkpointed(tmp_path, [SubnetResampling()])
    ckpt = torch.load(path, weights_only=False)
    ckpt.setdefault("callbacks", {})["SubnetResampling"] = {"every_n_steps": None, "strategy": ckpt.pop("twist")}
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    resumed = module(seed=9)
    fit(resumed, 7, callbacks=[SubnetResampling()], ckpt_path=str(old))
    a, b = weights(resumed), weights(straight)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and without the state at all, the resumed run differs: the test above is not vacuous
    del ckpt["callbacks"]["SubnetResampling"]
    torch.save(ckpt, old)
    lost = module(seed=9)
    fit(lost, 7, callbacks=[SubnetResampling()], ckpt_path=str(old))
    assert any(not torch.equal(weights(lost)[k], b[k]) for k in b)


def test_checkpoint_loads_as_a_plain_module(tmp_path):
    path = _checkpointed(tmp_path, [SubnetResampling()])
    again = TwISTLitModule.load_from_checkpoint(path)
    assert again.model.config.is_full and not again.model.subnet_active


def test_timeout_is_a_strategy_setting():
    # DDPStrategy's own keyword arguments pass through untouched
    assert TwISTStrategy(timeout=timedelta(seconds=5))._timeout == timedelta(seconds=5)
