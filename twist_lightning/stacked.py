"""Several subnets of one GPT in a single forward pass, for evaluating many random subnets at once.

Evaluating K subnets one after another reads the data K times and gathers each subnet's weights again for every
batch. Subnets with the same per-layer unit counts (every random draw of one size, and the importance-selected
one) have weights of identical shapes, so their gathered weights stack on a leading subnet axis once, and a
batched matmul (``torch.baddbmm``) runs all K on the same tokens: the embeddings are computed once, each split
layer is K small matmuls fused into one call, layers every subnet holds whole (the common layers) are one shared
matmul over all K copies of the activations, and the LM head runs one subnet at a time to cap the
``(B, T, vocab)`` logits it holds.

It computes what ``GPT`` computes with ``set_subnet`` (same scales; logits equal to ~1e-6). Pure torch,
inference only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from twist_lightning.model import GPT, ffn_cols, head_cols, head_rows
from twist_lightning.blueprints import Blueprint

__all__ = ["StackedSubnets"]


@dataclass(frozen=True)
class _Linear:
    """A linear map per subnet: ``weight`` (K, in, out) and ``bias`` (K, out), or one shared (out, in) / (out,)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # x (K, N, in) -> (K, N, out)
        if self.weight.dim() == 2:  # a whole layer: the same weights for every subnet
            return F.linear(x, self.weight, self.bias)
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias[:, None, :], x, self.weight)


@dataclass(frozen=True)
class _Layer:
    c_attn: _Linear
    attn_proj: _Linear
    c_fc: _Linear
    mlp_proj: _Linear
    n_heads: int
    attn_scale: float
    mlp_scale: float


def _stack_in(weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor | None) -> _Linear:
    """Output rows ``rows`` (K, out) of a torch Linear ``weight`` (out, in), as (K, in, out); None = shared."""
    if rows is None:
        return _Linear(weight, bias)
    return _Linear(weight[rows].transpose(1, 2).contiguous(), None if bias is None else bias[rows])


def _stack_out(weight: torch.Tensor, bias: torch.Tensor | None, cols: torch.Tensor | None, k: int) -> _Linear:
    """Input columns ``cols`` (K, in) of ``weight`` (out, in), as (K, in, out); the bias is shared by all."""
    if cols is None:
        return _Linear(weight, bias)
    w = weight[:, cols].permute(1, 2, 0).contiguous()  # (out, K, in) -> (K, in, out)
    return _Linear(w, None if bias is None else bias.expand(k, -1))


class StackedSubnets:
    """Run ``blueprints`` (all with the same per-layer unit counts) of the full-size ``model`` in one pass.

    Args:
        model: A full-size GPT; its weights are gathered once here (K copies of the subnets' split layers).
        blueprints: K >= 1 blueprints whose ``sizes()`` are equal.
        scale: TwIST's ``sqrt(N_full / N_sub)`` branch scaling, as in ``GPT.set_subnet``.

    Example:
        >>> stack = StackedSubnets(model, [bp_a, bp_b])   # doctest: +SKIP
        >>> logits = stack(idx)                            # (2, B, T, vocab)
    """

    def __init__(self, model: GPT, blueprints: Sequence[Blueprint], scale: bool = True) -> None:
        blueprints = list(blueprints)
        if not blueprints:
            raise ValueError("StackedSubnets needs at least one blueprint.")
        for bp in blueprints:
            bp.check_model(model)
        shapes = {tuple(bp.sizes()) for bp in blueprints}
        if len(shapes) != 1:
            raise ValueError(f"StackedSubnets needs blueprints with equal per-layer unit counts; got {len(shapes)} "
                             "different ones (group them by Blueprint.sizes()).")
        self.model, self.k = model, len(blueprints)
        cfg, dev = model.config, model.lm_head.weight.device
        scales = blueprints[0].branch_scales(scale)
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for i, block in enumerate(model.transformer.h):
                n_h, n_f = blueprints[0].sizes()[i]
                heads = None if n_h == cfg.n_head else torch.tensor([bp.heads[i] for bp in blueprints], device=dev)
                units = None if n_f == cfg.ffn_groups else torch.tensor([bp.ffn[i] for bp in blueprints], device=dev)
                qkv = None if heads is None else torch.stack([head_rows(h, cfg.head_dim, cfg.n_embd) for h in heads])
                out = None if heads is None else torch.stack([head_cols(h, cfg.head_dim) for h in heads])
                hid = None if units is None else torch.stack([ffn_cols(u, cfg.ffn_unit_width) for u in units])
                attn, mlp = block.attn, block.mlp
                self.layers.append(_Layer(
                    c_attn=_stack_in(attn.c_attn.weight, attn.c_attn.bias, qkv),
                    attn_proj=_stack_out(attn.c_proj.weight, attn.c_proj.bias, out, self.k),
                    c_fc=_stack_in(mlp.c_fc.weight, mlp.c_fc.bias, hid),
                    mlp_proj=_stack_out(mlp.c_proj.weight, mlp.c_proj.bias, hid, self.k),
                    n_heads=n_h,
                    attn_scale=scales[i][0] if heads is not None else 1.0,
                    mlp_scale=scales[i][1] if units is not None else 1.0,
                ))

    @torch.inference_mode()
    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-layer-norm outputs (K, B, T, C) of every subnet for token ids ``idx`` (B, T)."""
        model, cfg = self.model, self.model.config
        B, T = idx.size()
        if T > cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size={cfg.block_size}.")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = model.transformer.wte(idx) + model.transformer.wpe(pos)  # (B, T, C), shared by every subnet
        # one copy of the activations until the first split layer: whole layers before it agree for every subnet
        x = x.reshape(1, B * T, cfg.n_embd)  # (1 or K, B*T, C)
        hd = cfg.head_dim
        for block, layer in zip(model.transformer.h, self.layers):
            if layer.c_attn.weight.dim() == 3 or layer.c_fc.weight.dim() == 3:
                x = x.expand(self.k, -1, -1)
            n, width = x.size(0), layer.n_heads * hd
            q, k, v = layer.c_attn(block.ln_1(x)).split(width, dim=2)  # each (K, B*T, h*hd)
            q, k, v = (t.reshape(n * B, T, layer.n_heads, hd).transpose(1, 2) for t in (q, k, v))  # (K*B, h, T, hd)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).reshape(n, B * T, width)  # (K, B*T, h*hd)
            a = layer.attn_proj(y)
            x = x + (a if layer.attn_scale == 1.0 else a * layer.attn_scale)
            m = layer.mlp_proj(F.gelu(layer.c_fc(block.ln_2(x)), approximate="tanh"))
            x = x + (m if layer.mlp_scale == 1.0 else m * layer.mlp_scale)
        return model.transformer.ln_f(x).expand(self.k, -1, -1).reshape(self.k, B, T, cfg.n_embd)

    @torch.inference_mode()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (K, B, T, vocab) of every subnet; for long vocabularies prefer :meth:`losses`."""
        return self.model.lm_head(self.hidden(idx))

    @torch.inference_mode()
    def losses(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (K,) of every subnet over ``targets`` (B, T), as ``GPT.forward`` computes its loss."""
        h = self.hidden(idx)
        out = []
        for k in range(self.k):  # one subnet's (B, T, vocab) logits at a time
            logits = self.model.lm_head(h[k])
            out.append(F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1))
        return torch.stack(out)
