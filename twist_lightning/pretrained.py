"""Starting weights for a new run: ``model.init_from`` (and the vocabulary behind ``data.vocab_from``).

``ckpt_path`` *resumes* a run (weights, optimizer, step count, TwIST round); ``init_from`` *starts* one from
weights only, as fine-tuning a pretrained GPT-2 does in the paper. A source is, in the order tried:

* a twist-lightning checkpoint file (``.../checkpoints/last.ckpt``): its central model;
* an exported folder (``python -m twist_lightning.export``: ``config.json`` + ``model.safetensors``) of a full model;
* a Hugging Face GPT-2 folder (``config.json`` with ``model_type: gpt2``; needs ``transformers``);
* otherwise a Hugging Face model name (``gpt2``, ``openai-community/gpt2-medium``): the local HF cache first, then
  the Hub, failing at once with a clear error when it is unreachable.

The target model's shape must match the source's (layers, heads, width, vocabulary, biases); a shorter
``model.block_size`` keeps the first rows of the position embedding, as nanoGPT's ``crop_block_size`` does. The
source's compact vocabulary (if any) comes back with the weights: ids are only meaningful with it.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from twist_lightning.checkpoint import CheckpointError, load_checkpoint, load_gpt
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.vocab import CompactVocab

__all__ = ["InitSourceKind", "PretrainedError", "init_from", "load_pretrained", "resolve_source", "source_vocab"]

#: Fields that must agree for weights to carry over (``block_size`` may shrink; ``ffn_groups`` only regroups).
MATCH_FIELDS = ("n_layer", "n_head", "n_embd", "vocab_size", "bias")


class PretrainedError(ValueError):
    """A ``model.init_from`` / ``data.vocab_from`` source that cannot be used (the message names the key)."""


class InitSourceKind(str, Enum):
    checkpoint = "checkpoint"
    export = "export"
    hf_folder = "hf_folder"
    hf_name = "hf_name"


def resolve_source(spec: str, key: str = "model.init_from") -> tuple[InitSourceKind, Path | str]:
    """What ``spec`` names, without loading weights.

    Raises:
        PretrainedError: A path that looks like a file or folder but does not exist, or a folder of another kind.
    """
    path = Path(str(spec)).expanduser()
    if path.is_file():
        return InitSourceKind.checkpoint, path
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.is_file():
            hint = next((c for c in (path / "last.ckpt", path / "checkpoints" / "last.ckpt") if c.is_file()), None)
            fix = f"did you mean {key}={hint}?" if hint else ("pass a checkpoint file, an exported folder or a "
                                                              "Hugging Face GPT-2 folder")
            raise PretrainedError(f"{key}={str(spec)!r} is a folder without config.json. Fix: {fix}")
        try:
            config = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise PretrainedError(f"{key}={str(spec)!r}: config.json is not JSON ({err}).") from None
        if isinstance(config, dict) and config.get("model_type") is not None:
            return InitSourceKind.hf_folder, path
        return InitSourceKind.export, path
    # a Hugging Face name is "gpt2" or "owner/name"; anything else that does not exist is a mistyped path
    text = str(spec)
    looks_local = text.startswith((".", "/", "~")) or text.endswith((".ckpt", ".pt", ".json")) or text.count("/") > 1
    if looks_local:
        raise PretrainedError(f"{key}={str(spec)!r} does not exist. Fix: pass an existing twist-lightning checkpoint "
                              "(outputs/<task>/<date>/checkpoints/last.ckpt), an exported folder, a Hugging Face "
                              "GPT-2 folder, or a Hugging Face model name such as gpt2.")
    return InitSourceKind.hf_name, str(spec)


def load_pretrained(spec: str, key: str = "model.init_from") -> tuple[GPT, CompactVocab | None, InitSourceKind]:
    """Load the model ``spec`` names on the CPU: ``(full GPT, compact vocabulary or None, kind)``."""
    kind, where = resolve_source(spec, key)
    if kind is InitSourceKind.checkpoint:
        return (*_from_checkpoint(Path(where), key), kind)
    if kind is InitSourceKind.export:
        from twist_lightning.dense_export import load_exported, load_exported_vocab

        try:
            model = load_exported(where)
        except (FileNotFoundError, ValueError) as err:
            raise PretrainedError(f"{key}={str(spec)!r}: {err}") from err
        if not model.config.is_full:
            raise PretrainedError(f"{key}={str(spec)!r} is an exported subnet (heads per layer "
                                  f"{model.config.layer_heads}), not a full model. Fix: export the full model, or "
                                  f"pass the training checkpoint it was cut from.")
        return model, load_exported_vocab(where), kind
    return _from_hf(str(where), kind, key), None, kind


def init_from(model: GPT, spec: str, key: str = "model.init_from") -> CompactVocab | None:
    """Copy the weights ``spec`` names into ``model`` (shapes checked first); returns the source's vocabulary.

    Raises:
        PretrainedError: Unusable source, or a shape that differs (every differing field named).
    """
    source, vocab, _ = load_pretrained(spec, key)
    check_match(source.config, model.config, spec, key)
    state = source.state_dict()
    block = model.config.block_size
    state["transformer.wpe.weight"] = state["transformer.wpe.weight"][:block]  # a shorter context keeps the first rows
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise PretrainedError(f"{key}={str(spec)!r}: weights do not line up (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}).")
    return vocab


def check_match(source: GPTConfig, target: GPTConfig, spec: str, key: str = "model.init_from") -> None:
    """Raise naming every ``model.*`` field where ``target`` cannot take ``source``'s weights."""
    diffs = [f"model.{f}={getattr(target, f)!r} but the source has {getattr(source, f)!r}"
             for f in MATCH_FIELDS if getattr(source, f) != getattr(target, f)]
    if target.block_size > source.block_size:
        diffs.append(f"model.block_size={target.block_size} is longer than the source's {source.block_size} "
                     "(its position embedding has no rows beyond that)")
    if diffs:
        raise PretrainedError(f"{key}={str(spec)!r} does not fit the model: {'; '.join(diffs)}. Fix: set these "
                              f"model.* keys to the source's values (e.g. model=gpt2 for Hugging Face GPT-2).")


def source_vocab(spec: str, key: str = "data.vocab_from") -> CompactVocab | None:
    """The compact vocabulary of a ``vocab.json``, a twist-lightning checkpoint, or an exported folder.

    ``None`` means the source uses GPT-2's own ids. Reading a checkpoint maps its tensors lazily (``mmap``), so a
    large one costs little.
    """
    path = Path(str(spec)).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            return CompactVocab.load(path)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise PretrainedError(f"{key}={str(spec)!r} is not a compact vocabulary file ({err}). Fix: pass the "
                                  "vocab.json of a token cache or an export, a checkpoint, or an exported folder."
                                  ) from None
    if path.is_dir() and (path / "vocab.json").is_file():
        return source_vocab(str(path / "vocab.json"), key)
    kind, where = resolve_source(spec, key)
    if kind is InitSourceKind.checkpoint:
        ckpt = _read_checkpoint(Path(where), key, mmap=True)
        return CompactVocab.from_state_dict(ckpt["compact_vocab"]) if ckpt.get("compact_vocab") else None
    return None  # an export without vocab.json, or Hugging Face weights: GPT-2's ids


# ---------------------------------------------------------------------- the sources


def _read_checkpoint(path: Path, key: str, mmap: bool = False) -> dict[str, Any]:
    try:
        return load_checkpoint(path, mmap=mmap)
    except (FileNotFoundError, CheckpointError) as err:
        raise PretrainedError(f"{key}={str(path)!r} cannot be used: {err}") from err


def _from_checkpoint(path: Path, key: str) -> tuple[GPT, CompactVocab | None]:
    """The central model and vocabulary, through the project's own checkpoint loader (``checkpoint.load_gpt``)."""
    try:
        model, vocab, _ = load_gpt(path)
    except (FileNotFoundError, CheckpointError) as err:
        raise PretrainedError(f"{key}={str(path)!r} cannot be used: {err}") from err
    return model, vocab


def _from_hf(where: str, kind: InitSourceKind, key: str) -> GPT:
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise PretrainedError(f"{key}={where!r} names Hugging Face weights, which need transformers. Fix: "
                              "pip install -e '.[hf]' (or pass a twist-lightning checkpoint).") from None
    if kind is InitSourceKind.hf_name:
        try:  # the local Hugging Face cache first: no network needed for a model downloaded before
            return GPT.from_hf(GPT2LMHeadModel.from_pretrained(where, local_files_only=True))
        except OSError:
            pass
        from twist_lightning.sources import hub_unreachable_reason

        reason = hub_unreachable_reason()
        if reason is not None:
            raise PretrainedError(f"{key}={where!r} is not a local path and not in the Hugging Face cache, and the "
                                  f"Hub cannot be reached ({reason}). Fix: download it where there is a network "
                                  f"(python -c \"from transformers import GPT2LMHeadModel; "
                                  f"GPT2LMHeadModel.from_pretrained('{where}').save_pretrained('gpt2-local')\") and "
                                  f"pass {key}=gpt2-local, or pass a twist-lightning checkpoint.")
    try:
        hf = GPT2LMHeadModel.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise PretrainedError(f"{key}={where!r} could not be loaded as Hugging Face GPT-2 weights "
                              f"({str(err).strip().splitlines()[0][:300]}).") from err
    try:
        return GPT.from_hf(hf)
    except ValueError as err:
        raise PretrainedError(f"{key}={where!r}: {err}") from err
