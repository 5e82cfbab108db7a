"""Text generation: prompts in and text out through the compact vocabulary, from a checkpoint, a subnet or a ticket.

:func:`load_model_for_generation` loads the model to sample from: the full model of a training checkpoint, one of
its subnets (``size=N`` with a :class:`~twist_lightning.selection.Selector`, run as a masked subnet of the full
model) or an exported ticket folder (:mod:`twist_lightning.dense_export`). :func:`sample_text` GPT-2-tokenizes the
prompt, maps it into the model's compact vocabulary when it has one (:func:`encode_prompt`), samples
(:func:`twist_lightning.sampling.sample`) and maps the output back (:func:`decode_ids`), so rare tokens the
vocabulary dropped come out as "\\ufffd". The command line is ``python -m twist_lightning.generate``.

Example::

    model, vocab, _ = load_model_for_generation(ticket="exports/half")
    tokens, texts = sample_text(model, vocab, "To be", max_new_tokens=50, temperature=0)
"""

from __future__ import annotations

import os
from enum import Enum
from typing import Any

import torch

from twist_lightning.blueprints import Blueprint, PartitionSpec
from twist_lightning.checkpoint import load_gpt
from twist_lightning.dense_export import load_exported, load_exported_vocab
from twist_lightning.model import GPT
from twist_lightning.sampling import sample
from twist_lightning.selection import Selector, select_blueprint
from twist_lightning.tokenizer import EOT_ID, GPT2_VOCAB_SIZE, gpt2_encoding
from twist_lightning.vocab import CompactVocab

__all__ = ["check_num_samples", "decode_ids", "encode_prompt", "load_model_for_generation", "sample_text"]


def encode_prompt(text: str, vocab: CompactVocab | None, vocab_size: int) -> list[int]:
    """The model's ids for ``text`` (``<|endoftext|>`` alone for an empty prompt, as GPT-2 starts documents).

    Raises:
        ValueError: If the model has neither GPT-2's ids nor a compact vocabulary covering them.
    """
    ids = gpt2_encoding().encode(text, allowed_special="all") if text else [EOT_ID]
    if vocab is not None:
        return [int(i) for i in vocab.encode(torch.tensor(ids))]
    if max(ids) >= vocab_size:
        raise ValueError(f"prompt={text!r} has GPT-2 ids up to {max(ids)}, but the model has vocab_size={vocab_size} "
                         f"and no compact vocabulary to map them. HINT: use a model trained on GPT-2 text.")
    return ids


def decode_ids(ids: list[int], vocab: CompactVocab | None) -> str:
    """Text of the model's ids (compact ids mapped back to GPT-2's first)."""
    gpt2 = vocab.decode(torch.tensor(ids, dtype=torch.long)).tolist() if vocab is not None and ids else ids
    return gpt2_encoding().decode([i for i in gpt2 if i < GPT2_VOCAB_SIZE])


def load_model_for_generation(checkpoint: str | os.PathLike[str] | None = None,
                              ticket: str | os.PathLike[str] | None = None, size: int | float | None = None,
                              selector: Selector | str = Selector.random, subnet_seed: int = 0,
                              blueprint: str | os.PathLike[str] | None = None, common: Any = "default",
                              scale: bool = True, device: str = "cpu"
                              ) -> tuple[GPT, CompactVocab | None, dict[str, Any]]:
    """The model to sample from, its vocabulary and a description of it.

    Args:
        checkpoint: A training checkpoint (``.ckpt``); or
        ticket: an exported subnet folder.
        size: Checkpoint only: heads per split layer (or a fraction) of a subnet; ``None`` = the full model.
        selector: How the subnet is chosen (``explicit`` needs ``blueprint``, a Blueprint JSON file).
        subnet_seed: Seed of ``selector=random``.
        blueprint: ``selector=explicit``'s Blueprint JSON file.
        common: Layers the subnet keeps whole.
        scale: TwIST's ``sqrt(N_full / N_sub)`` branch scaling, as trained.
        device: Where the model goes.

    Raises:
        ValueError: Neither or both of ``checkpoint`` and ``ticket``, or ``size`` with a ticket.
    """
    if bool(checkpoint) == bool(ticket):
        raise ValueError(f"give exactly one of checkpoint=PATH (a training checkpoint) or ticket=DIR (an export "
                         f"folder); got checkpoint={checkpoint!r} ticket={ticket!r}.")
    if ticket:
        if size is not None:
            raise ValueError(f"size={size!r} picks a subnet of a checkpoint; ticket={ticket!r} already is one. "
                             "HINT: drop size, or pass checkpoint=PATH.")
        model = load_exported(ticket, map_location=device)
        return model, load_exported_vocab(ticket), {"ticket": str(ticket)}
    model, vocab, _ = load_gpt(checkpoint, map_location=device)
    source: dict[str, Any] = {"checkpoint": str(checkpoint), "subnet": None}
    selector = selector.value if isinstance(selector, Enum) else str(selector)
    if size is not None or selector == Selector.explicit.value:
        spec = PartitionSpec.from_config(model.config, common=common)
        bp: Blueprint = select_blueprint(model, spec, selector, size, subnet_seed, blueprint)
        # a masked subnet of the full model: the same function as the exported ticket of this blueprint
        model.set_subnet([list(h) for h in bp.heads], [list(f) for f in bp.ffn], scale=bool(scale))
        source["subnet"] = {"selector": selector, "size": size, "subnet_seed": subnet_seed,
                            "blueprint": bp.to_dict()}
    return model, vocab, source


def sample_text(model: GPT, vocab: CompactVocab | None, prompt: str, max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int | None = 200, seed: int = 0, num_samples: int = 1,
                stop_at_eot: bool = True) -> tuple[list[list[int]], list[str]]:
    """``num_samples`` continuations of ``prompt``: their ids (without the prompt) and their text.

    With ``stop_at_eot`` a sample ends at ``<|endoftext|>`` (when the model's vocabulary holds it).

    Raises:
        ValueError: ``num_samples < 1`` (and :func:`~twist_lightning.sampling.sample`'s own checks).
    """
    check_num_samples(num_samples)
    ids = encode_prompt(prompt, vocab, model.config.vocab_size)
    stop = None
    if stop_at_eot:
        stop = int(vocab.encode(torch.tensor([EOT_ID]))[0]) if vocab is not None else EOT_ID
        stop = None if (vocab is not None and stop == vocab.unk_id) or stop >= model.config.vocab_size else stop
    device = model.lm_head.weight.device
    idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
    out = sample(model, idx, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                 stop_id=stop)
    tokens = [_cut(row[len(ids):].tolist(), stop) for row in out]
    return tokens, [decode_ids(t, vocab) for t in tokens]


def check_num_samples(num_samples: Any) -> None:
    """Raise a ``ValueError`` naming ``num_samples`` unless it is an integer >= 1."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples={num_samples!r} must be an integer >= 1.")


def _cut(ids: list[int], stop: int | None) -> list[int]:
    return ids[: ids.index(stop)] if stop is not None and stop in ids else ids
