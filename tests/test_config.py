"""Hydra composition: every config composes, schemas mirror constructors, typos fail at compose time."""

import inspect
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from twist_lightning import config as schemas
from twist_lightning.data import TextDataModule
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.module import TwISTLitModule
from twist_lightning.strategy import TwISTStrategy

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "data", "module", "trainer", "twist", "logger", "experiment"]


@pytest.fixture(scope="module", autouse=True)
def _store():
    schemas.register_configs()


def _compose(overrides=()):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    return cfg


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_composes_and_resolves(group, option):
    cfg = _compose([f"{group}={option}"])
    for node in ("model", "data", "module", "twist", "trainer"):  # hydra:runtime paths exist only in a real run
        OmegaConf.to_container(cfg[node], resolve=True, throw_on_missing=node != "data")
    assert cfg.model.block_size == cfg.data.block_size
    assert cfg.logger is None or "_target_" in cfg.logger


@pytest.mark.parametrize(
    "schema, target",
    [
        (schemas.ModelConfig, GPTConfig),
        (schemas.DataConfig, TextDataModule),
        (schemas.ModuleConfig, TwISTLitModule),
        (schemas.TwISTConfig, TwISTStrategy),
    ],
)
def test_schema_fields_are_constructor_arguments(schema, target):
    # eval_subnets is the run summary's, init_from the run's (weights loaded into the new model)
    fields = set(schema.__dataclass_fields__) - {"_target_", "eval_subnets", "init_from"}
    assert fields <= set(inspect.signature(target).parameters)


@pytest.mark.parametrize(
    "override, key",
    [
        ("twist.sync_evry=3", "sync_evry"),
        ("twist.sync_every=abc", "sync_every"),
        ("model.n_layr=2", "n_layr"),
        ("data.source=s3", "source"),
        ("twist.variant=sparse", "variant"),
        ("twist=nonexistent", "twist"),
    ],
)
def test_typos_fail_at_compose_time_naming_the_key(override, key):
    with pytest.raises((ConfigCompositionException, Exception), match=key):
        _compose([override])


def test_data_block_size_follows_the_model():
    cfg = _compose(["model=gpt2"])
    assert cfg.data.block_size == 1024 and cfg.model.vocab_size == 50257


RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "recipe"


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_every_recipe_composes_and_its_swept_keys_exist(recipe, monkeypatch):
    monkeypatch.chdir(CONF.parent)  # the recipes search path is relative to the repo root
    cfg = _compose([f"recipe={recipe}"])
    for key in (cfg.hydra.sweeper.get("params") or {}):
        if key in GROUPS:  # a swept config group: each option must exist
            assert all(o in options(key) for o in str(cfg.hydra.sweeper.params[key]).split(","))
        elif (RECIPES.parent / key.lstrip("+")).is_dir():  # a recipes/ group such as +arm
            for option in str(cfg.hydra.sweeper.params[key]).split(","):
                assert (RECIPES.parent / key.lstrip("+") / f"{option}.yaml").is_file(), (key, option)
                _compose([f"recipe={recipe}", f"{key}={option}"])
        else:
            assert OmegaConf.select(cfg, key, throw_on_missing=False) is not None or key.startswith("+"), key


def test_schedule_and_warm_start_reach_the_strategy():
    from twist_lightning.callbacks import SubnetResampling
    from twist_lightning.run import build_strategy, resampling_callbacks

    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=32, block_size=16, vocab_size=64))
    cfg = _compose(["twist=masked", "twist.workers_per_process=2", "+twist.schedule={0:1,100:15}", "twist.warm_start=5",
                    "twist.optimizer_state=carry", "trainer.max_steps=200"])
    strategy = build_strategy(cfg, model)
    assert strategy.schedule == {0: 1, 100: 15} and strategy.warm_start == 5
    assert [strategy.core.interval_at(s) for s in (0, 5, 99, 100)] == [1, 1, 1, 15]
    plain = build_strategy(_compose(["twist=masked", "twist.workers_per_process=2"]), model)
    assert plain.schedule == {} and plain.core.interval_at(1000) == plain.sync_every == 15
    (callback,) = resampling_callbacks(strategy)
    assert isinstance(callback, SubnetResampling)
    assert resampling_callbacks(None) == []
    with pytest.raises(ValueError, match=r"twist\.schedule\[0\]"):
        build_strategy(_compose(["twist=masked", "twist.workers_per_process=2", "+twist.schedule={0:0}"]), model)
    with pytest.raises(ValueError, match=r"twist\.warm_start=300 is not shorter"):
        build_strategy(_compose(["twist=masked", "twist.workers_per_process=2", "twist.warm_start=300", "twist.optimizer_state=carry",
                                 "trainer.max_steps=300"]), model)

def test_aggregation_arms_set_what_they_name(monkeypatch):
    monkeypatch.chdir(CONF.parent)

    def arm(name):
        return _compose(["recipe=aggregation_6of12_cpu", f"+arm={name}"]).twist

    assert arm("dp").variant.value == "none" and arm("reset").variant.value == "masked"
    assert arm("carry").optimizer_state.value == "carry" and arm("reset").optimizer_state.value == "reset"
    assert (arm("nesterov").outer.value, arm("nesterov").outer_lr, arm("nesterov").outer_momentum) == ("nesterov", 0.7, 0.9)
    assert arm("warm").warm_start == 50 and arm("warm").optimizer_state.value == "carry"
    assert arm("diag_local").n_sub == 12 and arm("diag_local").sync_every == 15
    assert arm("diag_partition").n_sub == 6 and arm("diag_partition").sync_every == 1
