"""GPT-2's transformers tokenizer rebuilt from the shipped ranks, and HF exports that decode (pipeline, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from twist_lightning.blueprints import PartitionSpec
from twist_lightning.dense_export import export_subnet
from twist_lightning.hf_export import export_hf
from twist_lightning.hf_tokenizer import (DECODING_NOTE, build_hf_tokenizer, bytes_to_unicode, gpt2_vocab_and_merges,
                                         recover_merges)
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.selection import random_blueprint
from twist_lightning.sampling import sample
from twist_lightning.tokenizer import gpt2_encoding
from twist_lightning.vocab import CompactVocab

TEXTS = ["Hello world", " Hello world", "  multiple   spaces\n\n\tand tabs  \n", "naïve café — 東京 😀 \u00a0x",
         "I'll've don't REALLY'S they're", "<|endoftext|> after the end", "1234567 3.14159 +-*/ ==> $%^&", ""]


def test_recover_merges_of_a_toy_bpe_follows_merge_order():
    # "abc" can be split a|bc or ab|c; BPE with ranks below its own merges "ab" first, so the merge is (ab, c)
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"bc": 257, b"abc": 258, b"abcabc": 259})
    assert recover_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"abc", b"abc")]
    with pytest.raises(ValueError, match="one merge"):
        recover_merges({**ranks, b"xyz": 260})  # no lower-ranked pieces make it


def test_vocab_and_merges_have_gpt2s_shape():
    vocab, merges = gpt2_vocab_and_merges()
    assert len(vocab) == 50257 and len(merges) == 50000 and sorted(vocab.values()) == list(range(50257))
    assert merges[0] == ("Ġ", "t") and vocab["Ġthe"] == 262 and vocab["<|endoftext|>"] == 50256
    assert len(set(bytes_to_unicode().values())) == 256


def test_hf_tokenizer_encodes_like_the_tiktoken_encoder():
    pytest.importorskip("transformers")
    from twist_lightning.hf_tokenizer import build_hf_tokenizer

    tok, enc = build_hf_tokenizer(), gpt2_encoding()
    text = Path(__file__).resolve().parents[1] / "data" / "wikitext-2-raw" / "wiki.test.raw"
    sample_text = text.read_text(encoding="utf-8")[:20_000]  # real text: headings, numbers, @-@ and unicode
    for s in [*TEXTS, sample_text]:
        ids = tok(s)["input_ids"]
        assert ids == enc.encode(s, allowed_special="all"), s[:40]
        assert tok.decode(ids) == s


def _ticket(tmp_path: Path, vocab_size: int, vocab: CompactVocab | None = None) -> tuple[GPT, Path]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=vocab_size)).eval()
    bp = random_blueprint(PartitionSpec.from_config(model.config, common="none"), 2, seed=0)
    sub = export_subnet(model, bp, tmp_path / "ticket", vocab=vocab)
    export_hf(sub, tmp_path / "ticket" / "hf", vocab)
    return sub, tmp_path / "ticket" / "hf"


def test_pipeline_generates_offline_from_an_hf_export(tmp_path):
    transformers = pytest.importorskip("transformers")
    sub, folder = _ticket(tmp_path, 50257)
    assert (folder / "tokenizer.json").is_file() and not (folder / DECODING_NOTE).exists()
    assert json.loads((folder / "tokenizer_config.json").read_text())["model_max_length"] == 32
    generator = transformers.pipeline("text-generation", model=str(folder), trust_remote_code=True)
    prompt = "To be, or not to be"
    text = generator(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    ids = torch.tensor([gpt2_encoding().encode(prompt)])
    ours = gpt2_encoding().decode(sample(sub, ids, max_new_tokens=8, temperature=0)[0].tolist())
    assert text == ours and text.startswith(prompt) and len(text) > len(prompt)  # greedy: same tokens as ours


def test_a_compact_vocabulary_export_says_how_to_decode(tmp_path):
    pytest.importorskip("transformers")
    vocab = CompactVocab(list(range(100, 163)))
    _, folder = _ticket(tmp_path, vocab.size, vocab)
    note = (folder / DECODING_NOTE).read_text()
    assert "64 ids" in note and "keep_ids" in note and "twist_lightning.generate ticket=" in note
    assert CompactVocab.load(folder / "vocab.json") == vocab and not (folder / "tokenizer.json").exists()


def test_a_byte_fallback_export_says_how_to_spell_left_out_tokens(tmp_path):
    pytest.importorskip("transformers")
    import re

    import numpy as np

    from twist_lightning.tokenizer import gpt2_encoding

    enc = gpt2_encoding()
    vocab = CompactVocab.from_counts(np.bincount(enc.encode_ordinary("Hello there, Hello"), minlength=50257), 300,
                                     byte_fallback=True)
    _, folder = _ticket(tmp_path, vocab.size, vocab)
    note = (folder / DECODING_NOTE).read_text()
    assert "single-byte" in note and f"Id {vocab.unk_id} is never produced" in note
    # the note's encoding lines give the ids twist-lightning's own encoder gives
    code = re.search(r"(bs = .*?\nids = .*?)\n", note, re.S).group(1).replace('"Hello"', "TEXT")
    text = "Hello quokka — naïve"
    scope = {"gpt2_tokenizer": build_hf_tokenizer(), "TEXT": text,
             "to_compact": {int(g): i for i, g in enumerate(vocab.keep_ids)}}
    exec(code, scope)
    assert scope["ids"] == vocab.encode(np.array(enc.encode_ordinary(text))).tolist()
