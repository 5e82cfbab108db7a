"""Text generation, the library: prompt ids through the compact vocabulary, sampling, what to load (generation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from twist_lightning.generation import (check_num_samples, decode_ids, encode_prompt, load_model_for_generation,
                                        sample_text)
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.tokenizer import EOT_ID, gpt2_encoding
from twist_lightning.vocab import CompactVocab


def test_prompt_round_trips_through_the_compact_vocabulary() -> None:
    text = "To be, or not to be"
    ids = gpt2_encoding().encode(text)
    vocab = CompactVocab(sorted(set(ids)))
    compact = encode_prompt(text, vocab, vocab.size)
    assert max(compact) < vocab.size and decode_ids(compact, vocab) == text
    assert encode_prompt(text, None, 50257) == ids and decode_ids(ids, None) == text
    assert encode_prompt("", None, 50257) == [EOT_ID]  # an empty prompt starts a document
    dropped = encode_prompt("Zebra", vocab, vocab.size)  # not in the vocabulary: the unknown id, decoded as U+FFFD
    assert set(dropped) == {vocab.unk_id} and "\ufffd" in decode_ids(dropped, vocab)
    with pytest.raises(ValueError, match="vocab_size=64 and no compact vocabulary"):
        encode_prompt(text, None, 64)


def test_sample_text_is_seeded_and_stops_at_end_of_text() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=64)).eval()
    vocab = CompactVocab(list(range(63)))  # compact id i is GPT-2 id i; GPT-2's <|endoftext|> is unknown here
    a = sample_text(model, vocab, "!", max_new_tokens=6, seed=1, num_samples=2, stop_at_eot=False)
    assert a == sample_text(model, vocab, "!", max_new_tokens=6, seed=1, num_samples=2, stop_at_eot=False)
    assert [len(t) for t in a[0]] == [6, 6] and len(a[1]) == 2
    greedy = sample_text(model, vocab, "!", max_new_tokens=4, temperature=0, seed=0)
    assert greedy == sample_text(model, vocab, "!", max_new_tokens=4, temperature=0, seed=7)  # greedy ignores seeds
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="num_samples"):
            check_num_samples(bad)
        with pytest.raises(ValueError, match="num_samples"):
            sample_text(model, vocab, "!", num_samples=bad)


def test_what_to_load_is_checked_first(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        load_model_for_generation()
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        load_model_for_generation(checkpoint="a.ckpt", ticket=str(tmp_path))
    with pytest.raises(ValueError, match="size=2 picks a subnet of a checkpoint"):
        load_model_for_generation(ticket=str(tmp_path), size=2)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model_for_generation(ticket=str(tmp_path))
