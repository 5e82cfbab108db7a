"""Cut one "golden ticket" subnet out of a trained TwIST model as a standalone dense GPT.

``python -m twist_lightning.export checkpoint=PATH size=N selector=random|importance|explicit out=DIR``
picks a subnet of the checkpoint's full model (random ``N``-subset of heads and FFN groups per split layer,
the ``N`` highest-magnitude units, or an explicit ``blueprint=FILE.json``), cuts it into a narrower dense GPT
(:func:`~twist_lightning.subnets.extract`) and writes::

    DIR/model.safetensors   the subnet's weights (tied embedding stored once)
    DIR/config.json         GPTConfig.to_dict(): narrowed layer widths, branch scales, extra.blueprint/export
    DIR/vocab.json          the compact vocabulary, when the checkpoint has one

:func:`~twist_lightning.dense_export.load_exported` rebuilds it with neither the full model nor the strategy. With
``hf=true`` a ``transformers`` GPT-2 folder ``DIR/hf/`` is written too.

**The HF export.** ``hf_layout=pruned`` (default) writes a
:class:`~twist_lightning.hf_gpt2.TwISTGPT2LMHeadModel` (GPT-2 with each layer's own head count and FFN width) that
loads with ``AutoModelForCausalLM.from_pretrained(DIR/hf, trust_remote_code=True)``; ``hf_layout=padded`` a stock
``GPT2LMHeadModel`` with the dropped units zeroed (:mod:`twist_lightning.hf_export`).

Examples::

    python -m twist_lightning.export checkpoint=last.ckpt size=2 out=exports/half
    python -m twist_lightning.export checkpoint=last.ckpt size=0.5 selector=importance common=none out=e hf=true
    python -m twist_lightning.export checkpoint=last.ckpt size=2 out=e hf=true hf_layout=padded
    python -m twist_lightning.export checkpoint=last.ckpt selector=explicit blueprint=bp.json out=e
    python -m twist_lightning.export checkpoint=last.ckpt size=6 method=flap out=e hf=true

**Pruned baselines.** ``method=random|magnitude|activation|flap|reconstruct`` writes the full model pruned by a
post-training method of :mod:`twist_lightning.prune` instead of a TwIST subnet (calibrated on ``calib_samples``
sequences of the checkpoint's *training* split; flap and reconstruct also change the kept weights), in the same
folder format, so either can be shipped and compared.

This module is the command line only: the library is :mod:`twist_lightning.dense_export`,
:mod:`twist_lightning.hf_export` and :mod:`twist_lightning.selection`, the schema
:class:`twist_lightning.config.ExportConfig`. The names that lived here before that split are re-exported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import OmegaConf

from twist_lightning.blueprints import Blueprint
from twist_lightning.config import ExportConfig, register_configs
from twist_lightning.dense_export import (CONFIG, FORMAT, VOCAB, WEIGHTS, export_checkpoint_subnet, export_pruned,
                                          export_subnet, load_exported, load_exported_vocab, write_export)
from twist_lightning.hf_export import HF_DIR, HFLayout, export_hf, need_transformers, parse_hf_layout, to_hf
from twist_lightning.model import GPT
from twist_lightning.prune import parse_method
from twist_lightning.selection import SELECTORS, check_size, select_blueprint
from twist_lightning.validate import check_export_settings
from twist_lightning.vocab import CompactVocab

__all__ = [  # export_from_config is this module's own; the others are re-exported from the library modules
    "CONFIG", "FORMAT", "HF_DIR", "SELECTORS", "VOCAB", "WEIGHTS", "ExportConfig", "HFLayout", "check_size",
    "export_from_config", "export_hf", "export_subnet", "load_exported", "load_exported_vocab", "register_configs",
    "select_blueprint", "to_hf", "write_export",
]


def export_from_config(cfg: Any) -> dict[str, Any]:
    """Run one export described by an :class:`ExportConfig` (Hydra ``DictConfig`` or dataclass); returns a summary."""
    check_export_settings({k: _plain(getattr(cfg, k, None)) for k in ("checkpoint", "out", "size", "selector")})
    if cfg.selector not in SELECTORS:  # before loading anything
        raise ValueError(f"selector={cfg.selector!r} is not one of {list(SELECTORS)}.")
    layout = parse_hf_layout(getattr(cfg, "hf_layout", HFLayout.pruned))
    if cfg.hf:
        need_transformers()  # before loading anything
    method = getattr(cfg, "method", None)
    if method is not None:
        method = parse_method(method)
        if cfg.selector != "random" or cfg.blueprint is not None:
            raise ValueError(f"method={method.value} chooses its own units; drop selector={cfg.selector}"
                             f"{' and blueprint=' if cfg.blueprint is not None else ''} (or method).")
        model, sub, bp, vocab = export_pruned(
            cfg.checkpoint, cfg.out, _plain(cfg.size), method.value, common=_plain(cfg.common), seed=cfg.seed,
            scale=cfg.scale, calib_samples=cfg.calib_samples, calib_seed=cfg.calib_seed, structure=cfg.structure,
            damp=cfg.damp, flap_compensate=cfg.flap_compensate)
    else:
        model, sub, bp, vocab = export_checkpoint_subnet(
            cfg.checkpoint, cfg.out, cfg.selector, _plain(cfg.size), cfg.seed, cfg.blueprint,
            common=_plain(cfg.common), scale=cfg.scale)
    return _finish(cfg, layout, model, sub, bp, vocab)


def _finish(cfg: Any, layout: HFLayout, model: GPT, sub: GPT, bp: Blueprint, vocab: CompactVocab | None
            ) -> dict[str, Any]:
    """The ``hf=true`` folder and the summary, for subnets and pruned models alike."""
    if cfg.hf:
        export_hf(sub, Path(cfg.out) / HF_DIR, vocab, layout)
    full_params, sub_params = model.num_params(False), sub.num_params(False)
    summary = {"out": str(cfg.out), "blueprint": str(bp), "params": sub_params, "full_params": full_params,
               "param_ratio": sub_params / full_params, "hf": bool(cfg.hf),
               "hf_layout": layout.value if cfg.hf else None}
    rank_zero_info(f"Exported {sub_params / 1e6:.3f}M of {full_params / 1e6:.3f}M parameters to {cfg.out}\n  {bp}")
    return summary


def _plain(value: Any) -> Any:
    """OmegaConf containers -> Python lists; scalars unchanged."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _main() -> None:
    register_configs()

    @hydra.main(version_base="1.3", config_path="../conf", config_name="export")
    def main(cfg: Any) -> None:
        export_from_config(cfg)

    main()


if __name__ == "__main__":
    _main()
