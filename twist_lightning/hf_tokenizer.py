"""GPT-2's ``transformers`` tokenizer rebuilt offline from the shipped BPE ranks, and decoding notes for exports.

``transformers`` describes GPT-2's byte-level BPE by a ``vocab.json`` (token string -> id) and a ``merges.txt``
(the merge pairs in priority order); tiktoken's ``gpt2.tiktoken`` only lists each token's bytes and rank (= id).
Both are recovered from the ranks:

* **Token strings.** Byte-level BPE spells every byte as one printable character (GPT-2's ``bytes_to_unicode``:
  printable Latin-1 bytes stand for themselves, the other 68 bytes map to U+0100 onwards), so a token's string is
  its bytes mapped one by one, and its id is its rank.
* **Merges.** Token ``t`` of rank ``r`` was made by the last merge of BPE applied to ``t``'s bytes with only the
  ranks below ``r``: that run ends in exactly two pieces, the pair ``merges.txt`` lists at line ``r - 256``.

:func:`write_decoding_files` puts a ``GPT2Tokenizer`` (``tokenizer.json`` and friends) next to an ``hf=true`` export
with GPT-2's full vocabulary, so ``transformers.pipeline("text-generation", model=DIR, trust_remote_code=True)``
works offline. A model trained on a compact vocabulary (``vocab.py``) has ids no GPT-2 tokenizer knows: the export
then gets ``DECODING.md`` saying how to map them, next to the mapping ``vocab.json``.

Example::

    tok = build_hf_tokenizer()           # needs transformers
    tok("Hello world")["input_ids"]      # [15496, 995], as gpt2_encoding().encode_ordinary
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from tiktoken.load import load_tiktoken_bpe

from twist_lightning.tokenizer import EOT_ID, EOT_TOKEN, GPT2_RANKS_SHA256, GPT2_VOCAB_SIZE, asset_path
from twist_lightning.vocab import CompactVocab

__all__ = ["DECODING_NOTE", "build_hf_tokenizer", "bytes_to_unicode", "gpt2_vocab_and_merges", "recover_merges",
           "write_decoding_files"]

DECODING_NOTE = "DECODING.md"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (identical to ``openai/gpt-2``'s ``encoder.py``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two pieces BPE ends with on ``token`` using only ranks below ``token``'s own."""
    limit = ranks[token]
    # BPE's last two pieces are tokens ranked below this one, so when only one split qualifies, that is the merge
    splits = [(token[:i], token[i:]) for i in range(1, len(token))
              if ranks.get(token[:i], limit) < limit and ranks.get(token[i:], limit) < limit]
    if len(splits) == 1:
        return splits[0]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], limit)
            if r < best:
                best, at = r, i
        if at < 0:
            break
        parts[at:at + 2] = [parts[at] + parts[at + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not the product of one merge of lower-ranked tokens")
    return parts[0], parts[1]


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list of a byte-level BPE from its ranks: one pair per multi-byte token, in rank order.

    Raises:
        ValueError: If the ranks are not a byte-level BPE (a single byte above the multi-byte ranks, or a token no
            merge of lower-ranked tokens can make).
    """
    singles = [r for t, r in ranks.items() if len(t) == 1]
    multi = sorted((r, t) for t, r in ranks.items() if len(t) > 1)
    if len(singles) != 256 or (multi and max(singles) > multi[0][0]):
        raise ValueError("not a byte-level BPE: the 256 single bytes must have the lowest ranks")
    return [_last_merge(t, ranks) for _, t in multi]


@functools.lru_cache(maxsize=1)
def gpt2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's ``vocab.json`` mapping (with ``<|endoftext|>``) and merge pairs, as ``transformers`` spells them."""
    ranks = load_tiktoken_bpe(str(asset_path("gpt2.tiktoken")), expected_hash=GPT2_RANKS_SHA256)
    chars = bytes_to_unicode()
    spell = lambda token: "".join(chars[b] for b in token)  # noqa: E731
    vocab = {spell(t): r for t, r in ranks.items()}
    vocab[EOT_TOKEN] = EOT_ID
    merges = [(spell(a), spell(b)) for a, b in recover_merges(ranks)]
    return vocab, merges


def build_hf_tokenizer(model_max_length: int = 1024) -> Any:
    """A ``transformers.GPT2Tokenizer`` equal to :func:`~twist_lightning.tokenizer.gpt2_encoding` (needs transformers).

    Args:
        model_max_length: The model's context length (``n_positions``), recorded in ``tokenizer_config.json``.
    """
    from transformers import GPT2Tokenizer

    vocab, merges = gpt2_vocab_and_merges()
    # vocab/merges are taken as given (copies: the tokenizer keeps references)
    return GPT2Tokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def write_decoding_files(out_dir: str | os.PathLike[str], vocab: CompactVocab | None, vocab_size: int,
                         model_max_length: int) -> str:
    """Make an HF export folder decodable: GPT-2's tokenizer files, or a note on the compact vocabulary.

    Args:
        out_dir: The ``save_pretrained`` folder.
        vocab: The model's compact vocabulary, or ``None`` for GPT-2's ids.
        vocab_size: The model's vocabulary size.
        model_max_length: The model's context length.

    Returns:
        ``"tokenizer"``, ``"compact"`` (note written) or ``"none"`` (a vocabulary that is neither: nothing written).
    """
    out = Path(out_dir)
    if vocab is None and vocab_size == GPT2_VOCAB_SIZE:
        build_hf_tokenizer(model_max_length).save_pretrained(str(out))
        return "tokenizer"
    if vocab is None:
        return "none"
    (out / DECODING_NOTE).write_text(_compact_note(vocab), encoding="utf-8")
    return "compact"


def _compact_note(vocab: CompactVocab) -> str:
    if vocab.byte_fallback:
        meaning = (f"compact id `i < {vocab.size - 1}` is GPT-2 id `keep_ids[i]`; the first 256 are GPT-2's single-byte "
                   f"tokens in byte order, so a GPT-2 token that was not kept is written as the compact ids of its "
                   f"bytes (its UTF-8 bytes' values). Id {vocab.unk_id} is never produced.")
        to_ids = ("bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))  # GPT-2's byte stand-ins\n"
                  "cs = bs + [256 + n for n in range(256 - len(bs))]\n"
                  "bs += [b for b in range(256) if b not in bs]\n"
                  "byte_of = dict(zip(map(chr, cs), bs))\n"
                  "spell = lambda g: [byte_of[c] for c in gpt2_tokenizer.convert_ids_to_tokens(g)]\n"
                  "ids = [i for g in gpt2_tokenizer.encode(\"Hello\") for i in ([to_compact[g]] if g in to_compact "
                  "else spell(g))]")
    else:
        meaning = (f"compact id `i < {vocab.size - 1}` is GPT-2 id `keep_ids[i]`; id {vocab.unk_id} is the unknown token "
                   f"(every GPT-2 token not kept), decoded as GPT-2 id {vocab.unk_gpt2_id} (\"\\ufffd\").")
        to_ids = f"ids = [to_compact.get(g, {vocab.unk_id}) for g in gpt2_tokenizer.encode(\"Hello\")]"
    return f"""# Decoding this model

It was trained on a compact vocabulary of {vocab.size} ids, not GPT-2's 50257, so no stock GPT-2 tokenizer is
shipped with it: a GPT-2 tokenizer would hand it ids it has never seen. `vocab.json` in this folder is the mapping
(twist-lightning's `CompactVocab`): {meaning}

To generate text:

```python
import json, torch
from transformers import AutoModelForCausalLM, GPT2Tokenizer
gpt2_tokenizer = GPT2Tokenizer.from_pretrained("openai-community/gpt2")  # offline: hf_tokenizer.build_hf_tokenizer()
keep = json.load(open("vocab.json"))["keep_ids"]
to_compact = {{g: i for i, g in enumerate(keep)}}
model = AutoModelForCausalLM.from_pretrained(".", trust_remote_code=True)
{to_ids}
out = model.generate(torch.tensor([ids]), max_new_tokens=50, do_sample=True)[0].tolist()
text = gpt2_tokenizer.decode([keep[i] if i < len(keep) else {vocab.unk_gpt2_id} for i in out])
```

With twist-lightning installed, `python -m twist_lightning.generate ticket=<the export folder> prompt="Hello"` does
this for you (and `twist_lightning.hf_tokenizer.build_hf_tokenizer()` builds the GPT-2 tokenizer offline).
"""
