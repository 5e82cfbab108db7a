"""Tests for the offline GPT-2 tokenizer."""

from __future__ import annotations

import socket

import pytest

from twist_lightning.tokenizer import EOT_ID, GPT2_VOCAB_SIZE, asset_path, gpt2_encoding


def test_known_ids() -> None:
    enc = gpt2_encoding()
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.n_vocab == GPT2_VOCAB_SIZE == 50257
    assert enc.eot_token == EOT_ID == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_ID]


@pytest.mark.parametrize(
    "text",
    ["", "Hello world", "  leading spaces\n\nand blank lines\n", "naïve café — 東京 🙂", "ROMEO:\nBut soft!"],
)
def test_round_trip(text: str) -> None:
    enc = gpt2_encoding()
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_is_cached() -> None:
    assert gpt2_encoding() is gpt2_encoding()


def test_no_network(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Building the encoding from scratch must not open any socket."""

    def refuse(*args, **kwargs):
        raise AssertionError("tokenizer tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # An empty tiktoken cache forces a real read of the bundled file rather than a cached copy.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    gpt2_encoding.cache_clear()
    try:
        assert gpt2_encoding().encode_ordinary("Hello world") == [15496, 995]
    finally:
        gpt2_encoding.cache_clear()


def test_asset_path_exists() -> None:
    assert asset_path("gpt2.tiktoken").is_file()
    assert asset_path("tinyshakespeare.txt").is_file()
