"""Tests for the compact vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twist_lightning.tokenizer import GPT2_VOCAB_SIZE
from twist_lightning.vocab import UNK_GPT2_ID, CompactVocab


def _counts(ids: list[int]) -> np.ndarray:
    return np.bincount(np.array(ids), minlength=GPT2_VOCAB_SIZE)


def test_most_frequent_kept_in_order_with_id_tiebreak() -> None:
    # 9 and 3 tie on count 3: the lower id (3) comes first; 7 has 2; 100 and 50 tie on 1.
    counts = _counts([9, 9, 9, 3, 3, 3, 7, 7, 100, 50])
    vocab = CompactVocab.from_counts(counts, size=5)
    assert vocab.size == 5 and vocab.unk_id == 4
    assert vocab.keep_ids.dtype == np.int64
    assert vocab.keep_ids.tolist() == [3, 9, 7, 50]


def test_round_trip_kept_ids_and_unknown() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2000, size=10_000)
    vocab = CompactVocab.from_counts(np.bincount(ids), size=257)
    kept = vocab.keep_ids
    np.testing.assert_array_equal(vocab.encode(kept), np.arange(256))
    np.testing.assert_array_equal(vocab.decode(vocab.encode(kept)), kept)
    unknown = np.setdiff1d(np.arange(GPT2_VOCAB_SIZE), kept)[:50]
    assert (vocab.encode(unknown) == vocab.unk_id).all()
    assert (vocab.decode(np.array([vocab.unk_id])) == UNK_GPT2_ID).all()
    # Shapes are preserved for batched input.
    assert vocab.encode(ids.reshape(100, 100)).shape == (100, 100)


def test_tensor_input_gives_long_tensor() -> None:
    vocab = CompactVocab.from_counts(_counts([1, 1, 2]), size=3)
    out = vocab.encode(torch.tensor([[2, 1, 50256]], dtype=torch.int32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    assert out.tolist() == [[1, 0, 2]]
    assert vocab.decode(out).tolist() == [[2, 1, UNK_GPT2_ID]]


def test_deterministic() -> None:
    counts = np.random.default_rng(1).integers(0, 5, size=GPT2_VOCAB_SIZE)
    a = CompactVocab.from_counts(counts, size=1024)
    b = CompactVocab.from_counts(counts.copy(), size=1024)
    assert a == b
    np.testing.assert_array_equal(a.keep_ids, b.keep_ids)


def test_fewer_distinct_tokens_than_size_pads_by_id() -> None:
    vocab = CompactVocab.from_counts(_counts([500, 500, 10]), size=5)
    assert vocab.keep_ids.tolist() == [500, 10, 0, 1]


def test_state_dict_and_save_load(tmp_path) -> None:
    vocab = CompactVocab.from_counts(_counts([4, 4, 8, 15, 16, 23, 42]), size=4)
    state = vocab.state_dict()
    assert isinstance(state["keep_ids"], list)
    assert CompactVocab.from_state_dict(state) == vocab
    # Tensors (as after a torch.load of a checkpoint) are accepted too.
    assert CompactVocab.from_state_dict({**state, "keep_ids": torch.tensor(state["keep_ids"])}) == vocab
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert CompactVocab.load(path) == vocab
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("size", [0, 1, GPT2_VOCAB_SIZE + 1, 2.5])
def test_bad_size(size) -> None:
    with pytest.raises(ValueError, match=r"vocab_size.*" + str(size).replace(".", r"\.")):
        CompactVocab.from_counts(np.ones(10, dtype=np.int64), size=size)


def test_extreme_sizes() -> None:
    counts = np.arange(GPT2_VOCAB_SIZE)
    assert CompactVocab.from_counts(counts, size=2).keep_ids.tolist() == [GPT2_VOCAB_SIZE - 1]
    full = CompactVocab.from_counts(counts, size=GPT2_VOCAB_SIZE)
    assert full.size == GPT2_VOCAB_SIZE and (full.encode(np.arange(GPT2_VOCAB_SIZE)) != full.unk_id).sum() == 50256


def test_out_of_range_ids_raise() -> None:
    vocab = CompactVocab.from_counts(_counts([1, 2]), size=3)
    with pytest.raises(ValueError, match="GPT-2 ids"):
        vocab.encode(np.array([GPT2_VOCAB_SIZE]))
    with pytest.raises(ValueError, match="compact ids"):
        vocab.decode(torch.tensor([3]))
    with pytest.raises(ValueError, match="duplicates"):
        CompactVocab([1, 1])


# ---------------------------------------------------------------------- byte fallback

def test_byte_fallback_spells_left_out_tokens_by_their_bytes_and_round_trips_text() -> None:
    from twist_lightning.tokenizer import EOT_ID, gpt2_encoding
    from twist_lightning.vocab import byte_token_ids

    enc = gpt2_encoding()
    counts = _counts(enc.encode_ordinary("the cat sat on the mat, the end."))
    vocab = CompactVocab.from_counts(counts, size=300, byte_fallback=True)
    # the 256 byte tokens first (compact id = byte value), then <|endoftext|>, then the most frequent others
    assert vocab.keep_ids[:256].tolist() == byte_token_ids().tolist() and vocab.keep_ids[256] == EOT_ID
    assert vocab.keep_ids[257] == enc.encode_single_token(" the")  # twice in the text, the others once
    text = "the cat — naïve 日本語 quokka<|endoftext|>the end\n"
    ids = np.array(enc.encode(text, allowed_special="all"))
    out = vocab.encode(ids)
    assert out.ndim == 1 and len(out) > len(ids) and out.max() < vocab.size - 1  # no unknown id, ever
    assert enc.decode(vocab.decode(out).tolist()) == text  # exact: bytes spell the left-out tokens
    # kept tokens keep one id each; a left-out token becomes exactly its bytes' ids (= byte values here)
    quokka = enc.encode_ordinary(" quokka")
    spelled = vocab.encode(np.array(quokka))
    assert len(quokka) > 1 and spelled.tolist() == list(b" quokka")
    assert vocab.encode(np.array([enc.encode_single_token(b"\xe6")])).tolist() == [0xE6]
    tensor = vocab.encode(torch.tensor(ids))
    assert isinstance(tensor, torch.Tensor) and tensor.tolist() == out.tolist()
    assert vocab.encode(np.array([], dtype=np.int64)).tolist() == []


def test_byte_fallback_state_and_errors(tmp_path) -> None:
    counts = _counts([5, 5, 7])
    vocab = CompactVocab.from_counts(counts, size=300, byte_fallback=True)
    plain = CompactVocab.from_counts(counts, size=300)
    assert vocab != plain and "byte_fallback" not in plain.state_dict()  # old files read the same
    vocab.save(tmp_path / "vocab.json")
    loaded = CompactVocab.load(tmp_path / "vocab.json")
    assert loaded == vocab and loaded.byte_fallback
    with pytest.raises(ValueError, match="encodes 1-D token streams; got shape \\(2, 2\\)"):
        vocab.encode(np.array([[5, 7], [7, 5]]))
    with pytest.raises(ValueError, match="data.vocab_size=258 is too small for byte fallback"):
        CompactVocab.from_counts(counts, size=258, byte_fallback=True)
    with pytest.raises(ValueError, match="must start with the 256 single-byte GPT-2 tokens in byte order"):
        CompactVocab(list(range(300)), byte_fallback=True)
    with pytest.raises(ValueError, match="must start with the 256 single-byte GPT-2 tokens in byte order"):
        CompactVocab(vocab.keep_ids[::-1], byte_fallback=True)  # all there, but not where the byte values point
    with pytest.raises(ValueError, match="GPT-2 ids"):
        vocab.encode(np.array([GPT2_VOCAB_SIZE]))
