"""A GPT-2 language model in pure torch whose layers can run any subset of their units.

nanoGPT-style, with Hugging Face GPT-2 parameter names (``transformer.h.0.attn.c_attn.weight`` ...), so HF
weights load by name. Each layer is split into *units*: its attention heads and its FFN hidden width cut into
``ffn_groups`` equal groups. Two things set TwIST apart from a plain GPT:

- a layer can be built *narrower* than the full shape (``GPTConfig.layer_heads`` / ``layer_ffn_units``), which
  is how a physical subnet is a standalone dense model;
- a full-size model can run a *subnet* (``GPT.set_subnet``): the weights of the inactive units are left out of
  the computation by index-select, so gradients reach only the active parameters and compute shrinks.

In both cases the attention and FFN branch outputs are multiplied by a per-layer scale before the residual add
(TwIST's sqrt(N_full / N_sub) rule); for the full model the scale is 1.

Knows nothing of Lightning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
from torch.nn import functional as F

# Presets: name -> GPTConfig keyword arguments. "gpt2" is the 124M shape of the paper; "cpu" is calibrated so the
# default run learns something useful in a few minutes on 2 CPU cores (with a compact vocabulary).
PRESETS: dict[str, dict] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024, vocab_size=50257),
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, vocab_size=4096),
    "tiny": dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=256),
}


@dataclass
class GPTConfig:
    """Shape of a (possibly narrowed) GPT-2.

    ``n_head`` and ``ffn_groups`` are the *full* unit counts: they fix the head dimension (n_embd // n_head) and
    the FFN group width (4 * n_embd // ffn_groups). ``layer_heads`` / ``layer_ffn_units`` narrow individual layers
    (None = full), and ``attn_scale`` / ``mlp_scale`` are the per-layer branch multipliers of a physical subnet.
    """

    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True
    ffn_groups: int | None = None  # None -> n_head, so "6/12" means 6 of 12 heads and 6 of 12 FFN groups
    layer_heads: list[int] | None = None
    layer_ffn_units: list[int] | None = None
    attn_scale: list[float] | None = None
    mlp_scale: list[float] | None = None
    extra: dict = field(default_factory=dict)  # free-form metadata carried into exports (e.g. the blueprint)

    def __post_init__(self) -> None:
        if self.ffn_groups is None:
            self.ffn_groups = self.n_head
        checks = [
            ("n_layer", self.n_layer >= 1, "use at least one layer"),
            ("n_embd", self.n_embd >= 1, "use a positive width"),
            ("dropout", 0.0 <= self.dropout < 1.0, "use a probability in [0, 1)"),
            ("n_head", self.n_head >= 1 and self.n_embd % self.n_head == 0, "n_embd must be divisible by n_head"),
            ("ffn_groups", self.ffn_groups >= 1 and (4 * self.n_embd) % self.ffn_groups == 0,
             "4 * n_embd must be divisible by ffn_groups"),
            ("block_size", self.block_size >= 1, "use a positive context length"),
            ("vocab_size", self.vocab_size >= 2, "use at least two tokens"),
        ]
        for name, ok, fix in checks:
            if not ok:
                raise ValueError(f"model.{name}={getattr(self, name)!r} is invalid (n_embd={self.n_embd}): {fix}.")
        for name, full in (("layer_heads", self.n_head), ("layer_ffn_units", self.ffn_groups)):
            counts = getattr(self, name)
            if counts is not None and (len(counts) != self.n_layer or not all(1 <= c <= full for c in counts)):
                raise ValueError(f"model.{name}={counts} must list {self.n_layer} counts in 1..{full}.")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_unit_width(self) -> int:
        return 4 * self.n_embd // self.ffn_groups

    def heads(self, layer: int) -> int:
        return self.n_head if self.layer_heads is None else self.layer_heads[layer]

    def ffn_units(self, layer: int) -> int:
        return self.ffn_groups if self.layer_ffn_units is None else self.layer_ffn_units[layer]

    def scales(self, layer: int) -> tuple[float, float]:
        attn = 1.0 if self.attn_scale is None else float(self.attn_scale[layer])
        mlp = 1.0 if self.mlp_scale is None else float(self.mlp_scale[layer])
        return attn, mlp

    @property
    def is_full(self) -> bool:
        return self.layer_heads is None and self.layer_ffn_units is None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        if name not in PRESETS:
            raise ValueError(f"model.preset={name!r} is unknown; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})


def head_rows(heads: torch.Tensor, head_dim: int, n_embd: int) -> torch.Tensor:
    """Rows of ``c_attn.weight`` (3 * n_embd, n_embd) that hold q, k and v of ``heads``, in q|k|v order."""
    per_head = (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)  # (h*hd,)
    return torch.cat([per_head + part * n_embd for part in range(3)])  # (3*h*hd,)


def head_cols(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Columns of ``attn.c_proj.weight`` (n_embd, n_embd) that read the outputs of ``heads``."""
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).reshape(-1)


def ffn_cols(units: torch.Tensor, unit_width: int) -> torch.Tensor:
    """Hidden neurons (rows of ``c_fc.weight``, columns of ``mlp.c_proj.weight``) of FFN groups ``units``."""
    return (units[:, None] * unit_width + torch.arange(unit_width, device=units.device)).reshape(-1)


@dataclass(frozen=True)
class LayerSubnet:
    """Active units of one layer of a full-size model, as index tensors ready for index-select."""

    qkv_rows: torch.Tensor | None  # None = all heads
    proj_cols: torch.Tensor | None
    ffn_idx: torch.Tensor | None  # None = all FFN groups
    n_heads: int
    attn_scale: float
    mlp_scale: float


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.n_head = config.heads(layer)
        self.head_dim = config.head_dim
        width = self.n_head * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, 3 * width, bias=config.bias)
        self.c_proj = nn.Linear(width, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, sub: LayerSubnet | None = None) -> torch.Tensor:
        w_proj = self.c_proj.weight if sub is None or sub.proj_cols is None else self.c_proj.weight[:, sub.proj_cols]
        return self.resid_dropout(F.linear(self.head_outputs(x, sub), w_proj, self.c_proj.bias))

    def head_outputs(self, x: torch.Tensor, sub: LayerSubnet | None = None) -> torch.Tensor:
        """The active heads' outputs side by side, (B, T, h*hd): what ``c_proj`` reads (pruning calibrates on it)."""
        B, T, _ = x.size()
        w_attn, b_attn, n_head = self.c_attn.weight, self.c_attn.bias, self.n_head
        if sub is not None and sub.qkv_rows is not None:
            # index-select keeps inactive heads out of the graph: no compute, exactly zero gradient
            w_attn, n_head = w_attn[sub.qkv_rows], sub.n_heads
            b_attn = None if b_attn is None else b_attn[sub.qkv_rows]
        q, k, v = F.linear(x, w_attn, b_attn).split(n_head * self.head_dim, dim=2)  # each (B, T, h*hd)
        q, k, v = (t.view(B, T, n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))  # (B, h, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return y.transpose(1, 2).contiguous().view(B, T, n_head * self.head_dim)  # (B, T, h*hd)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        hidden = config.ffn_units(layer) * config.ffn_unit_width
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's gelu_new
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, sub: LayerSubnet | None = None) -> torch.Tensor:
        w_proj = self.c_proj.weight if sub is None or sub.ffn_idx is None else self.c_proj.weight[:, sub.ffn_idx]
        return self.dropout(F.linear(self.hidden(x, sub), w_proj, self.c_proj.bias))

    def hidden(self, x: torch.Tensor, sub: LayerSubnet | None = None) -> torch.Tensor:
        """The active FFN groups' activations, (B, T, g*w): what ``c_proj`` reads (pruning calibrates on it)."""
        w_fc, b_fc = self.c_fc.weight, self.c_fc.bias
        if sub is not None and sub.ffn_idx is not None:
            w_fc = w_fc[sub.ffn_idx]
            b_fc = None if b_fc is None else b_fc[sub.ffn_idx]
        return self.gelu(F.linear(x, w_fc, b_fc))  # (B, T, hidden)


class Block(nn.Module):
    """One transformer layer (nanoGPT's name for it, kept so HF parameter names line up)."""

    def __init__(self, config: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config, layer)
        self.attn_scale, self.mlp_scale = config.scales(layer)

    def forward(self, x: torch.Tensor, sub: LayerSubnet | None = None) -> torch.Tensor:
        attn_scale, mlp_scale = (self.attn_scale, self.mlp_scale) if sub is None else (sub.attn_scale, sub.mlp_scale)
        a = self.attn(self.ln_1(x), sub)
        x = x + (a if attn_scale == 1.0 else a * attn_scale)
        m = self.mlp(self.ln_2(x), sub)
        return x + (m if mlp_scale == 1.0 else m * mlp_scale)


class GPT(nn.Module):
    """GPT-2 with HF parameter names; optionally narrowed (physical subnet) or running a masked subnet."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self._subnet: list[LayerSubnet | None] | None = None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    # ---- masked subnets -------------------------------------------------------------------------------------------
    def set_subnet(
        self,
        heads: list[list[int] | None] | None,
        ffn_units: list[list[int] | None] | None = None,
        scale: bool = True,
    ) -> None:
        """Run only the given units of each layer (``None`` for a layer = all of it; ``heads=None`` = full model).

        With ``scale``, a layer running h of H heads multiplies its attention output by sqrt(H / h), and likewise
        its FFN output for g of G groups.
        """
        if not self.config.is_full:
            raise RuntimeError("set_subnet needs a full-size model; this one is already a physical subnet.")
        if heads is None and ffn_units is None:
            self._subnet = None
            return
        cfg, dev = self.config, self.lm_head.weight.device
        heads = heads if heads is not None else [None] * cfg.n_layer
        ffn_units = ffn_units if ffn_units is not None else [None] * cfg.n_layer
        subs: list[LayerSubnet | None] = []
        for layer_heads, layer_units in zip(heads, ffn_units, strict=True):
            full_h = layer_heads is None or len(layer_heads) == cfg.n_head
            full_f = layer_units is None or len(layer_units) == cfg.ffn_groups
            if full_h and full_f:
                subs.append(None)
                continue
            h = None if full_h else torch.as_tensor(sorted(layer_heads), dtype=torch.long, device=dev)
            f = None if full_f else torch.as_tensor(sorted(layer_units), dtype=torch.long, device=dev)
            n_h = cfg.n_head if h is None else len(h)
            n_f = cfg.ffn_groups if f is None else len(f)
            subs.append(LayerSubnet(
                qkv_rows=None if h is None else head_rows(h, cfg.head_dim, cfg.n_embd),
                proj_cols=None if h is None else head_cols(h, cfg.head_dim),
                ffn_idx=None if f is None else ffn_cols(f, cfg.ffn_unit_width),
                n_heads=n_h,
                attn_scale=math.sqrt(cfg.n_head / n_h) if scale else 1.0,
                mlp_scale=math.sqrt(cfg.ffn_groups / n_f) if scale else 1.0,
            ))
        self._subnet = None if all(s is None for s in subs) else subs

    @property
    def subnet_active(self) -> bool:
        return self._subnet is not None

    @property
    def subnet_state(self) -> list[LayerSubnet | None] | None:
        """The running subnet's index tensors as ``set_subnet`` built them (``None``: the full model).

        Assigning a value read here switches back to that subnet without rebuilding its indices: TwIST's virtual
        workers swap subnets at every step.
        """
        return self._subnet

    @subnet_state.setter
    def subnet_state(self, value: list[LayerSubnet | None] | None) -> None:
        if value is not None and (len(value) != self.config.n_layer
                                  or not all(s is None or isinstance(s, LayerSubnet) for s in value)):
            raise ValueError(f"subnet_state needs None or {self.config.n_layer} LayerSubnet|None entries (one per "
                             "layer), as read from subnet_state after set_subnet.")
        if value is not None and not self.config.is_full:
            raise RuntimeError("subnet_state needs a full-size model; this one is already a physical subnet.")
        self._subnet = value

    def token_embedding(self, idx: torch.Tensor) -> torch.Tensor:
        """Look up token ids ``idx`` (B, T) -> (B, T, C), with a sparse gradient while the weight is tied to the head.

        The look-up's gradient is B*T rows of a vocab x width matrix. Dense, autograd builds it as a zero-filled
        vocab x width tensor and then adds it to the LM head's (dense) gradient of the same tied weight: two full
        passes over 154 MB at GPT-2 124M for 128 rows. Sparse, the rows are added into the head's gradient, so
        the weight's gradient stays dense whenever the loss goes through the logits, as every training loss here
        does (a loss on the embeddings alone would leave a sparse gradient, which AdamW refuses). DDP reads
        ``nn.Embedding.sparse``, left False, so it expects the dense gradient it gets. Measured by the strategy
        bench: about 0.12-0.16 s less per step at GPT-2 124M shape, batch 1 x 128 (DDP and TwIST alike). CPU
        only: on CUDA the rows would be added with atomics, in no fixed order (and no speed-up was measured
        there). Untied, without grad, inside ``torch.compile`` or with the embedding's own options set
        (padding_idx, max_norm, scale_grad_by_freq), the module's dense look-up runs.
        """
        wte = self.transformer.wte
        if (wte.weight is self.lm_head.weight and wte.weight.requires_grad and torch.is_grad_enabled()
                and idx.device.type == "cpu" and not torch.compiler.is_compiling()
                and wte.padding_idx is None and wte.max_norm is None and not wte.scale_grad_by_freq):
            return F.embedding(idx, wte.weight, sparse=True)
        return wte(idx)

    # ---- forward --------------------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits (B, T, vocab), loss or None)`` for token ids ``idx`` (B, T)."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size={self.config.block_size}.")
        pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.drop(self.token_embedding(idx) + self.transformer.wpe(pos))  # (B, T, C)
        subs = self._subnet or [None] * self.config.n_layer
        for block, sub in zip(self.transformer.h, subs):
            x = block(x, sub)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    # ---- Hugging Face interop -------------------------------------------------------------------------------------
    # HF GPT-2 stores these as Conv1D (in, out); torch Linear wants (out, in).
    _HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf(cls, hf_model: nn.Module, **overrides) -> GPT:
        """Build a GPT from a ``transformers`` GPT2LMHeadModel instance (weights copied, logits identical)."""
        hc = hf_model.config
        if getattr(hc, "n_inner", None) not in (None, 4 * hc.n_embd):
            raise ValueError(f"HF config n_inner={hc.n_inner} is not 4 * n_embd; only GPT-2's FFN shape is supported.")
        if getattr(hc, "activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"HF activation_function={hc.activation_function!r} is not GPT-2's gelu_new.")
        config = GPTConfig(n_layer=hc.n_layer, n_head=hc.n_head, n_embd=hc.n_embd, block_size=hc.n_positions,
                           vocab_size=hc.vocab_size, bias=True, dropout=0.0, **overrides)
        model = cls(config)
        model.load_hf_state_dict(hf_model.state_dict())
        return model

    @classmethod
    def from_pretrained(cls, name: str = "gpt2", **overrides) -> GPT:
        """Load HF GPT-2 weights (``gpt2``, ``gpt2-medium``, a local folder ...); needs the ``hf`` extra."""
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as err:
            raise ImportError("Loading HF GPT-2 weights needs transformers: pip install -e '.[hf]'") from err
        return cls.from_hf(GPT2LMHeadModel.from_pretrained(name), **overrides)

    def load_hf_state_dict(self, sd_hf: dict[str, torch.Tensor]) -> None:
        sd = self.state_dict()
        skip = (".attn.masked_bias", ".attn.bias")  # HF's causal-mask buffers, not parameters
        keys = [k for k in sd_hf if not k.endswith(skip)]
        missing = set(sd) - set(keys) - {"transformer.wte.weight"}  # wte is tied to lm_head
        if missing:
            raise ValueError(f"HF state dict lacks {sorted(missing)[:5]}...; is it a GPT-2 LM-head model?")
        with torch.no_grad():
            for k in keys:
                src = sd_hf[k].t() if k.endswith(self._HF_TRANSPOSED) else sd_hf[k]
                if src.shape != sd[k].shape:
                    raise ValueError(f"shape mismatch for {k}: HF {tuple(src.shape)} vs ours {tuple(sd[k].shape)}")
                sd[k].copy_(src)

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict in HF GPT-2 layout (Conv1D weights transposed, branch scales folded into c_proj)."""
        out = {}
        for k, v in self.state_dict().items():
            v = v.detach().clone()
            if ".h." in k and (".attn.c_proj." in k or ".mlp.c_proj." in k):
                layer = int(k.split(".h.")[1].split(".")[0])
                attn, mlp = self.config.scales(layer)
                v = v * (attn if ".attn." in k else mlp)
            out[k] = v.t().contiguous() if k.endswith(self._HF_TRANSPOSED) else v
        return out

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)), dim=1)
        return idx
