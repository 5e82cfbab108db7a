"""The Hugging Face export: a physical subnet as a ``transformers`` GPT-2 folder (``export hf=true``).

``layout="pruned"`` (default) writes a :class:`~twist_lightning.hf_gpt2.TwISTGPT2LMHeadModel`: GPT-2 with each
layer's own head count and FFN width, as small and as fast as the subnet, with the branch scales folded into the
output projections. Its folder carries ``hf_gpt2.py`` and an ``auto_map``, so it loads with
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` where twist-lightning is not installed (and
without ``trust_remote_code`` where ``twist_lightning.hf_gpt2`` is imported). Stock ``GPT2LMHeadModel`` cannot
hold per-layer widths (transformers 5 has no ``prune_heads``), so ``layout="padded"`` is for tools that accept
nothing else: every head slot stays, the dropped ones zeroed, and the FFN is zero-padded to the widest layer; same
logits, little size saved. ``transformers`` is imported only when a model is built.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from twist_lightning.blueprints import Blueprint
from twist_lightning.dense_export import VOCAB
from twist_lightning.guard import check_finite_model
from twist_lightning.hf_tokenizer import write_decoding_files
from twist_lightning.io import atomic_files
from twist_lightning.model import GPT, head_cols, head_rows
from twist_lightning.tokenizer import EOT_ID
from twist_lightning.vocab import CompactVocab

__all__ = ["HF_DIR", "HFLayout", "export_hf", "need_transformers", "parse_hf_layout", "to_hf"]

#: The sub-folder of an export folder that ``hf=true`` writes.
HF_DIR = "hf"


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
    need_transformers()
    layout = parse_hf_layout(layout)
    if "blueprint" not in sub.config.extra:
        raise ValueError("to_hf needs a subnet made by partition.extract / export_subnet (config.extra['blueprint'] "
                         "records which units it kept).")
    return (_hf_pruned if layout is HFLayout.pruned else _hf_padded)(sub, vocab)


def need_transformers() -> None:
    """Raise an ``ImportError`` naming the ``hf`` extra unless ``transformers`` is installed."""
    try:
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError("hf=true needs transformers: pip install -e '.[hf]' (or leave hf=false)") from err


def parse_hf_layout(layout: HFLayout | str) -> HFLayout:
    """``layout`` as an :class:`HFLayout`; a ``ValueError`` naming ``hf_layout`` and the choices otherwise."""
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
