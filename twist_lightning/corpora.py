"""The corpora shipped in the repository's ``data/`` folder: where they are and whether they are intact.

A fresh clone has nothing beside it, so the text that recipes and tests need lives in ``<repo>/data`` with a
``SHA256SUMS`` file (see ``data/README.md`` for licences and sources). :func:`corpus_path` resolves a name there
relative to this package, not to the working directory, so a run started from any folder of a checkout finds it,
and refuses a file whose sha256 differs from the recorded one (a truncated copy would otherwise train silently).
The Hydra configs call it as ``${corpus:books/books-10mb.txt}`` (the resolver is registered in ``config.py``).

Example:
    >>> corpus_path("wikitext-2-raw/wiki.valid.raw").name
    'wiki.valid.raw'
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["DATA_DIR", "CorpusError", "corpus_path", "expected_checksums", "sha256_of"]

#: ``<repo>/data``: beside the package in a source checkout (editable installs included).
DATA_DIR: Path = Path(__file__).resolve().parent.parent / "data"
_SUMS = "SHA256SUMS"


class CorpusError(FileNotFoundError):
    """A shipped corpus is missing or does not match its recorded checksum."""


def sha256_of(path: Path, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_checksums(data_dir: Path = DATA_DIR) -> dict[str, str]:
    """``SHA256SUMS`` as ``{relative path: sha256}`` (the ``sha256sum`` format: hash, two spaces, path).

    Raises:
        CorpusError: If the folder or its ``SHA256SUMS`` is missing (e.g. an installed wheel, which omits data/).
    """
    sums = data_dir / _SUMS
    if not sums.is_file():
        raise CorpusError(
            f"{sums} not found: the shipped corpora live in the data/ folder of a source checkout, which an installed "
            f"package does not carry. HINT: run from a clone of the repository, or use data=local "
            f"data.path=/path/to/your/corpus.txt."
        )
    rows = (line.split(maxsplit=1) for line in sums.read_text(encoding="utf-8").splitlines() if line.strip())
    return {name.strip().lstrip("*"): digest for digest, name in rows}


@functools.lru_cache(maxsize=None)
def _verified(path: Path, size: int, mtime_ns: int, expected: str) -> bool:
    # keyed on size and mtime so a file changed within one process is hashed again
    return sha256_of(path) == expected


def corpus_path(name: str, data_dir: Path = DATA_DIR) -> str:
    """Absolute path of a shipped corpus file or folder, after checking the sha256 of every file it covers.

    Args:
        name: Path relative to ``data/`` as listed in ``SHA256SUMS`` (``"books/books-10mb.txt"``), or a folder
            holding listed files (``"wikitext-2-raw"``).
        data_dir: The data folder (tests pass a temporary one).

    Returns:
        The absolute path as a string (what ``data.path`` takes).

    Raises:
        CorpusError: If ``name`` is not listed, a file is missing, or a checksum differs.
    """
    sums = expected_checksums(data_dir)
    key = name.strip("/")
    covered = {n: d for n, d in sums.items() if n == key or n.startswith(key + "/")}
    if not covered:
        raise CorpusError(f"corpus {name!r} is not in {data_dir / _SUMS} (listed: {sorted(sums)}). "
                          f"HINT: use one of those names, or data=local data.path=/path/to/text.")
    for rel, digest in covered.items():
        path = data_dir / rel
        if not path.is_file():
            raise CorpusError(f"{path} is missing (listed in {_SUMS}). HINT: restore it with git checkout -- data/.")
        stat = path.stat()
        if not _verified(path, stat.st_size, stat.st_mtime_ns, digest):
            raise CorpusError(f"{path} does not match its sha256 in {data_dir / _SUMS} ({digest}): the file is "
                              f"truncated or edited. HINT: restore it with git checkout -- data/.")
    return str(data_dir / key)
