import os

import pytest
import torch.distributed as dist

# Tests never touch the network: make the HF libraries fail at once instead of retrying.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _restore_environ():
    # Lightning's launchers write MASTER_PORT, LOCAL_RANK, NODE_RANK ... into os.environ; a later CLI subprocess
    # inheriting LOCAL_RANK would take itself for an already launched child and wait for ranks that never come
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _destroy_process_group():
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    # every test session tokenizes into its own cache, never the user's
    monkeypatch.setenv("TWIST_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "token-cache"))
