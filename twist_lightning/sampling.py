"""Autoregressive sampling from a :class:`~twist_lightning.model.GPT` (pure torch).

:func:`sample` works for every form of the model: the full model, a masked subnet (``GPT.set_subnet``) or an
extracted ticket, since it only calls ``model(idx)``. Randomness comes from an explicit ``torch.Generator``, so the
same seed gives the same tokens whatever else the process has drawn, and a ticket and its masked subnet (same
logits) draw the same tokens.

Example:
    >>> import torch
    >>> from twist_lightning.model import GPT, GPTConfig
    >>> model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=16)).eval()
    >>> sample(model, torch.tensor([[1, 2]]), max_new_tokens=3, seed=0).shape
    torch.Size([1, 5])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["sample"]


@torch.no_grad()
def sample(model: nn.Module, idx: torch.Tensor, *, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, seed: int | None = None, generator: torch.Generator | None = None,
           stop_id: int | None = None) -> torch.Tensor:
    """Extend ``idx`` (B, T) by up to ``max_new_tokens`` tokens drawn from the model's next-token distribution.

    The context is cropped to the model's last ``config.block_size`` tokens, as nanoGPT does. Each step divides the
    last position's logits by ``temperature`` (``0`` = greedy: always the most likely token), keeps the ``top_k``
    most likely tokens (``None`` = all) and draws one token per row with ``torch.multinomial``.

    Args:
        model: Returns ``(logits (B, T, vocab), ...)`` for ``idx``; has ``config.block_size``.
        idx: Prompt token ids (B, T) with T >= 1, in the model's own id space (compact ids if it has a vocabulary).
        max_new_tokens: Tokens to add (>= 0).
        temperature: >= 0.
        top_k: Keep only this many candidates (>= 1), or ``None``.
        seed: Seeds a fresh generator on ``idx``'s device (ignored when ``generator`` is given).
        generator: The random source; default: ``seed``'s, or torch's global one when both are ``None``.
        stop_id: Stop once every row has produced this id (rows that stopped early keep drawing; callers cut them).

    Returns:
        ``idx`` with the new tokens appended, (B, T + n) with n <= ``max_new_tokens``.

    Raises:
        ValueError: For an empty prompt or an argument out of range (the message names it).
    """
    if idx.dim() != 2 or idx.size(1) < 1:
        raise ValueError(f"idx must be (batch, tokens) with at least one token; got shape {tuple(idx.shape)}. "
                         "HINT: start from the end-of-text id for an empty prompt.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0.")
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature={temperature!r} must be >= 0 (0 = greedy).")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an integer >= 1, or None for every token.")
    if generator is None and seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(int(seed))
    block_size = model.config.block_size
    done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        logits = model(idx[:, -block_size:])[0][:, -1, :].float()  # (B, vocab)
        if temperature == 0:
            nxt = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k, dim=-1).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)
        idx = torch.cat((idx, nxt), dim=1)
        if stop_id is not None:
            done |= nxt.squeeze(1) == stop_id
            if bool(done.all()):
                break
    return idx
