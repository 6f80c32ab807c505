"""Checkpoints: atomic writes survive a crash mid-write, keep-last-N, pointer, RNG states round trip."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from semask.engine.checkpoint import (POINTER, CheckpointError, CheckpointManager, atomic_save, load_checkpoint,
                                      rng_state, set_rng_state)


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "iteration": int(value)}


def test_save_load_round_trip_and_pointer(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    assert m.latest() is None
    for it in (10, 20, 30):
        m.save(_state(it), it)
    assert [p.name for p in m.list()] == ["model_0000020.pth", "model_0000030.pth"]  # oldest deleted
    assert (tmp_path / POINTER).read_text().strip() == "model_0000030.pth"
    latest = m.latest()
    assert latest == tmp_path / "model_0000030.pth"
    assert torch.equal(load_checkpoint(latest)["model"]["w"], torch.full((3,), 30.0))
    assert not list(tmp_path.glob(".*.tmp"))


def test_pointer_to_a_missing_file_falls_back_to_the_newest(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=5)
    m.save(_state(1), 1)
    m.save(_state(2), 2)
    (tmp_path / POINTER).write_text("model_0000099.pth\n")
    assert m.latest() == tmp_path / "model_0000002.pth"


def test_truncated_or_foreign_files_give_clear_errors(tmp_path):
    p = atomic_save(_state(1), tmp_path / "model_0000001.pth")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model_0000001.pth.*truncated"):
        load_checkpoint(p)
    q = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(1)}, q)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(q)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from semask.engine.checkpoint import CheckpointManager
    m = CheckpointManager(sys.argv[1], keep_last=1)
    m.save({"model": {"w": torch.ones(1000)}, "iteration": 1}, 1)

    def dying_save(obj, f, *args, **kwargs):   # the process dies half-way through writing the next checkpoint
        f.write(b"PK\\x03\\x04" + b"\\0" * 50000)
        f.flush()
        os._exit(9)

    torch.save = dying_save
    m.save({"model": {"w": torch.full((1000,), 2.0)}, "iteration": 2}, 2)
""")


def test_crash_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 9, proc.stderr
    m = CheckpointManager(tmp_path, keep_last=1)
    assert [p.name for p in m.list()] == ["model_0000001.pth"]       # the partial file never got a real name
    assert list(tmp_path.glob(".*.tmp"))                            # the partial write is only a temporary
    latest = m.latest()
    assert latest is not None and latest.name == "model_0000001.pth"
    state = load_checkpoint(latest)
    assert state["iteration"] == 1 and torch.equal(state["model"]["w"], torch.ones(1000))
    m.remove_stale_temporaries()
    assert not list(tmp_path.glob(".*.tmp"))


def test_unwritable_folder_raises_and_keeps_nothing_half_written(tmp_path):
    m = CheckpointManager(tmp_path / "missing" / "deeper", keep_last=1)
    with pytest.raises(OSError):
        m.save(_state(1), 1)


def test_rng_states_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    atomic_save({"model": {}, "rng": rng_state()}, tmp_path / "c.pth")
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    set_rng_state(load_checkpoint(tmp_path / "c.pth")["rng"])
    again = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]
