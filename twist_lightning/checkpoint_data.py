"""The data a checkpoint is scored and calibrated on, rebuilt from the settings saved in it.

:func:`build_datamodule` recreates the checkpoint's :class:`~twist_lightning.data.TextDataModule` (``data.*``
overrides on top; another corpus is tokenized with GPT-2 ids and mapped through the saved compact vocabulary),
:func:`collect_batches` gathers held-out batches once for every subnet to reuse, and :func:`train_calibration`
draws the *training*-split windows post-training pruning calibrates on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from twist_lightning.data import TextDataModule
from twist_lightning.prune import calibration_batches
from twist_lightning.tokenizer import GPT2_VOCAB_SIZE
from twist_lightning.vocab import CompactVocab

__all__ = ["CORPUS_KEYS", "Batch", "build_datamodule", "collect_batches", "train_calibration"]

Batch = tuple[torch.Tensor, torch.Tensor]
#: The data settings that name a corpus: changing one means another corpus than the vocabulary was built from.
CORPUS_KEYS = ("source", "path", "hub_name", "hub_config")


def build_datamodule(saved: dict[str, Any], overrides: dict[str, Any], model_vocab_size: int, model_block_size: int,
                     vocab: CompactVocab | None, checkpoint: str = "<checkpoint>") -> tuple[TextDataModule, bool]:
    """The held-out data: the checkpoint's own data settings with ``overrides`` on top.

    Returns ``(datamodule after setup, remap)``: with ``remap`` the datamodule serves GPT-2 ids that must be mapped
    through the checkpoint's ``vocab`` (a different corpus than the one the vocabulary was built from).

    Raises:
        ValueError: Neither the checkpoint nor ``overrides`` say which corpus to use.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not saved and "source" not in overrides:
        raise ValueError(f"checkpoint={checkpoint!r} has no datamodule settings (datamodule_hyper_parameters), so the "
                         "held-out data is unknown. Fix: pass data.source=bundled|local|hub (and data.path=... or "
                         "data.hub_name=...).")
    new_corpus = any(k in overrides and overrides[k] != saved.get(k) for k in CORPUS_KEYS)
    hp = {**saved, **overrides}
    hp.setdefault("block_size", model_block_size)
    if hp["block_size"] > model_block_size:
        raise ValueError(f"data.block_size={hp['block_size']} exceeds the model's block_size={model_block_size}; "
                         f"use data.block_size<={model_block_size}.")
    # a compact vocabulary is built from the train split: on another corpus, tokenize with GPT-2 ids and remap; a
    # run whose vocabulary was given (data.vocab_from, a fine-tuned model's) is remapped too: the saved vocabulary
    # gives the same ids without the file it came from
    given = hp.pop("vocab_from", None)
    remap = vocab is not None and (new_corpus or not saved or given is not None)
    if remap and vocab.byte_fallback:
        # byte fallback changes a stream's length, so the corpus is encoded with the saved vocabulary as it is
        # cached (the checkpoint names it), not window by window
        if not Path(checkpoint).expanduser().exists():
            raise ValueError(f"checkpoint={checkpoint!r}: its byte-fallback vocabulary encodes whole token streams, "
                             "which needs the checkpoint's path to read it from. Fix: pass the checkpoint file.")
        hp["vocab_from"], remap = str(Path(checkpoint).expanduser()), False
        hp.pop("vocab_extra", None)  # counts for building a vocabulary; this one is given
    if vocab is None:
        hp["vocab_size"] = None if model_vocab_size == GPT2_VOCAB_SIZE else model_vocab_size
    else:
        hp["vocab_size"] = None if remap else vocab.size
    dm = TextDataModule(**hp)
    dm.prepare_data()
    dm.setup("validate")
    if vocab is not None and not remap and dm.vocab != vocab:
        raise ValueError(f"checkpoint={checkpoint!r}: the compact vocabulary rebuilt from its data differs from the "
                         "saved one (the corpus changed?). Fix: pass data.path=... to the original corpus, or any "
                         "other corpus with data.source/data.path (its tokens are then mapped through the saved "
                         "vocabulary).")
    return dm, remap


def collect_batches(dm: TextDataModule, split: str, max_batches: int | None, batch_tokens: int, device: torch.device,
                    vocab: CompactVocab | None = None) -> list[Batch]:
    """The first ``max_batches`` loader batches of ``split``, re-cut into batches of about ``batch_tokens`` tokens.

    Every subnet runs over the same tensors, so they are gathered once and moved to ``device`` once. ``batch_tokens``
    bounds the ``(rows, T, vocab)`` logits a forward creates, which with GPT-2's vocabulary dominate memory.
    """
    if split not in ("val", "test"):
        raise ValueError(f"split={split!r} must be 'val' or 'test' (held-out data).")
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    xs, ys = [], []
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        xs.append(x)
        ys.append(y)
    if not xs:
        return []
    x, y = torch.cat(xs), torch.cat(ys)  # (N, T) each
    if vocab is not None:
        x, y = vocab.encode(x), vocab.encode(y)
    rows = max(1, batch_tokens // x.size(1))
    return [(xb.to(device), yb.to(device)) for xb, yb in zip(x.split(rows), y.split(rows))]


def train_calibration(dm: TextDataModule, samples: int, seed: int, device: torch.device,
                      vocab: CompactVocab | None = None) -> list[Batch]:
    """``samples`` deterministic windows of the datamodule's *training* split for pruning calibration."""
    if "train" not in dm.datasets:
        raise ValueError(f"calib_samples: the data has no train split ({sorted(dm.datasets)}); pruning calibrates "
                         "on training text only. Fix: point data.* at the corpus the model was trained on.")
    batches = calibration_batches(dm.datasets["train"], samples=samples, seed=seed, device=device)
    return [(vocab.encode(x), vocab.encode(y)) for x, y in batches] if vocab is not None else batches
