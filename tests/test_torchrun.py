"""Multi-node launch: two ``torchrun`` "nodes" on localhost (one process each, gloo) train TwIST together.

Starts both node agents at once, as a cluster scheduler would, runs ``tests/torchrun_job.py`` and checks that
both ranks end with the same central model, that syncs happened, and that Lightning saw 2 nodes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("torchrun_job.py")
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")  # the venv's torchrun, same torch as this interpreter
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_two_torchrun_nodes_hold_the_same_central_model(tmp_path):
    port, steps, sync_every = free_port(), 5, 2
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = []
    for node in range(2):
        cmd = [*torchrun(), "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}", "--master_addr=127.0.0.1",
               f"--master_port={port}", str(JOB), "--out", str(tmp_path), "--steps", str(steps),
               "--sync-every", str(sync_every)]
        log = open(tmp_path / f"node{node}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for proc, _ in procs:
            proc.wait(timeout=55)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()  # only the agents this test started
                proc.wait()
            log.close()
    logs = "\n".join(f"--- node {n} ---\n" + (tmp_path / f"node{n}.log").read_text()[-3000:] for n in range(2))
    assert all(proc.returncode == 0 for proc, _ in procs), logs

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert (r0["node_rank"], r1["node_rank"]) == (0, 1) and r0["world_size"] == r1["world_size"] == 2
    assert r0["environment"] == "TorchElasticEnvironment"
    syncs = steps // sync_every + 1  # two full rounds + the partial one folded in at train end
    # sharded (the default with several processes): two all_to_alls per sync, each rank owning about half the rows
    assert r0["syncs"] == r1["syncs"] == 2 * syncs and r0["round"] == syncs and r0["bytes"] > 0
    assert r0["shard"] + r1["shard"] == r0["central"].numel() and max(r0["shard"], r1["shard"]) < 0.6 * r0["central"].numel()
    assert torch.equal(r0["central"], r1["central"])  # both nodes hold the identical central model
    assert (r0["central"] - r0["init"]).abs().max() > 1e-4  # and it trained
