"""Where a corpus comes from: the DataSource enum, local folders and the hub (twist_lightning/sources.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from test_data import WIKITEXT, make_dm, write_corpus
from twist_lightning.sources import DataSource, HubUnavailableError, describe_source, local_files, parse_source


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_wikitext_folder_without_train_file_is_an_error(tmp_path: Path) -> None:
    dm = make_dm(tmp_path, source="local", path=str(WIKITEXT))
    with pytest.raises(FileNotFoundError, match=r"no training file.*wiki\.train\.raw.*data\.path=.*wiki\.valid\.raw"):
        dm.setup("fit")


def test_hub_with_local_dataset_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hubdata"
    folder.mkdir()
    write_corpus(folder / "train.txt", 300)
    write_corpus(folder / "validation.txt", 60, start=1000)
    write_corpus(folder / "test.txt", 60, start=2000)
    hub = make_dm(tmp_path, source=DataSource.HUB, hub_name=str(folder))
    hub.setup("fit")
    local = make_dm(tmp_path, source="local", path=str(folder))
    local.setup("fit")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(hub.datasets[split].tokens, local.datasets[split].tokens)


@pytest.mark.parametrize("offline_env", [True, False])
def test_hub_offline_fails_fast_naming_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline_env: bool
) -> None:
    if offline_env:
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    else:  # no flag: the (patched, failing) socket probe must stop it
        for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
    dm = make_dm(tmp_path, source="hub", hub_name="wikitext", hub_config="wikitext-2-raw-v1")
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=r"data\.source=local data\.path="):
        dm.setup("fit")
    assert time.perf_counter() - start < 5


def test_source_accepts_foreign_enum_and_strings(tmp_path: Path) -> None:
    import enum

    class Source(enum.Enum):  # as in a Hydra structured config
        bundled = "bundled"

    assert make_dm(tmp_path, source=Source.bundled).source is DataSource.BUNDLED
    assert make_dm(tmp_path, source="BUNDLED").source is DataSource.BUNDLED


def test_one_enum_for_code_and_configs() -> None:
    """config.py's ``Source`` is this enum: lower-case names for OmegaConf, the upper-case ones are aliases."""
    from twist_lightning.config import DataConfig, Source

    assert Source is DataSource and [s.value for s in DataSource] == ["bundled", "local", "hub"]
    assert DataSource.BUNDLED is DataSource.bundled and DataSource.HUB is DataSource.hub
    cfg = OmegaConf.structured(DataConfig)
    cfg.source = "local"  # OmegaConf matches by member name
    assert cfg.source is DataSource.local
    assert OmegaConf.to_container(cfg, enum_to_str=True)["source"] == "local"
    assert parse_source("HUB") is DataSource.hub and parse_source(DataSource.LOCAL) is DataSource.local


def test_local_files_finds_each_split(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_corpus(folder / "wiki.train.raw", 10)
    write_corpus(folder / "valid.txt", 10)
    assert local_files(DataSource.local, str(folder)) == {"train": folder / "wiki.train.raw",
                                                         "val": folder / "valid.txt"}
    assert local_files(DataSource.local, str(folder / "valid.txt")) == {"train": folder / "valid.txt"}
    assert local_files(DataSource.bundled, None)["train"].name == "tinyshakespeare.txt"
    with pytest.raises(FileNotFoundError, match="data.path=.*does not exist"):
        local_files(DataSource.local, str(tmp_path / "missing"))
    (folder / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is an empty file"):
        local_files(DataSource.local, str(folder / "empty.txt"))
    assert describe_source(DataSource.local, "x.txt", None, None) == "data.path=x.txt"
    assert describe_source(DataSource.hub, None, "wikitext", "c") == "data.hub_name=wikitext data.hub_config=c"
