"""Text out: ``python -m twist_lightning.generate checkpoint=PATH|ticket=DIR prompt="..." [max_new_tokens= ...]``.

Samples from the full model of a training checkpoint, from one of its subnets (``size=N`` with the export
selectors: ``selector=random|importance|explicit``, run as a masked subnet of the full model), or from an exported
ticket folder (``python -m twist_lightning.export ... out=DIR``). The prompt is GPT-2-tokenized and, when the model
was trained on a compact vocabulary (``vocab.py``), mapped into it; the output is mapped back and decoded, so rare
tokens the vocabulary dropped come out as "\\ufffd". Sampling itself is :func:`twist_lightning.sampling.sample`.

Examples::

    python -m twist_lightning.generate checkpoint=outputs/train/.../checkpoints/last.ckpt prompt="ROMEO"
    python -m twist_lightning.generate checkpoint=last.ckpt size=2 selector=random subnet_seed=0 seed=1
    python -m twist_lightning.generate ticket=exports/half prompt="To be" max_new_tokens=50 temperature=0
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import torch

from twist_lightning.export import load_exported, load_exported_vocab, select_blueprint
from twist_lightning.model import GPT
from twist_lightning.partition import Blueprint, PartitionSpec
from twist_lightning.sampling import sample
from twist_lightning.tokenizer import EOT_ID, GPT2_VOCAB_SIZE, gpt2_encoding
from twist_lightning.vocab import CompactVocab

__all__ = ["GenerateConfig", "Selector", "decode_ids", "encode_prompt", "generate_from_config", "load_for_generation"]


class Selector(str, Enum):
    """Which subnet of a checkpoint ``size=N`` picks (the export selectors)."""

    random = "random"
    importance = "importance"
    explicit = "explicit"


@dataclass
class GenerateConfig:
    """``python -m twist_lightning.generate`` settings (conf/generate.yaml)."""

    checkpoint: Optional[str] = None  # a training checkpoint (.ckpt); or
    ticket: Optional[str] = None  # an exported subnet folder
    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0 = greedy
    top_k: Optional[int] = 200
    seed: int = 0  # of the sampling
    num_samples: int = 1
    stop_at_eot: bool = True  # end a sample at <|endoftext|>
    size: Any = None  # checkpoint only: heads per split layer (or a fraction) of a subnet; None = the full model
    selector: Selector = Selector.random
    subnet_seed: int = 0  # selector=random
    blueprint: Optional[str] = None  # selector=explicit: a Blueprint JSON file
    common: Any = "default"  # layers kept whole by the subnet: "default" (first and last), "none", or indices
    scale: bool = True  # TwIST's sqrt(N_full / N_sub) branch scaling, as trained
    device: str = "cpu"
    out: Optional[str] = None  # also write the samples and settings as JSON here


def register_configs() -> None:
    """Store the ``base_generate`` schema in Hydra's ConfigStore (conf/generate.yaml extends it)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_generate", node=GenerateConfig)


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


def load_for_generation(cfg: Any) -> tuple[GPT, CompactVocab | None, dict[str, Any]]:
    """The model to sample from, its vocabulary and a description of it, per ``checkpoint``/``ticket``/``size``.

    Raises:
        ValueError: Neither or both of ``checkpoint`` and ``ticket``, or ``size`` with a ticket.
    """
    from twist_lightning.checkpoint import load_gpt

    if bool(cfg.checkpoint) == bool(cfg.ticket):
        raise ValueError(f"give exactly one of checkpoint=PATH (a training checkpoint) or ticket=DIR (an export "
                         f"folder); got checkpoint={cfg.checkpoint!r} ticket={cfg.ticket!r}.")
    if cfg.ticket:
        if cfg.size is not None:
            raise ValueError(f"size={cfg.size!r} picks a subnet of a checkpoint; ticket={cfg.ticket!r} already is one. "
                             "HINT: drop size, or pass checkpoint=PATH.")
        model = load_exported(cfg.ticket, map_location=cfg.device)
        return model, load_exported_vocab(cfg.ticket), {"ticket": str(cfg.ticket)}
    model, vocab, _ = load_gpt(cfg.checkpoint, map_location=cfg.device)
    source: dict[str, Any] = {"checkpoint": str(cfg.checkpoint), "subnet": None}
    selector = cfg.selector.value if isinstance(cfg.selector, Enum) else str(cfg.selector)
    if cfg.size is not None or selector == Selector.explicit.value:
        spec = PartitionSpec.from_config(model.config, common=_plain(cfg.common))
        bp: Blueprint = select_blueprint(model, spec, selector, _plain(cfg.size), cfg.subnet_seed, cfg.blueprint)
        # a masked subnet of the full model: the same function as the exported ticket of this blueprint
        model.set_subnet([list(h) for h in bp.heads], [list(f) for f in bp.ffn], scale=bool(cfg.scale))
        source["subnet"] = {"selector": selector, "size": _plain(cfg.size), "subnet_seed": cfg.subnet_seed,
                            "blueprint": bp.to_dict()}
    return model, vocab, source


def generate_from_config(cfg: Any) -> dict[str, Any]:
    """Sample ``num_samples`` continuations of ``prompt``; returns ``{"samples": [...], "tokens": [...], ...}``."""
    if not isinstance(cfg.num_samples, int) or cfg.num_samples < 1:
        raise ValueError(f"num_samples={cfg.num_samples!r} must be an integer >= 1.")
    model, vocab, source = load_for_generation(cfg)
    prompt = encode_prompt(cfg.prompt, vocab, model.config.vocab_size)
    stop = None
    if cfg.stop_at_eot:
        stop = int(vocab.encode(torch.tensor([EOT_ID]))[0]) if vocab is not None else EOT_ID
        stop = None if (vocab is not None and stop == vocab.unk_id) or stop >= model.config.vocab_size else stop
    idx = torch.tensor([prompt] * cfg.num_samples, dtype=torch.long, device=cfg.device)
    out = sample(model, idx, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                 seed=cfg.seed, stop_id=stop)
    tokens = [_cut(row[len(prompt):].tolist(), stop) for row in out]
    result = {**source, "prompt": cfg.prompt, "seed": cfg.seed, "temperature": cfg.temperature, "top_k": cfg.top_k,
              "max_new_tokens": cfg.max_new_tokens, "compact_vocab": vocab is not None, "tokens": tokens,
              "samples": [decode_ids(t, vocab) for t in tokens]}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _cut(ids: list[int], stop: int | None) -> list[int]:
    return ids[: ids.index(stop)] if stop is not None and stop in ids else ids


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _main() -> None:
    import hydra

    register_configs()

    @hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
    def main(cfg: Any) -> None:
        result = generate_from_config(cfg)
        for i, text in enumerate(result["samples"]):  # the CLI's output is the text itself, on stdout
            if i:
                sys.stdout.write("\n" + "-" * 40 + "\n")
            sys.stdout.write(cfg.prompt + text)
        sys.stdout.write("\n")

    main()


if __name__ == "__main__":
    _main()
