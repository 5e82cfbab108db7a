"""TwISTLitModule: steps and their metrics, the optimizer's groups and schedule, checkpoints, the compact vocabulary."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from twist_lightning.model import GPTConfig
from twist_lightning.module import TwISTLitModule, warmup_cosine
from twist_lightning.vocab import CompactVocab

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=64)


class TokenData(L.LightningDataModule):
    """Random 64-id windows; ``vocab`` and ``hparams.block_size`` as TextDataModule exposes them."""

    def __init__(self, vocab: CompactVocab | None = None, block_size: int = 16, rows: int = 20, val_rows: int = 7,
                 batch_size: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["vocab"])
        self.vocab = vocab
        g = torch.Generator().manual_seed(0)
        self.train = torch.randint(0, 64, (rows, block_size + 1), generator=g)
        self.val = torch.randint(0, 64, (val_rows, block_size + 1), generator=g)

    def _loader(self, data: torch.Tensor) -> DataLoader:
        return DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=self.hparams.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val)  # 7 rows in batches of 4: the last batch is smaller

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val)


def trainer(root: Path, steps: int = 3, validate: bool = False) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=1.0 if validate else 0, default_root_dir=str(root))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[TwISTLitModule, L.Trainer, TokenData, Path]:
    """A module fitted 3 steps on random tokens with a compact vocabulary, and its checkpoint."""
    root = tmp_path_factory.mktemp("module")
    torch.manual_seed(0)
    module = TwISTLitModule(model=TINY, lr=1e-2, warmup_steps=1, decay_steps=10)
    data = TokenData(vocab=CompactVocab(list(range(63))))  # 63 kept ids + the unknown id = 64
    fit = trainer(root)
    fit.fit(module, datamodule=data)
    path = root / "module.ckpt"
    fit.save_checkpoint(path)
    return module, fit, data, path


# ---- steps and metrics --------------------------------------------------------------------------------------------
def test_training_steps_log_a_finite_loss(fitted) -> None:
    module, fit, data, _ = fitted
    assert fit.global_step == 3
    loss = fit.callback_metrics["train/loss"]
    assert torch.isfinite(loss) and 0 < float(loss) < 2 * math.log(64)  # random tokens: about log(64)
    fresh = TwISTLitModule(model=TINY)  # no trainer: self.log is a no-op, the step's loss is the model's own
    x, y = next(iter(data.train_dataloader()))
    direct = fresh.training_step((x, y), 0)
    torch.testing.assert_close(direct, fresh.model(x, y)[1])
    assert direct.requires_grad and direct.dim() == 0


def test_validation_ppl_is_exp_of_the_token_weighted_mean_loss(fitted, tmp_path: Path) -> None:
    module, _, data, _ = fitted
    fit = trainer(tmp_path, validate=True)
    metrics = fit.validate(module, datamodule=data, verbose=False)[0]
    module.eval()
    with torch.no_grad():
        losses = [(module.model(x, y)[1], y.numel()) for x, y in data.val_dataloader()]
    mean = sum(float(loss) * n for loss, n in losses) / sum(n for _, n in losses)  # batches of 4 and 3 rows
    assert metrics["val/loss"] == pytest.approx(mean, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-4)
    assert fit.test(module, datamodule=data, verbose=False)[0]["test/loss"] > 0


# ---- the optimizer and its schedule -------------------------------------------------------------------------------
def test_weight_decay_only_on_matrices_and_not_on_position_embeddings() -> None:
    module = TwISTLitModule(model=TINY, lr=2e-3, weight_decay=0.05, betas=(0.8, 0.9), decay_steps=100)
    setup = module.configure_optimizers()
    optimizer, sched = setup["optimizer"], setup["lr_scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.8, 0.9)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    names = {id(p): n for n, p in module.model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert not decayed & kept and decayed | kept == set(names.values())  # each once (wte, lm_head are tied)
    assert "transformer.wte.weight" in decayed and "transformer.h.0.attn.c_attn.weight" in decayed
    assert "transformer.wpe.weight" in kept and "transformer.h.0.ln_1.weight" in kept
    assert all(n.endswith(".bias") or "ln" in n or "wpe" in n for n in kept)
    assert sched["interval"] == "step"
    plain = TwISTLitModule(model=TINY, optimizer="sgd", lr=0.5, decay_steps=100).configure_optimizers()["optimizer"]
    assert type(plain) is torch.optim.SGD and plain.defaults["momentum"] == 0


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    module = TwISTLitModule(model=TINY, lr=1.0, warmup_steps=4, min_lr_ratio=0.1, decay_steps=12)
    setup = module.configure_optimizers()
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # linear warm-up to the peak
    assert lrs[4] == pytest.approx(1.0) and lrs[8] == pytest.approx(0.55)  # half-way down the cosine
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:])) and lrs[12:] == pytest.approx([0.1, 0.1])  # then the floor
    f = warmup_cosine(0, 0, 0.1)
    assert [f(s) for s in (0, 10, 10_000)] == [1.0, 1.0, 1.0]  # no length: flat


def test_schedule_length_follows_the_trainer_unless_set() -> None:
    module = TwISTLitModule(model=TINY, lr=1.0, warmup_steps=0, min_lr_ratio=0.0)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10)  # what a Trainer with max_steps=10 reports
    lam = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert lam(5) == pytest.approx(0.5) and lam(10) == pytest.approx(0.0)
    module._trainer = SimpleNamespace(estimated_stepping_batches=0)
    with pytest.warns(UserWarning, match="No finite schedule length"):
        lam = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert lam(10_000) == 1.0  # flat after the warm-up


def test_an_endless_trainer_gets_a_flat_schedule_and_a_warning() -> None:
    module = TwISTLitModule(model=TINY, lr=1.0, warmup_steps=0)
    module._trainer = SimpleNamespace(estimated_stepping_batches=math.inf)  # what Lightning reports then
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lam = module.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert any("No finite schedule length" in str(w.message) for w in caught) and lam(10_000) == 1.0


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_mixed_precision_with_clipping_trains_with_the_foreach_adamw(tmp_path: Path, clip: float) -> None:
    """Lightning refuses to clip a fused AdamW's gradients under mixed precision: the default then uses foreach."""
    module = TwISTLitModule(model=TINY, lr=1e-2, warmup_steps=1, decay_steps=10)
    fit = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                    precision="bf16-mixed", gradient_clip_val=clip, default_root_dir=str(tmp_path))
    before = [p.detach().clone() for p in module.parameters()]
    fit.fit(module, datamodule=TokenData())
    assert fit.global_step == 2 and fit.optimizers[0].defaults["fused"] is (clip == 0.0)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


# ---- checkpoints and the compact vocabulary -----------------------------------------------------------------------
def test_checkpoint_round_trip_gives_identical_logits_and_vocab(fitted) -> None:
    module, _, data, path = fitted
    raw = torch.load(path, weights_only=True)
    assert raw["hyper_parameters"]["model"] == TINY.to_dict()  # plain data, not a pickled GPTConfig
    assert CompactVocab.from_state_dict(raw["compact_vocab"]) == data.vocab
    loaded = TwISTLitModule.load_from_checkpoint(path).eval()
    assert loaded.config == module.config and loaded.vocab == data.vocab
    assert {k: loaded.hparams[k] for k in ("lr", "warmup_steps", "decay_steps")} == {"lr": 1e-2, "warmup_steps": 1,
                                                                                      "decay_steps": 10}
    idx = data.val[:2, :-1]
    module.eval()
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], module(idx)[0])


def test_model_as_a_dict_and_no_vocab_without_one(tmp_path: Path) -> None:
    module = TwISTLitModule(model=TINY.to_dict(), decay_steps=100)
    assert module.config == TINY and module.vocab is None
    fit = trainer(tmp_path, steps=1)
    fit.fit(module, datamodule=TokenData())
    fit.save_checkpoint(tmp_path / "plain.ckpt")
    assert "compact_vocab" not in torch.load(tmp_path / "plain.ckpt", weights_only=True)


@pytest.mark.parametrize("data, match", [
    (dict(vocab=CompactVocab(list(range(31)))), "model.vocab_size=64 but the data has 32 token ids"),
    (dict(block_size=32), r"data.block_size=32 is longer than the model's context \(model.block_size=16\)"),
])
def test_data_that_cannot_fit_the_model_fails_at_setup(tmp_path: Path, data: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        trainer(tmp_path, steps=1).fit(TwISTLitModule(model=TINY, decay_steps=100), datamodule=TokenData(**data))


def test_resuming_on_data_with_another_vocabulary_fails(fitted, tmp_path: Path) -> None:
    _, _, _, path = fitted
    other = TokenData(vocab=CompactVocab(list(range(1, 64))))  # same size, other ids
    with pytest.raises(ValueError, match="compact vocabulary differs from the checkpoint's"):
        trainer(tmp_path, steps=4).fit(TwISTLitModule.load_from_checkpoint(path), datamodule=other)


# ---- bad settings -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, key", [
    (dict(lr=0.0), "module.lr=0.0"), (dict(lr=math.inf), "module.lr=inf"), (dict(lr=math.nan), "module.lr=nan"),
    (dict(betas=(0.9,)), "module.betas"), (dict(betas=(0.9, 1.0)), "module.betas"),
    (dict(warmup_steps=50, decay_steps=50), "module.decay_steps=50"),
    (dict(weight_decay=-0.1), "module.weight_decay=-0.1"), (dict(warmup_steps=-1), "module.warmup_steps=-1"),
    (dict(min_lr_ratio=1.5), "module.min_lr_ratio=1.5"), (dict(optimizer="adam"), "module.optimizer=adam"),
])
def test_bad_settings_name_their_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key.replace(".", r"\.").replace("(", r"\(")):
        TwISTLitModule(model=TINY, **kwargs)
    with pytest.raises(ValueError, match="model.n_head=3"):
        TwISTLitModule(model={**TINY.to_dict(), "n_head": 3})  # the model's own checks (GPTConfig)


# ---- torch.compile: the wrapper stays out of the state dict and follows a swapped model ---------------------------
def test_compile_does_not_duplicate_the_state_dict() -> None:
    keys = list(TwISTLitModule(model=TINY, compile=True).state_dict())
    assert all(k.startswith("model.") or k.startswith("val_") for k in keys), keys[:3]


def test_compile_follows_a_swapped_model() -> None:
    from twist_lightning.model import GPT

    module = TwISTLitModule(model=TINY, compile=True)
    first = module.compiled_model()
    assert first._orig_mod is module.model and module.compiled_model() is first  # made once per model
    module.model = GPT(TINY)  # what TwISTStrategy does for variant=true
    assert module.compiled_model()._orig_mod is module.model
