"""Atomic writes: a failed or killed write leaves the old file whole; JSON is strict; no temp files linger."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from twist_lightning.io import (
    AtomicCheckpointIO,
    NonFiniteCheckpointError,
    atomic_files,
    atomic_path,
    finite_json,
    write_json,
    write_text,
)


def test_a_writer_that_fails_half_way_leaves_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.bin"]


def test_a_killed_writer_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "summary.json"
    write_text(target, "old\n")
    code = ("import sys, time; from twist_lightning.io import atomic_path\n"
            f"with atomic_path({str(target)!r}) as tmp:\n"
            "    f = open(tmp, 'wb'); f.write(b'x' * 1000); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert target.read_text() == "old\n"  # the half-written temp file never replaced it


def test_write_json_turns_non_finite_floats_into_null_and_reports_them(tmp_path):
    found = write_json(tmp_path / "s.json", {"val_loss": math.nan, "rows": [{"ppl": math.inf}, {"ppl": 3.0}]})
    assert found == ["val_loss", "rows[0].ppl"]
    assert json.loads((tmp_path / "s.json").read_text()) == {"val_loss": None, "rows": [{"ppl": None}, {"ppl": 3.0}]}
    assert finite_json({"a": 1.0}) == ({"a": 1.0}, [])


def test_written_files_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_files_moves_every_file_and_cleans_up(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with atomic_files(tmp_path) as tmp:
        (tmp / "config.json").write_text("{}")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"w")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == \
        ["config.json", "keep.txt", "sub/w.bin"]


def test_checkpoint_io_round_trips_and_refuses_non_finite_state(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 3}, tmp_path / "a.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "a.ckpt")["state_dict"]["w"], torch.ones(2))
    before = (tmp_path / "a.ckpt").read_bytes()
    with pytest.raises(NonFiniteCheckpointError, match="step 4.*model.w"):
        io.save_checkpoint({"state_dict": {"model.w": torch.tensor([1.0, math.nan])}, "global_step": 4},
                           tmp_path / "a.ckpt")
    assert (tmp_path / "a.ckpt").read_bytes() == before
    AtomicCheckpointIO(check_finite=False).save_checkpoint({"state_dict": {"w": torch.tensor(math.nan)}},
                                                           tmp_path / "b.ckpt")
    assert (tmp_path / "b.ckpt").exists()
