"""A ``transformers`` GPT-2 whose layers may be narrower: the Hugging Face form of an exported TwIST subnet.

Stock ``GPT2LMHeadModel`` gives every layer ``n_head`` heads of ``n_embd // n_head`` and one FFN width
``n_inner``, and transformers 5 no longer prunes heads. A TwIST subnet keeps a different number of heads and FFN
units in each layer (common layers stay whole), so this module subclasses the stock model with two more config
fields:

- ``layer_heads``: heads per layer (head dim stays ``n_embd // n_head``, so attention is ``layer_heads[i] * head_dim``
  wide);
- ``layer_inner``: FFN hidden width per layer.

Everything else is GPT-2's: parameter names, attention kernels (eager/sdpa), the KV cache and ``generate()``.

This file imports only ``torch``/``transformers``: the exporter copies it into the model folder and names it in
``config.json``'s ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`` works
on a machine without twist-lightning. Importing this module also registers the classes with the ``Auto*``
factories, so where twist-lightning is installed ``trust_remote_code`` is not needed.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

MODEL_TYPE = "twist_gpt2"


@strict
class TwISTGPT2Config(GPT2Config):
    """``GPT2Config`` plus per-layer widths; ``None`` = GPT-2's (``n_head`` heads, ``n_inner or 4 * n_embd``)."""

    model_type = MODEL_TYPE

    layer_heads: list[int] | None = None
    layer_inner: list[int] | None = None

    def __post_init__(self, **kwargs):
        full_inner = self.n_inner if self.n_inner is not None else 4 * self.n_embd
        if self.layer_heads is None:
            self.layer_heads = [self.n_head] * self.n_layer
        if self.layer_inner is None:
            self.layer_inner = [full_inner] * self.n_layer
        self.layer_heads = [int(h) for h in self.layer_heads]
        self.layer_inner = [int(w) for w in self.layer_inner]
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """Part of ``@strict`` validation: per-layer widths must fit the model."""
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}.")
        if len(self.layer_heads) != self.n_layer or not all(1 <= h <= self.n_head for h in self.layer_heads):
            raise ValueError(f"layer_heads={self.layer_heads} must list {self.n_layer} head counts in 1..{self.n_head}.")
        if len(self.layer_inner) != self.n_layer or not all(w >= 1 for w in self.layer_inner):
            raise ValueError(f"layer_inner={self.layer_inner} must list {self.n_layer} positive FFN widths.")


class TwISTGPT2LMHeadModel(GPT2LMHeadModel):
    """``GPT2LMHeadModel`` with ``config.layer_heads[i]`` heads and ``config.layer_inner[i]`` FFN units in layer i."""

    config_class = TwISTGPT2Config

    def __init__(self, config: TwISTGPT2Config):
        super().__init__(config)
        head_dim = config.n_embd // config.n_head
        for block, heads, inner in zip(self.transformer.h, config.layer_heads, config.layer_inner):
            attn, mlp = block.attn, block.mlp
            width = heads * head_dim
            if width != attn.split_size:  # GPT2Attention splits q|k|v by split_size and views heads of head_dim
                attn.num_heads, attn.split_size = heads, width
                attn.c_attn = Conv1D(3 * width, config.n_embd)  # (n_embd, 3*h*hd)
                attn.c_proj = Conv1D(config.n_embd, width)  # (h*hd, n_embd)
                attn.__dict__.pop("_is_hf_initialized", None)  # so post_init gives the new c_proj GPT-2's init
            if inner != mlp.c_fc.nf:
                mlp.c_fc = Conv1D(inner, config.n_embd)  # (n_embd, inner)
                mlp.c_proj = Conv1D(config.n_embd, inner)  # (inner, n_embd)
                mlp.__dict__.pop("_is_hf_initialized", None)
        self.post_init()  # initialises only the modules replaced above; the rest are already marked


# save_pretrained copies this file into the folder and writes config.json's auto_map (for trust_remote_code);
# the registrations let Auto* classes load such folders wherever this module is imported
TwISTGPT2Config.register_for_auto_class()
TwISTGPT2LMHeadModel.register_for_auto_class("AutoModelForCausalLM")
AutoConfig.register(MODEL_TYPE, TwISTGPT2Config, exist_ok=True)
AutoModelForCausalLM.register(TwISTGPT2Config, TwISTGPT2LMHeadModel, exist_ok=True)

__all__ = ["MODEL_TYPE", "TwISTGPT2Config", "TwISTGPT2LMHeadModel"]
