"""Hydra entry point: ``python -m twist_lightning.run [overrides]`` trains a GPT-2, plain or with TwIST.

Examples::

    python -m twist_lightning.run                                   # CPU preset on bundled Tiny Shakespeare
    python -m twist_lightning.run experiment=smoke trainer.max_steps=5
    python -m twist_lightning.run model=gpt2 trainer=gpu data=wikitext103
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint, Timer
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from twist_lightning.callbacks import SubnetResampling
from twist_lightning.comm import CountingDDPStrategy
from twist_lightning.config import register_configs
from twist_lightning.data import TextDataModule
from twist_lightning.evaluation import evaluate_subnets
from twist_lightning.guard import DivergenceError, DivergenceGuard, divergence_hint
from twist_lightning.io import AtomicCheckpointIO, NonFiniteCheckpointError, write_json
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.module import TwISTLitModule
from twist_lightning.options import GROUP_SPELLINGS
from twist_lightning.partition import PartitionSpec
from twist_lightning.pretrained import init_from
from twist_lightning.progress import step_progress_bar
from twist_lightning.strategy import TwISTStrategy
from twist_lightning.tokenizer import GPT2_VOCAB_SIZE
from twist_lightning.validate import SettingError, check_out_folder, check_resume, check_train_settings

register_configs()


def check_trainer_keys(trainer_cfg: dict[str, Any]) -> None:
    """Fail before any work on a ``trainer.*`` key that ``lightning.Trainer`` does not take."""
    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self"}
    unknown = sorted(set(trainer_cfg) - allowed)
    if unknown:
        raise ValueError(f"trainer.{unknown[0]} is not a lightning.Trainer argument (unknown keys: {unknown}). "
                         "HINT: check the spelling against lightning.Trainer's documentation.")


def check_launcher(trainer_cfg: dict[str, Any]) -> None:
    """Lightning's default popen launcher re-runs the command line, so each child would re-expand a Hydra sweep."""
    devices, strategy = trainer_cfg.get("devices", 1), str(trainer_cfg.get("strategy", "auto"))
    multi = devices not in (1, "1", None) and not (isinstance(devices, list) and len(devices) == 1)
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN and multi and "spawn" not in strategy:
        raise ValueError(f"trainer.strategy={strategy!r} with trainer.devices={devices} under a Hydra multirun would "
                         "re-launch the whole sweep in every process (Lightning issue #11300). HINT: use "
                         "trainer.strategy=ddp_spawn (twist_spawn for TwIST) or launch with torchrun.")


def kwargs_of(node: DictConfig) -> dict[str, Any]:
    """A config group as constructor keyword arguments (resolved, without ``_target_``)."""
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True, enum_to_str=True).items() if k != "_target_"}


def model_config(cfg: DictConfig) -> GPTConfig:
    """The ``model`` group as a :class:`GPTConfig` (``init_from`` is a run setting, not a shape field)."""
    settings = kwargs_of(cfg.model)
    settings.pop("init_from", None)
    return GPTConfig(**settings)


def build_datamodule(cfg: DictConfig, vocab_from: str | None = None) -> TextDataModule:
    """The data of ``cfg.data``; ``vocab_from`` (the pretrained model's) applies unless ``data.vocab_from`` is set."""
    vocab_size = None if cfg.model.vocab_size == GPT2_VOCAB_SIZE else cfg.model.vocab_size
    settings = kwargs_of(cfg.data)
    settings["vocab_from"] = settings.get("vocab_from") or vocab_from
    dm = TextDataModule(**settings, vocab_size=vocab_size)
    # tokenize and validate the corpus now, so a bad path or a too-short text fails before the Trainer starts
    dm.prepare_data()
    dm.setup("fit")
    return dm


def world_size(trainer_cfg: dict[str, Any]) -> int:
    devices = trainer_cfg.get("devices", 1)
    count = len(devices) if isinstance(devices, list) else int(devices) if str(devices).isdigit() else 1
    return count * int(trainer_cfg.get("num_nodes", 1))


def build_strategy(cfg: DictConfig, model: GPT) -> TwISTStrategy | CountingDDPStrategy | None:
    """The TwIST strategy of ``cfg.twist``, checked against the model up front.

    For ``variant: none`` with several processes and a DDP strategy, Lightning's DDP with a byte-counting comm hook
    (so the baseline's communication is measured on the same yardstick); otherwise ``trainer.strategy`` as given.
    """
    settings = kwargs_of(cfg.twist)
    variant = settings.pop("variant")
    settings.pop("eval_subnets")  # the run summary's
    settings["schedule"] = settings.get("schedule") or None  # int keys: the schema types them at compose time
    trainer_strategy = str(cfg.trainer.get("strategy", "auto"))
    start_method = "spawn" if "spawn" in trainer_strategy else "popen"
    if variant == "none":
        multi = world_size(OmegaConf.to_container(cfg.trainer, resolve=True)) > 1
        return CountingDDPStrategy(start_method=start_method) if multi and trainer_strategy.startswith("ddp") else None
    settings["start_method"] = start_method
    per_process = int(cfg.data.batch_size)
    if per_process % int(settings["workers_per_process"]):
        raise ValueError(f"data.batch_size={per_process} cannot be split evenly over twist.workers_per_process="
                         f"{settings['workers_per_process']} virtual workers. HINT: use a multiple of it.")
    strategy = TwISTStrategy(variant=variant, **settings)
    max_steps = cfg.trainer.get("max_steps")
    strategy.check(model, world_size(OmegaConf.to_container(cfg.trainer, resolve=True)),
                   max_steps=None if max_steps is None else int(max_steps))
    return strategy


def resampling_callbacks(strategy: Any) -> list:
    """``SubnetResampling`` for a TwIST run: ``twist/*`` metrics and the resume state in checkpoints."""
    return [SubnetResampling()] if isinstance(strategy, TwISTStrategy) else []


def build_trainer(cfg: DictConfig, out_dir: Path, extra_callbacks: list, strategy: Any = None) -> L.Trainer:
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if strategy is not None:
        trainer_kwargs["strategy"] = strategy
    logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
    # the guard stops a diverged run; the checkpoint IO writes atomically and never writes non-finite weights
    callbacks = [DivergenceGuard(), ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True), Timer(),
                 *extra_callbacks]
    if trainer_kwargs.get("enable_progress_bar", True):
        callbacks.append(step_progress_bar())  # Lightning's own shows "Epoch 2/-2" in step-bounded runs
    plugins = [*(trainer_kwargs.pop("plugins", None) or []), AtomicCheckpointIO()]
    return L.Trainer(**trainer_kwargs, logger=logger, callbacks=callbacks, plugins=plugins,
                     default_root_dir=str(out_dir))


def summarize(trainer: L.Trainer, dm: TextDataModule, metrics: dict[str, float], wall_s: float) -> dict[str, Any]:
    launcher = getattr(trainer.strategy, "launcher", None)
    if getattr(launcher, "_start_method", None) == "spawn":
        # the spawn launcher brings back weights and metrics, not the loop's step count or timers: leave those out
        # rather than report zeros
        return {"global_step": None, "note": "spawn launcher: step count, tokens/s and bytes stay in the child "
                "processes; use the popen launcher (trainer.strategy=ddp) or torchrun for them",
                "val_loss": float(metrics.get("val/loss", float("nan"))),
                "val_ppl": float(metrics.get("val/ppl", float("nan"))),
                "unigram_ppl": float(dm.unigram_ppl("val")), "wall_s": round(wall_s, 2)}
    timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
    train_s = max(timer.time_elapsed("train"), 1e-9)
    tokens = trainer.global_step * dm.hparams.batch_size * dm.hparams.block_size * trainer.world_size
    tokens *= trainer.accumulate_grad_batches
    return {
        "global_step": trainer.global_step,
        "train_tokens": tokens,
        "tokens_per_s": round(tokens / train_s, 1),
        "val_loss": float(metrics.get("val/loss", float("nan"))),
        "val_ppl": float(metrics.get("val/ppl", float("nan"))),
        "unigram_ppl": float(dm.unigram_ppl("val")),
        "train_s": round(train_s, 2),
        "wall_s": round(wall_s, 2),
    }


def subnet_summary(cfg: DictConfig, model: GPT, dm: TextDataModule, limit: Any) -> dict[str, Any]:
    """Held-out PPL of random subnets at the TwIST size (also for ``twist=none``: the baseline's pruned subnets)."""
    samples = int(cfg.twist.eval_subnets)
    if samples < 1:
        return {}
    spec = PartitionSpec.from_config(model.config, common=cfg.twist.common)
    if not spec.split_layers:
        return {}
    max_batches = limit if isinstance(limit, int) else None
    batches = [b for i, b in zip(range(max_batches or 10**9), dm.val_dataloader())]
    device = model.lm_head.weight.device
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    result = evaluate_subnets(model, batches, sizes=[cfg.twist.n_sub], samples=samples, spec=spec,
                              seed=int(cfg.seed), importance=False, scale=bool(cfg.twist.scale))
    row = result["sizes"][0]
    return {"subnet_size": f"{row['heads']}/{spec.n_head}", "subnet_ppl_mean": row["mean_ppl"],
            "subnet_ppl_std": row["std_ppl"], "subnet_ppl_min": row["min_ppl"], "subnet_ppl_max": row["max_ppl"]}


def write_summary(summary: dict[str, Any], out_dir: Path) -> None:
    # strict JSON, written atomically: a NaN or inf becomes null and the run is flagged as diverged
    non_finite = write_json(out_dir / "summary.json", {**summary, "diverged": summary.get("diverged", False)})
    if non_finite:
        summary.update(diverged=True, non_finite=non_finite)
        write_json(out_dir / "summary.json", summary)
    width = max(len(k) for k in summary)
    lines = [f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}" for k, v in summary.items()]
    rank_zero_info("\n".join(["", "summary", "-" * (width + 12), *lines, f"written to {out_dir / 'summary.json'}"]))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, validate and summarise one run; returns the summary (also written to ``summary.json``)."""
    start = time.perf_counter()
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    check_trainer_keys(trainer_cfg)
    check_launcher(trainer_cfg)
    # only the groups it checks: the logger's paths interpolate Hydra's run folder, unset outside a Hydra run
    check_train_settings({k: OmegaConf.to_container(cfg[k], resolve=True, enum_to_str=True)
                          for k in ("trainer", "model", "data", "module", "twist")})
    out_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()
    L.seed_everything(cfg.seed, workers=True)

    # the module before the data (neither draws from the other's random numbers), so its settings and the resume
    # checkpoint are checked before any tokenizing
    module = TwISTLitModule(model=model_config(cfg), **kwargs_of(cfg.module))
    init = cfg.model.get("init_from")
    if init is not None and cfg.ckpt_path is not None:
        raise SettingError(f"model.init_from={init!r} and ckpt_path={cfg.ckpt_path!r} are both set: ckpt_path resumes "
                           "a run (weights, optimizer, step count), model.init_from starts a new one from weights. "
                           "Fix: set one of them (model.init_from=null to resume).")
    if cfg.ckpt_path is not None:
        check_resume(cfg.ckpt_path, module.config)  # readable, same shape, finite: before the Trainer starts
    init_vocab = None
    if init is not None:  # the weights (shape-checked) before the data, so a bad source fails before tokenizing
        init_vocab = init_from(module.model, str(init))
        rank_zero_info(f"model.init_from={init!r}: weights loaded" + (f" with its {init_vocab.size}-id vocabulary"
                                                                      if init_vocab is not None else ""))
        module.vocab = init_vocab  # the module's setup then refuses data encoded with another vocabulary
    dm = build_datamodule(cfg, vocab_from=str(init) if init_vocab is not None else None)
    check_final_eval(cfg, dm)
    strategy = build_strategy(cfg, module.model)
    callbacks = resampling_callbacks(strategy)

    trainer = build_trainer(cfg, out_dir, extra_callbacks=callbacks, strategy=strategy)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=cfg.ckpt_path)
    except (DivergenceError, NonFiniteCheckpointError) as err:
        if trainer.is_global_zero:  # a valid summary still says what happened, then the run fails
            write_summary({"global_step": trainer.global_step, "diverged": True, "error": str(err),
                           "wall_s": round(time.perf_counter() - start, 2)}, out_dir)
        raise
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    if cfg.final_eval.split is not None:
        # last.ckpt is the resume point (the central model as of the last sync, with the workers' state); the final
        # evaluation scores the model as trained to the end, the last partial round folded in (every rank saves)
        trainer.save_checkpoint(out_dir / "checkpoints" / "final.ckpt")
    summary = summarize(trainer, dm, metrics, time.perf_counter() - start)
    if init is not None:
        summary["init_from"] = str(init)
    summary["twist_variant"] = str(cfg.twist.variant.value if hasattr(cfg.twist.variant, "value") else cfg.twist.variant)
    if isinstance(trainer.strategy, TwISTStrategy):
        summary["twist_rounds"] = trainer.strategy.round
    counter = getattr(trainer.strategy, "counter", None)
    # under the spawn launcher the counts stay in the child processes, so they are left out rather than shown as 0
    if counter is not None and (trainer.world_size == 1 or counter.calls):
        summary["bytes_per_step"] = round(counter.bytes / max(trainer.global_step, 1), 1)
        if isinstance(trainer.strategy, TwISTStrategy) and trainer.world_size > 1:
            # what Lightning DDP hands to its gradient all-reduce every step (tests/test_comm.py checks the equality)
            ddp = sum(p.numel() * p.element_size() for p in module.model.parameters() if p.requires_grad)
            summary["ddp_bytes_per_step"] = ddp
            summary["comm_ratio_vs_ddp"] = round(summary["bytes_per_step"] / ddp, 4)
    if trainer.is_global_zero:
        summary.update(subnet_summary(cfg, module.model, dm, trainer.limit_val_batches))
        summary["wall_s"] = round(time.perf_counter() - start, 2)
        write_summary(summary, out_dir)
        if summary.get("diverged"):  # a finite but huge loss (PPL overflows) is no result either: fail, as the guard does
            raise DivergenceError(f"the run's final numbers are not finite ({', '.join(summary['non_finite'])}; "
                                  f"val_loss={summary.get('val_loss')}): it diverged although every training loss "
                                  f"was finite. {divergence_hint(module, trainer)}")
        if cfg.final_eval.split is not None:
            final_evaluation(cfg, out_dir)
    return summary


def check_final_eval(cfg: DictConfig, dm: TextDataModule) -> None:
    """``final_eval``'s split and methods, before training (the evaluation itself runs after it)."""
    from twist_lightning.evaluation import resolve_methods

    split = cfg.final_eval.split
    if split is None:
        return
    if split not in ("val", "test"):
        raise SettingError(f"final_eval.split={split!r} must be val or test (or null: no final evaluation).")
    if split not in dm.datasets:
        raise SettingError(f"final_eval.split={split} but the data has no {split} split ({sorted(dm.datasets)}). Fix: "
                           "set data.test_path=FILE (held-out text) or use final_eval.split=val.")
    try:
        resolve_methods(list(cfg.final_eval.method))
    except ValueError as err:
        raise SettingError(f"final_eval.method: {err}") from err


def final_evaluation(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """``final_eval``: ``evaluate`` on the run's final checkpoint, written to ``eval.json`` (and its plot)."""
    from twist_lightning.evaluation import evaluate_checkpoint
    from twist_lightning.plots import plot_boxes

    c = kwargs_of(cfg.final_eval)
    result = evaluate_checkpoint(out_dir / "checkpoints" / "final.ckpt", sizes=c["sizes"], samples=c["samples"],
                                 common=c["common"], seed=c["seed"], importance=c["importance"], scale=c["scale"],
                                 split=c["split"], max_batches=c["max_batches"], batch_tokens=c["batch_tokens"],
                                 methods=c["method"], calib_samples=c["calib_samples"], progress=False)
    write_json(out_dir / "eval.json", result)
    plot_boxes(result, out_dir / "eval.png")
    rank_zero_info(f"final evaluation ({c['split']} split, full PPL {result['full']['ppl']:.2f}) written to "
                   f"{out_dir / 'eval.json'}")
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    summary = train(cfg)
    return summary["val_loss"]  # the value a Hydra sweeper optimises


def _alias_true_variant(argv: list[str]) -> list[str]:
    """Hydra parses ``twist=true`` as a boolean, which a config-group override refuses; it means ``physical``."""
    return [GROUP_SPELLINGS.get(arg, arg) for arg in argv]


def _check_run_dir(argv: list[str]) -> None:
    """Hydra creates the run folder before ``train`` runs; a file there would fail as a raw FileExistsError."""
    for arg in argv:
        if arg.startswith("hydra.run.dir="):
            try:
                check_out_folder("hydra.run.dir", arg.split("=", 1)[1])
            except ValueError as err:
                raise SystemExit(f"Error: {err}") from None  # exit 1 with the message, as Hydra does for its own


if __name__ == "__main__":
    sys.argv = _alias_true_variant(sys.argv)
    _check_run_dir(sys.argv[1:])
    main()
