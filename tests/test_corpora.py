"""The corpora in data/: intact, documented, found from any working directory, and nothing reads ../shared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from twist_lightning import config as schemas
from twist_lightning.corpora import DATA_DIR, CorpusError, corpus_path, expected_checksums, sha256_of

ROOT = Path(__file__).resolve().parents[1]
# ../shared as a path or as a quoted path component, as in Path(...) / "shared" (this file states the rule, so it is
# the one file not searched)
OUTSIDE = re.compile(r"""shared/|["']shared["']""")


def test_every_shipped_file_matches_its_checksum_and_the_readme_lists_it():
    sums = expected_checksums()
    assert {"books/books-10mb.txt", "wikitext-2-raw/wiki.valid.raw", "wikitext-2-raw/wiki.test.raw"} <= sums.keys()
    readme = (DATA_DIR / "README.md").read_text()
    for rel, digest in sums.items():
        assert sha256_of(DATA_DIR / rel) == digest, rel
        if rel.endswith((".txt", ".raw")):
            assert f"| {rel} |" in readme and digest in readme, rel  # listed with its sha256 and licence row
    shipped = {str(p.relative_to(DATA_DIR)) for p in DATA_DIR.rglob("*") if p.is_file()}
    assert shipped - set(sums) == {"README.md", "SHA256SUMS"}  # no unlisted file rides along
    assert "CC BY-SA 3.0" in readme and "Merity" in readme  # WikiText's attribution and licence


def test_a_changed_or_missing_file_is_refused(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text("hello\n")
    (tmp_path / "SHA256SUMS").write_text(f"{sha256_of(tmp_path / 'c' / 'a.txt')}  c/a.txt\n")
    assert corpus_path("c/a.txt", data_dir=tmp_path) == str(tmp_path / "c" / "a.txt")
    assert corpus_path("c", data_dir=tmp_path) == str(tmp_path / "c")
    (tmp_path / "c" / "a.txt").write_text("hellO\n")  # same size, new content
    with pytest.raises(CorpusError, match="does not match its sha256"):
        corpus_path("c/a.txt", data_dir=tmp_path)
    with pytest.raises(CorpusError, match="not in"):
        corpus_path("c/b.txt", data_dir=tmp_path)
    (tmp_path / "c" / "a.txt").unlink()
    with pytest.raises(CorpusError, match="missing"):
        corpus_path("c", data_dir=tmp_path)
    with pytest.raises(CorpusError, match="source checkout"):
        corpus_path("c", data_dir=tmp_path / "nowhere")


@pytest.mark.parametrize("group, rel", [("books", "books/books-10mb.txt"), ("wikitext2", "wikitext-2-raw/wiki.valid.raw")])
def test_data_groups_resolve_into_the_repository_from_any_folder(tmp_path, monkeypatch, group, rel):
    monkeypatch.chdir(tmp_path)  # not the repo root: the path must not depend on the working directory
    schemas.register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={group}"])
    assert Path(cfg.data.path) == DATA_DIR / rel and Path(cfg.data.path).is_file()


def test_nothing_in_the_package_configs_recipes_or_tests_reads_outside_the_repository():
    offenders = []
    for tree in ("twist_lightning", "conf", "recipes", "tests"):
        for path in sorted((ROOT / tree).rglob("*")):
            if path != Path(__file__).resolve() and path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".md", ".txt", ".json", ".toml", ".cfg"}:
                for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                    if OUTSIDE.search(line):
                        offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "paths outside the repository:\n" + "\n".join(offenders)
