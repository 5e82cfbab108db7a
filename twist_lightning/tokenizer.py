"""GPT-2 byte-pair encoding built offline from the bundled merge ranks.

``tiktoken.get_encoding("gpt2")`` downloads its rank file at run time and therefore fails on
machines without internet access. The same encoding is rebuilt here from
``twist_lightning/assets/gpt2.tiktoken`` (shipped as package data), so tokenization never touches
the network.

Example:
    >>> from twist_lightning.tokenizer import gpt2_encoding
    >>> gpt2_encoding().encode_ordinary("Hello world")
    [15496, 995]
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

__all__ = ["EOT_ID", "EOT_TOKEN", "GPT2_PATTERN", "GPT2_VOCAB_SIZE", "TOKENIZER_NAME", "asset_path", "gpt2_encoding"]

#: Number of GPT-2 token ids (50,256 BPE ranks plus ``<|endoftext|>``).
GPT2_VOCAB_SIZE: int = 50257
#: Id of ``<|endoftext|>``, used as the document separator.
EOT_ID: int = 50256
EOT_TOKEN: str = "<|endoftext|>"
#: Name recorded in cache keys and checkpoints; same ids as tiktoken's ``gpt2``/``r50k_base``.
TOKENIZER_NAME: str = "gpt2"

#: GPT-2's pre-tokenization regex (identical to ``tiktoken_ext.openai_public.r50k_pat_str``);
#: kept as a literal so the encoding does not depend on tiktoken's private plugin module.
GPT2_PATTERN: str = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

_RANKS_FILE = "gpt2.tiktoken"
#: sha256 of the bundled rank file. tiktoken keeps a copy of every file it loads in a temp cache
#: keyed by *path*; passing the hash makes it discard a stale or corrupt copy instead of using it.
GPT2_RANKS_SHA256: str = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def asset_path(name: str) -> Path:
    """Return the filesystem path of a file bundled in ``twist_lightning/assets``.

    Args:
        name: File name inside the assets folder, e.g. ``"gpt2.tiktoken"``.

    Returns:
        Path to the file (it is not checked for existence).
    """
    try:
        return Path(str(importlib.resources.files("twist_lightning") / "assets" / name))
    except (TypeError, NotADirectoryError, ModuleNotFoundError):
        # Namespace-package installs (no __init__.py) cannot be read through importlib.resources
        # on Python 3.11; the assets always sit next to this module in that case.
        return Path(__file__).resolve().parent / "assets" / name


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    """Build (once per process) the GPT-2 tiktoken encoding from the bundled rank file.

    Returns:
        A :class:`tiktoken.Encoding` with 50,257 ids; ``<|endoftext|>`` is id 50256.

    Raises:
        FileNotFoundError: If the package data file is missing (a broken install).
    """
    ranks_file = asset_path(_RANKS_FILE)
    if not ranks_file.is_file():
        raise FileNotFoundError(
            f"GPT-2 rank file not found at {ranks_file}; reinstall twist-lightning so its package data "
            "(twist_lightning/assets/gpt2.tiktoken) is present."
        )
    # load_tiktoken_bpe only fetches over the network for http(s) URLs; a local path is read directly.
    ranks = load_tiktoken_bpe(str(ranks_file), expected_hash=GPT2_RANKS_SHA256)
    return tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
