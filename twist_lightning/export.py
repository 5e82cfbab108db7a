"""Cut one "golden ticket" subnet out of a trained TwIST model as a standalone dense GPT.

``python -m twist_lightning.export checkpoint=PATH size=N selector=random|importance|explicit out=DIR``
picks a subnet of the checkpoint's full model (random ``N``-subset of heads and FFN groups per split layer,
the ``N`` highest-magnitude units, or an explicit ``blueprint=FILE.json``), cuts it into a narrower dense GPT
(:func:`~twist_lightning.partition.extract`) and writes::

    DIR/model.safetensors   the subnet's weights (tied embedding stored once)
    DIR/config.json         GPTConfig.to_dict(): narrowed layer widths, branch scales, extra.blueprint/export
    DIR/vocab.json          the compact vocabulary, when the checkpoint has one

:func:`load_exported` rebuilds it with neither the full model nor the strategy. With ``hf=true`` a
``transformers`` GPT-2 folder ``DIR/hf/`` is written too (see :func:`to_hf`).

**The HF export.** ``hf_layout=pruned`` (default) writes a
:class:`~twist_lightning.hf_gpt2.TwISTGPT2LMHeadModel`: GPT-2 with each layer's own head count and FFN width, as
small and as fast as the subnet, with the branch scales folded into the output projections. Its folder carries
``hf_gpt2.py`` and an ``auto_map``, so it loads with ``AutoModelForCausalLM.from_pretrained(DIR/hf,
trust_remote_code=True)`` where twist-lightning is not installed (and without ``trust_remote_code`` where
``twist_lightning.hf_gpt2`` is imported). Stock ``GPT2LMHeadModel`` cannot hold per-layer widths (transformers 5
has no ``prune_heads``), so ``hf_layout=padded`` is for tools that accept nothing else: every head slot stays, the
dropped ones zeroed, and the FFN is zero-padded to the widest layer; same logits, little size saved.

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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import MISSING
from safetensors.torch import load_model, save_model

from twist_lightning.guard import check_finite_model
from twist_lightning.io import atomic_files, atomic_path, write_json
from twist_lightning.hf_tokenizer import write_decoding_files
from twist_lightning.model import GPT, GPTConfig, head_cols, head_rows
from twist_lightning.tokenizer import EOT_ID
from twist_lightning.partition import Blueprint, PartitionSpec, extract, importance_blueprint, random_blueprint, \
    resolve_n_sub
from twist_lightning.vocab import CompactVocab

__all__ = ["SELECTORS", "HFLayout", "export_hf", "export_subnet", "load_exported", "load_exported_vocab",
           "select_blueprint", "to_hf"]

SELECTORS = ("random", "importance", "explicit")
FORMAT = "twist-lightning-export/1"
WEIGHTS, CONFIG, VOCAB, HF_DIR = "model.safetensors", "config.json", "vocab.json", "hf"


# ---- choosing the subnet ------------------------------------------------------------------------------------------
def check_size(spec: PartitionSpec, size: int | float, key: str = "size") -> tuple[int, int]:
    """``(heads, ffn_groups)`` of ``size`` (a head count or a fraction); a ``ValueError`` naming ``key`` otherwise."""
    try:
        return resolve_n_sub(spec, size)
    except ValueError as err:
        raise ValueError(f"{key}={size!r} is out of range for this model (n_head={spec.n_head}, ffn_groups="
                         f"{spec.ffn_groups}): use a head count in 1..{spec.n_head} or a fraction in (0, 1]. "
                         f"({err})") from None


def select_blueprint(model: GPT, spec: PartitionSpec, selector: str, size: int | float | None = None,
                     seed: int = 0, blueprint: str | os.PathLike[str] | Blueprint | None = None) -> Blueprint:
    """The subnet to export.

    Args:
        model: The full-size model.
        spec: Which layers are split (``common`` layers stay whole).
        selector: ``"random"`` (seeded uniform units), ``"importance"`` (highest-magnitude units, see
            :func:`~twist_lightning.partition.unit_scores`) or ``"explicit"`` (``blueprint``).
        size: Units per split layer: a head count or a fraction of ``n_head`` (not used by ``explicit``).
        seed: Seed of the ``random`` selector.
        blueprint: ``explicit`` only: a :class:`Blueprint` or a JSON file of ``Blueprint.to_dict()``.

    Raises:
        ValueError: Unknown selector, missing or out-of-range size, or an explicit blueprint of another shape.
        FileNotFoundError: The blueprint file does not exist.
    """
    if selector not in SELECTORS:
        raise ValueError(f"selector={selector!r} is not one of {list(SELECTORS)}.")
    if selector == "explicit":
        if blueprint is None:
            raise ValueError("selector=explicit needs blueprint=FILE.json (a Blueprint.to_dict() JSON).")
        bp = blueprint if isinstance(blueprint, Blueprint) else _read_blueprint(blueprint)
        try:
            bp.check_model(model)
        except ValueError as err:
            raise ValueError(f"blueprint={blueprint}: {err}") from None
        return bp
    if size is None:
        raise ValueError(f"selector={selector} needs size=N (heads per split layer, 1..{spec.n_head}) or a fraction.")
    check_size(spec, size)
    if selector == "random":
        return random_blueprint(spec, size, seed)
    return importance_blueprint(model, spec, size)


def _read_blueprint(path: str | os.PathLike[str]) -> Blueprint:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"blueprint={str(path)!r} does not exist; write one with Blueprint.to_json().")
    try:
        return Blueprint.from_dict(json.loads(p.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"blueprint={str(path)!r} is not a Blueprint JSON ({err}); expected keys "
                         "n_head, ffn_groups, heads, ffn.") from None


# ---- native export ------------------------------------------------------------------------------------------------
def export_subnet(model: GPT, blueprint: Blueprint, out_dir: str | os.PathLike[str], vocab: CompactVocab | None = None,
                  scale: bool = True, metadata: dict[str, Any] | None = None) -> GPT:
    """Write ``blueprint``'s subnet of the full-size ``model`` as a standalone dense GPT folder.

    Args:
        model: The full-size model.
        blueprint: The subnet.
        out_dir: Created if needed; ``model.safetensors``, ``config.json`` (and ``vocab.json``) are overwritten.
        vocab: The compact vocabulary the model was trained with, if any.
        scale: Fold TwIST's ``sqrt(N_full / N_sub)`` branch scales into the subnet (as it was trained).
        metadata: Extra provenance stored in ``config.extra["export"]`` (selector, seed, source checkpoint ...).

    Returns:
        The extracted subnet (on ``model``'s device, in eval mode).
    """
    return write_export(extract(model, blueprint, scale=scale), out_dir, vocab, metadata,
                        what=f"subnet {blueprint}")


def write_export(sub: GPT, out_dir: str | os.PathLike[str], vocab: CompactVocab | None = None,
                 metadata: dict[str, Any] | None = None, what: str = "model") -> GPT:
    """Write the physical GPT ``sub`` (an extracted subnet or a pruned model) as an export folder; returns it.

    Refuses non-finite weights (a diverged checkpoint) before writing anything.
    """
    sub = sub.eval()
    source = (metadata or {}).get("checkpoint")
    check_finite_model(sub, f"checkpoint={source!r}, {what}," if source else f"the {what}")
    sub.config.extra = {**sub.config.extra, "export": {"format": FORMAT, **(metadata or {})}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # save_model drops one name of the tied wte/lm_head pair; load_model restores the tie
    with atomic_path(out / WEIGHTS) as tmp:  # each file complete or absent, also when the process is killed
        save_model(sub, str(tmp), metadata={"format": FORMAT})
    write_json(out / CONFIG, sub.config.to_dict())
    if vocab is not None:
        vocab.save(out / VOCAB)
    elif (out / VOCAB).exists():
        (out / VOCAB).unlink()  # a stale vocabulary from an earlier export would decode wrongly
    return sub


def load_exported(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> GPT:
    """Rebuild an exported subnet (eval mode) from its folder; needs neither the full model nor the strategy.

    Raises:
        FileNotFoundError: The folder or one of its files is missing.
        ValueError: ``config.json`` is not an exported GPTConfig or the weights do not fit it.
    """
    folder = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"export={str(path)!r} has no {name}; write one with "
                                    "`python -m twist_lightning.export ... out=DIR`.")
    try:
        config = GPTConfig(**json.loads((folder / CONFIG).read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"export={str(path)!r}: {CONFIG} is not a GPTConfig ({err}).") from None
    model = GPT(config)
    try:
        missing, unexpected = load_model(model, str(folder / WEIGHTS), strict=True, device=str(map_location))
    except Exception as err:  # safetensors raises RuntimeError on shapes and SafetensorError on corrupt files
        raise ValueError(f"export={str(path)!r}: {WEIGHTS} does not fit {CONFIG} ({str(err)[:300]}).") from err
    return model.to(map_location).eval()


def load_exported_vocab(path: str | os.PathLike[str]) -> CompactVocab | None:
    """The exported compact vocabulary, or ``None`` when the model uses GPT-2's ids."""
    file = Path(path) / VOCAB
    return CompactVocab.load(file) if file.is_file() else None


# ---- Hugging Face export ------------------------------------------------------------------------------------------
class HFLayout(str, Enum):
    """How ``hf=true`` lays a subnet out as a ``transformers`` model (lower-case names: OmegaConf matches by name)."""

    pruned = "pruned"  # TwISTGPT2LMHeadModel: dropped heads and FFN units really gone (custom code, auto_map)
    padded = "padded"  # stock GPT2LMHeadModel: dropped heads zeroed in place, FFN zero-padded to the widest layer


def _hf_config_kwargs(sub: GPT, vocab: CompactVocab | None) -> dict[str, Any]:
    cfg = sub.config
    # <|endoftext|> as the model sees it: its compact id, GPT-2's id, or none for another vocabulary
    eot = int(vocab.encode([EOT_ID])[0]) if vocab is not None else (EOT_ID if cfg.vocab_size > EOT_ID else None)
    return dict(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=eot, eos_token_id=eot,
                twist_blueprint=cfg.extra.get("blueprint"))  # provenance; HF keeps unknown config keys


def _hf_pruned(sub: GPT, vocab: CompactVocab | None) -> Any:
    from twist_lightning.hf_gpt2 import TwISTGPT2Config, TwISTGPT2LMHeadModel

    cfg = sub.config
    config = TwISTGPT2Config(
        layer_heads=[cfg.heads(i) for i in range(cfg.n_layer)],
        layer_inner=[cfg.ffn_units(i) * cfg.ffn_unit_width for i in range(cfg.n_layer)],
        architectures=["TwISTGPT2LMHeadModel"], **_hf_config_kwargs(sub, vocab))
    # every tensor has the subnet's shape already (copy_ would raise otherwise)
    return _load_subnet(TwISTGPT2LMHeadModel(config).eval(), sub, lambda name, dst, value: dst.copy_(value))


def _load_subnet(hf: Any, sub: GPT, place: Any) -> Any:
    """Write ``sub``'s HF-layout tensors into ``hf`` with ``place(name, dst, value)``; returns ``hf``.

    Values come from :meth:`GPT.hf_state_dict` (Conv1D layout, branch scales folded into ``c_proj``). HF GPT-2
    always has biases: a bias-free subnet gets zeros, which compute the same.
    """
    narrow = sub.hf_state_dict()
    for name, dst in hf.state_dict().items():
        if name in narrow:
            place(name, dst, narrow[name])
        elif name.endswith(".bias") and not sub.config.bias:
            dst.zero_()
        else:
            raise KeyError(f"{name} of the HF model has no counterpart in the subnet's state dict.")
    return hf


def _hf_padded(sub: GPT, vocab: CompactVocab | None) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg, bp = sub.config, Blueprint.from_dict(sub.config.extra["blueprint"])
    n_inner = max(cfg.ffn_units(i) for i in range(cfg.n_layer)) * cfg.ffn_unit_width
    config = GPT2Config(n_inner=None if n_inner == 4 * cfg.n_embd else n_inner, architectures=["GPT2LMHeadModel"],
                        **_hf_config_kwargs(sub, vocab))

    def place(name: str, dst: torch.Tensor, value: torch.Tensor) -> None:
        if ".h." not in name or not (".c_attn." in name or ".c_proj.weight" in name or ".c_fc." in name):
            dst.copy_(value)  # shared shape: embeddings, norms, c_proj biases
            return
        layer = int(name.split(".h.")[1].split(".")[0])
        dst.zero_()
        if ".attn." in name:  # put each kept head back into its own slot
            heads = torch.tensor(bp.heads[layer], dtype=torch.long)
            if ".c_attn." in name:
                dst.index_copy_(dst.dim() - 1, head_rows(heads, cfg.head_dim, cfg.n_embd), value)
            else:  # attn.c_proj.weight, (in = head outputs, out)
                dst.index_copy_(0, head_cols(heads, cfg.head_dim), value)
        elif ".c_fc." in name:  # FFN hidden units first, zero padding after
            dst[..., : value.shape[-1]].copy_(value)
        else:  # mlp.c_proj.weight (in = hidden, out)
            dst[: value.shape[0]].copy_(value)

    return _load_subnet(GPT2LMHeadModel(config).eval(), sub, place)


@torch.no_grad()
def to_hf(sub: GPT, vocab: CompactVocab | None = None, layout: HFLayout | str = HFLayout.pruned) -> Any:
    """A ``transformers`` causal LM computing the same logits as the physical subnet ``sub``.

    ``layout="pruned"`` (default) builds a :class:`~twist_lightning.hf_gpt2.TwISTGPT2LMHeadModel`: GPT-2 with the
    subnet's own head count and FFN width in every layer, so it is as small and as fast as the subnet.
    ``layout="padded"`` builds a stock ``GPT2LMHeadModel`` for tools that accept nothing else: dropped heads keep
    their slots with zero weights and FFN layers are zero-padded to the subnet's widest one (only the FFN shrinks,
    and only when every layer has the same width). Either way the branch scales are folded into each ``c_proj``
    weight and bias (:meth:`GPT.hf_state_dict`). ``vocab`` (the compact vocabulary, if any) sets the end-of-text id.
    Needs ``transformers``.
    """
    _need_transformers()
    layout = _hf_layout(layout)
    if "blueprint" not in sub.config.extra:
        raise ValueError("to_hf needs a subnet made by partition.extract / export_subnet (config.extra['blueprint'] "
                         "records which units it kept).")
    return (_hf_pruned if layout is HFLayout.pruned else _hf_padded)(sub, vocab)


def _need_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError("hf=true needs transformers: pip install -e '.[hf]' (or leave hf=false)") from err


def _hf_layout(layout: HFLayout | str) -> HFLayout:
    try:
        return HFLayout(layout)
    except ValueError:
        raise ValueError(f"hf_layout={layout!r} is not one of {[m.value for m in HFLayout]}: 'pruned' for the "
                         "smaller model (loads with trust_remote_code or with twist_lightning imported), 'padded' "
                         "for a stock GPT2LMHeadModel.") from None


def export_hf(sub: GPT, out_dir: str | os.PathLike[str], vocab: CompactVocab | None = None,
              layout: HFLayout | str = HFLayout.pruned) -> Any:
    """Write :func:`to_hf` of ``sub`` with ``save_pretrained`` to ``out_dir`` (plus ``vocab.json``); returns it.

    The pruned layout's folder also holds ``hf_gpt2.py`` and an ``auto_map``, so
    ``AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=True)`` loads it without twist-lightning. With
    GPT-2's full vocabulary it holds GPT-2's tokenizer too (built from the shipped ranks, ``hf_tokenizer.py``), so
    ``pipeline("text-generation", model=out_dir, trust_remote_code=True)`` generates; with a compact vocabulary,
    ``DECODING.md`` says how to map its ids.
    """
    hf = to_hf(sub, vocab, layout)
    check_finite_model(hf, f"hf export to {str(out_dir)!r}")
    with atomic_files(out_dir) as tmp:
        hf.save_pretrained(str(tmp))
    if vocab is not None:
        vocab.save(Path(out_dir) / VOCAB)  # HF has no notion of our id remapping; keep it next to the weights
    # GPT-2's tokenizer files (full vocabulary) or DECODING.md (compact), so the folder turns ids back into text
    write_decoding_files(out_dir, vocab, sub.config.vocab_size, sub.config.block_size)
    return hf


# ---- Hydra CLI ----------------------------------------------------------------------------------------------------
@dataclass
class ExportConfig:
    """``python -m twist_lightning.export`` settings (conf/export.yaml)."""

    checkpoint: str = MISSING
    out: str = MISSING
    size: Any = None  # head count per split layer, or a fraction of n_head in (0, 1]
    selector: str = "random"
    seed: int = 0
    blueprint: Optional[str] = None  # selector=explicit: Blueprint JSON file
    common: Any = "default"  # layers kept whole ("default" = first and last, "none", or indices)
    scale: bool = True
    hf: bool = False
    hf_layout: HFLayout = HFLayout.pruned
    method: Optional[str] = None  # a pruning baseline instead of a subnet: random|magnitude|activation|flap|reconstruct
    calib_samples: int = 128  # method's calibration sequences, from the checkpoint's training split
    calib_seed: int = 0
    structure: str = "uniform"  # method=flap: uniform | adaptive
    damp: float = 0.01  # method=reconstruct's ridge term
    flap_compensate: bool = True  # method=flap's bias compensation; false = FLAP's units, scaled like random subnets


def register_configs() -> None:
    """Store the ``base_export`` schema in Hydra's ConfigStore (conf/export.yaml extends it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_export", node=ExportConfig)


def export_from_config(cfg: Any) -> dict[str, Any]:
    """Run one export described by an :class:`ExportConfig` (Hydra ``DictConfig`` or dataclass); returns a summary."""
    from twist_lightning.checkpoint import load_gpt
    from twist_lightning.validate import check_export_settings

    check_export_settings({k: _plain(getattr(cfg, k, None)) for k in ("checkpoint", "out", "size", "selector")})
    if cfg.selector not in SELECTORS:  # before loading anything
        raise ValueError(f"selector={cfg.selector!r} is not one of {list(SELECTORS)}.")
    layout = _hf_layout(getattr(cfg, "hf_layout", HFLayout.pruned))
    if cfg.hf:
        _need_transformers()  # before loading anything
    method = getattr(cfg, "method", None)
    if method is not None:
        return _export_pruned(cfg, layout)
    model, vocab, _ = load_gpt(cfg.checkpoint)
    spec = PartitionSpec.from_config(model.config, common=_plain(cfg.common))
    bp = select_blueprint(model, spec, cfg.selector, _plain(cfg.size), cfg.seed, cfg.blueprint)
    meta = {"checkpoint": str(cfg.checkpoint), "selector": cfg.selector, "size": _plain(cfg.size),
            "seed": cfg.seed, "common": list(spec.common), "scale": cfg.scale}
    sub = export_subnet(model, bp, cfg.out, vocab=vocab, scale=cfg.scale, metadata=meta)
    return _finish(cfg, layout, model, sub, bp, vocab)


def _export_pruned(cfg: Any, layout: HFLayout) -> dict[str, Any]:
    """``method=...``: prune the checkpoint's full model with a post-training method and export the result."""
    from twist_lightning.checkpoint import load_gpt
    from twist_lightning.evaluate import build_datamodule, train_calibration
    from twist_lightning.prune import NEEDS_DATA, calibrate, check_settings, parse_method, parse_structure, prune

    method = parse_method(cfg.method)  # everything is checked before loading anything
    if cfg.selector != "random" or cfg.blueprint is not None:
        raise ValueError(f"method={method.value} chooses its own units; drop selector={cfg.selector}"
                         f"{' and blueprint=' if cfg.blueprint is not None else ''} (or method).")
    structure = parse_structure(cfg.structure)
    check_settings([method], structure, cfg.damp)
    if cfg.size is None:
        raise ValueError(f"method={method.value} needs size=N (heads = FFN groups kept per split layer).")
    if isinstance(cfg.calib_samples, bool) or not isinstance(cfg.calib_samples, int) or cfg.calib_samples < 1:
        raise ValueError(f"calib_samples={cfg.calib_samples!r} must be an int >= 1.")
    model, vocab, saved = load_gpt(cfg.checkpoint)
    spec = PartitionSpec.from_config(model.config, common=_plain(cfg.common))
    check_size(spec, _plain(cfg.size))
    calibration = None
    if method in NEEDS_DATA:
        if not saved:
            raise ValueError(f"method={method.value} calibrates on the checkpoint's training split, but "
                             f"checkpoint={str(cfg.checkpoint)!r} has no saved data settings; use a checkpoint "
                             "written by twist_lightning.run (or method=random|magnitude, which need no data).")
        dm, remap = build_datamodule(saved, {}, model.config.vocab_size, model.config.block_size, vocab,
                                     str(cfg.checkpoint))
        batches = train_calibration(dm, cfg.calib_samples, cfg.calib_seed, torch.device("cpu"),
                                    vocab if remap else None)
        calibration = calibrate(model, batches, progress=True)
    result = prune(model, _plain(cfg.size), method, calibration, common=list(spec.common), seed=cfg.seed,
                   scale=cfg.scale, structure=structure, damp=cfg.damp, compensate=cfg.flap_compensate,
                   progress=True)
    meta = {"checkpoint": str(cfg.checkpoint), "method": method.value, "size": _plain(cfg.size),
            "common": list(spec.common), **result.info}
    meta["blueprint"] = result.blueprint.to_dict()
    sub = write_export(result.model, cfg.out, vocab, meta, what=f"{method.value}-pruned model")
    return _finish(cfg, layout, model, sub, result.blueprint, vocab)


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
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    except ImportError:  # pragma: no cover - hydra is a dependency
        return value


def _main() -> None:
    import hydra

    register_configs()

    @hydra.main(version_base="1.3", config_path="../conf", config_name="export")
    def main(cfg: Any) -> None:
        export_from_config(cfg)

    main()


if __name__ == "__main__":
    _main()
