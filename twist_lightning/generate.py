"""Text out: ``python -m twist_lightning.generate checkpoint=PATH|ticket=DIR prompt="..." [max_new_tokens= ...]``.

Samples from the full model of a training checkpoint, from one of its subnets (``size=N`` with the export
selectors: ``selector=random|importance|explicit``, run as a masked subnet of the full model), or from an exported
ticket folder (``python -m twist_lightning.export ... out=DIR``). The prompt is GPT-2-tokenized and, when the model
was trained on a compact vocabulary (``vocab.py``), mapped into it; the output is mapped back and decoded, so rare
tokens the vocabulary dropped come out as "\\ufffd".

This module is the command line only: the library is :mod:`twist_lightning.generation` (and
:func:`twist_lightning.sampling.sample`), the schema :class:`twist_lightning.config.GenerateConfig`. The names that
lived here before that split are re-exported.

Examples::

    python -m twist_lightning.generate checkpoint=outputs/train/.../checkpoints/last.ckpt prompt="ROMEO"
    python -m twist_lightning.generate checkpoint=last.ckpt size=2 selector=random subnet_seed=0 seed=1
    python -m twist_lightning.generate ticket=exports/half prompt="To be" max_new_tokens=50 temperature=0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import OmegaConf

from twist_lightning.config import GenerateConfig, register_configs
from twist_lightning.generation import (check_num_samples, decode_ids, encode_prompt, load_model_for_generation,
                                        sample_text)
from twist_lightning.model import GPT
from twist_lightning.selection import Selector
from twist_lightning.vocab import CompactVocab

__all__ = [  # load_for_generation and generate_from_config are this module's own; the others are re-exported
    "GenerateConfig", "Selector", "decode_ids", "encode_prompt", "generate_from_config", "load_for_generation",
    "register_configs",
]


def load_for_generation(cfg: Any) -> tuple[GPT, CompactVocab | None, dict[str, Any]]:
    """:func:`~twist_lightning.generation.load_model_for_generation` of a :class:`GenerateConfig`."""
    return load_model_for_generation(cfg.checkpoint, cfg.ticket, _plain(cfg.size), cfg.selector, cfg.subnet_seed,
                                     cfg.blueprint, _plain(cfg.common), bool(cfg.scale), cfg.device)


def generate_from_config(cfg: Any) -> dict[str, Any]:
    """Sample ``num_samples`` continuations of ``prompt``; returns ``{"samples": [...], "tokens": [...], ...}``."""
    check_num_samples(cfg.num_samples)  # before loading anything
    model, vocab, source = load_for_generation(cfg)
    tokens, samples = sample_text(model, vocab, cfg.prompt, max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, top_k=cfg.top_k, seed=cfg.seed,
                                  num_samples=cfg.num_samples, stop_at_eot=cfg.stop_at_eot)
    result = {**source, "prompt": cfg.prompt, "seed": cfg.seed, "temperature": cfg.temperature, "top_k": cfg.top_k,
              "max_new_tokens": cfg.max_new_tokens, "compact_vocab": vocab is not None, "tokens": tokens,
              "samples": samples}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _main() -> None:
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
