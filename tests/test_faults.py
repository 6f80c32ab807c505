"""Faults during training: nothing good is lost, and resuming gives exactly the uninterrupted result.

- SIGTERM, SIGINT and kill -9 at random points (seeded) of a short CPU training in a real
  `python -m semask train` process, checkpoint every iteration; then `--resume` to the end. The final
  weights must equal those of an uninterrupted run bit for bit, and so must every logged loss. One run
  is killed twice (the second time while resuming).
- A loss that turns non-finite stops the run with a one-line error naming the iteration, the loss terms
  and the last good checkpoint (which loads, with finite weights); with solver.skip_nonfinite=true the
  steps are skipped and counted, and the count survives a resume.
- A full disk (OSError ENOSPC from the writer half-way through a checkpoint, the pointer file or the final
  weights) is a one-line error; the previous checkpoint stays the latest, loads, and resuming from it
  gives the uninterrupted result. No temporary file is left behind.
- An output folder that cannot be written is refused before any model is built.
(A crash inside a checkpoint write is in test_checkpoint.py; NaN injection into one loss term in
test_trainer.py.)
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from semask.cli import main
from semask.engine.checkpoint import POINTER, CheckpointManager, load_checkpoint
from semask.engine.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
MAX_ITER = 8
# tiny model and images; random scales, crops, flips, colour jitter, drop-path and dropout all on, so that
# an exact resume needs the data position and every random state restored
FAULT_CFG = {"data.min_size_train": [48, 64, 96], "data.max_size_train": 256, "data.crop_size": [64, 64],
             "data.size_divisibility": 64, "data.num_workers": 0, "data.min_size_test": 64,
             "test.eval_period": -1, "solver.ims_per_batch": 2, "loss.num_points": 128,
             "solver.max_iter": MAX_ITER, "solver.checkpoint_period": 1, "solver.keep_last": 2,
             "solver.log_period": 1, "model.backbone.drop_path_rate": 0.1, "solver.base_lr": 1e-3, "seed": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(config file, synthetic dataset)."""
    from semask.data.synthetic import make_synthetic_dataset

    base = tmp_path_factory.mktemp("faults")
    scenes = make_synthetic_dataset(base / "scenes", 4, 0, 64, seed=0)
    config = base / "fault.yaml"
    config.write_text(tiny_config(6, **FAULT_CFG).to_yaml())
    return config, scenes


def train_argv(setup, out: Path, *extra: str) -> list[str]:
    config, scenes = setup
    return ["train", "--config", str(config), "--data", str(scenes), "--output", str(out), *extra]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model_final.safetensors"))


def losses(out: Path) -> dict[int, float]:
    return {r["iteration"]: r["total_loss"] for r in read_metrics(out / "metrics.jsonl") if "total_loss" in r}


def _sources() -> dict[str, float]:
    return {str(p.relative_to(REPO)): p.stat().st_mtime for p in (REPO / "src" / "semask").rglob("*.py")}


SOURCES_AT_IMPORT = _sources()  # runs here and in the subprocesses must use the same code


def assert_same_as_reference(out: Path, reference: Path, context: object = "") -> None:
    a, b = final_weights(reference), final_weights(out)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    edited = sorted(k for k, t in _sources().items() if SOURCES_AT_IMPORT.get(k) != t)
    assert not different, (f"{len(different)} tensors differ, e.g. {different[:3]}; {context}"
                           + (f"; the sources changed while the test ran: {edited}" if edited else ""))
    assert losses(out) == losses(reference) and sorted(losses(out)) == list(range(1, MAX_ITER + 1))
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp"))


# ----------------------------------------------------------------------------- signals at random points


@dataclass
class Trial:
    """A training process stopped by `signals` (one per run: the first run, then --resume runs)."""
    name: str
    signals: tuple[int, ...]
    seed: int
    log: list[str] = field(default_factory=list)
    stops: list[dict] = field(default_factory=list)   # per stop: signal, return code, last logged iteration


TRIALS = [Trial("sigterm", (signal.SIGTERM,), 1), Trial("sigint", (signal.SIGINT,), 5),
          Trial("kill-9", (signal.SIGKILL,), 5), Trial("kill-9-twice", (signal.SIGKILL, signal.SIGKILL), 2)]


def _logged(out: Path) -> int:
    return max((r.get("iteration", 0) for r in read_metrics(out / "metrics.jsonl")), default=0)


def run_trial(trial: Trial, setup, out: Path) -> Trial:
    """Start `python -m semask train`, wait for a random iteration (and a random fraction of the next
    one), send the signal; for a second signal, start a --resume run and do it again."""
    rng = random.Random(trial.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for n, sig in enumerate(trial.signals):
        extra = ["--resume"] if n else []
        proc = subprocess.Popen([sys.executable, "-m", "semask", *train_argv(setup, out, *extra)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        start = min(_logged(out), MAX_ITER - 4) if n else 0
        # kill -9 may land anywhere, even before training starts; SIGTERM/SIGINT once the loop runs
        lowest = start if sig == signal.SIGKILL else start + 1
        target = rng.randint(lowest, MAX_ITER - 4)
        deadline = time.time() + 240
        if target == 0:
            time.sleep(rng.uniform(0.5, 4.0))
        else:
            while time.time() < deadline and proc.poll() is None and _logged(out) < target:
                time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        running = proc.poll() is None
        if running:
            proc.send_signal(sig)
        output = proc.communicate(timeout=240)[0]
        trial.log.append(output)
        trial.stops.append({"signal": sig, "running": running, "code": proc.returncode, "logged": _logged(out),
                            "target": target})
    return trial


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory) -> Path:
    """The uninterrupted run (in this process)."""
    out = tmp_path_factory.mktemp("reference")
    assert main(train_argv(setup, out)) == 0
    return out


@pytest.fixture(scope="module")
def trials(setup, tmp_path_factory) -> dict[str, tuple[Trial, Path]]:
    """All interrupted runs, two processes at a time, while this process trains the reference."""
    outs = {t.name: tmp_path_factory.mktemp(t.name) for t in TRIALS}
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {t.name: pool.submit(run_trial, t, setup, outs[t.name]) for t in TRIALS}
    yield futures, outs  # the reference fixture runs meanwhile
    pool.shutdown(wait=True)


@pytest.mark.parametrize("name", [t.name for t in TRIALS])
def test_interrupted_training_resumes_bit_exact(name, trials, reference, setup):
    futures, outs = trials
    trial, out = futures[name].result(timeout=600), outs[name]
    log = "\n".join(trial.log)
    for stop in trial.stops:
        assert stop["running"], f"the run ended before the signal: {stop}\n{log}"
        sig = stop["signal"]
        if sig == signal.SIGKILL:
            assert stop["code"] == -signal.SIGKILL, log
        else:  # finishes the iteration, saves, says how to continue, exits 128 + signal
            assert stop["code"] == 128 + sig, log
            assert "continue with --resume" in log
    latest = CheckpointManager(out).latest()
    logged = trial.stops[-1]["logged"]
    if latest is None:  # killed before the first checkpoint: nothing to lose yet
        assert trial.stops[-1]["signal"] == signal.SIGKILL and logged <= 1, log
        done = 0
    else:
        state = load_checkpoint(latest)  # the newest checkpoint always loads
        done = state["iteration"]
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
        if trial.stops[-1]["signal"] == signal.SIGKILL:
            assert logged - 1 <= done <= logged, (done, logged)  # at most the iteration being saved is lost
        else:
            assert done == logged, (done, logged)  # nothing is lost
    assert not (out / "model_final.safetensors").exists()

    assert main(train_argv(setup, out, "--resume")) == 0
    assert_same_as_reference(out, reference, (trial.stops, done))


def test_trials_hit_different_points():
    """The seeds spread the stops over the run (a fixed point would test one case only)."""
    targets = set()
    for t in TRIALS:
        rng = random.Random(t.seed)
        targets.add(rng.randint(0 if t.signals[0] == signal.SIGKILL else 1, MAX_ITER - 4))
    assert len(targets) == 4, targets


# ----------------------------------------------------------------------------- non-finite losses


def test_diverging_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(setup, tmp_path, capsys):
    out = tmp_path / "diverge"
    code = main(train_argv(setup, out, "solver.base_lr=1e30"))  # the first step blows the weights up
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("semask train: error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "non-finite loss at iteration 2: loss_ce=nan" in lines[0]
    assert f"The last good checkpoint is {out / 'model_0000001.pth'}" in lines[0]
    assert "solver.skip_nonfinite=true" in lines[0]
    latest = CheckpointManager(out).latest()
    assert latest == out / "model_0000001.pth"
    state = load_checkpoint(latest)
    assert state["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "model_final.safetensors").exists()


def test_skipped_steps_are_counted_across_a_resume(setup, tmp_path, capsys):
    out = tmp_path / "skip"
    assert main(train_argv(setup, out, "solver.base_lr=1e30", "solver.skip_nonfinite=true", "--max-iter", "3")) == 0
    assert load_checkpoint(CheckpointManager(out).latest())["skipped_steps"] == 2  # iterations 2 and 3
    assert main(train_argv(setup, out, "solver.base_lr=1e30", "solver.skip_nonfinite=true", "--max-iter", "5",
                           "--resume")) == 0
    records = [r for r in read_metrics(out / "metrics.jsonl") if "total_loss" in r]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5]
    assert [r.get("skipped_steps", 0) for r in records] == [0, 1, 2, 3, 4]
    assert load_checkpoint(CheckpointManager(out).latest())["skipped_steps"] == 4
    err = capsys.readouterr().err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- disk full, unwritable output


def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_a_checkpoint(setup, tmp_path, reference, monkeypatch, capsys):
    out = tmp_path / "full_disk"
    real_save = torch.save
    calls = []

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third checkpoint: part of it reaches the disk, then the disk is full
            f.write(b"PK\x03\x04" + b"\0" * 4096)
            no_space()
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    code = main(train_argv(setup, out))
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("semask train: error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert (f"cannot write the checkpoint of iteration 3 in {out}: No space left on device; the previous "
            "checkpoint is intact") in lines[0]
    assert not list(out.glob(".*.tmp")) and not (out / "model_0000003.pth").exists()
    assert (out / POINTER).read_text().strip() == "model_0000002.pth"
    assert load_checkpoint(CheckpointManager(out).latest())["iteration"] == 2

    assert main(train_argv(setup, out, "--resume")) == 0
    assert_same_as_reference(out, reference)


def test_disk_full_while_moving_the_pointer(setup, tmp_path, reference, monkeypatch, capsys):
    """The checkpoint of iteration 2 is complete but the pointer still names iteration 1: resuming from
    iteration 1 is still exact."""
    import semask.engine.checkpoint as checkpoint

    out = tmp_path / "pointer"
    real_write = checkpoint.atomic_write_text
    calls = []

    def write_until_the_disk_fills(text, path):
        calls.append(1)
        if len(calls) == 2:
            with open(Path(path).with_name(f".{Path(path).name}.tmp"), "w") as f:  # a partial temporary
                f.write("model_00")
            no_space()
        return real_write(text, path)

    monkeypatch.setattr(checkpoint, "atomic_write_text", write_until_the_disk_fills)
    code = main(train_argv(setup, out))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1 and "cannot write the checkpoint of iteration 2" in err and "Traceback" not in err, err
    assert (out / POINTER).read_text().strip() == "model_0000001.pth"
    assert CheckpointManager(out).latest() == out / "model_0000001.pth"

    assert main(train_argv(setup, out, "--resume")) == 0  # also clears the stale temporary
    assert_same_as_reference(out, reference)


def test_disk_full_while_writing_the_final_weights(setup, tmp_path, reference, monkeypatch, capsys):
    import safetensors.torch

    out = tmp_path / "final"
    real = safetensors.torch.save_file

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")  # the start of a file
        no_space()

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    code = main(train_argv(setup, out))
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("semask train: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"{out / 'model_final.safetensors'}: cannot write weights" in lines[0] and "No space left" in lines[0]
    assert not (out / "model_final.safetensors").exists() and not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert load_checkpoint(CheckpointManager(out).latest())["iteration"] == MAX_ITER  # training is saved

    assert main(train_argv(setup, out, "--resume")) == 0  # nothing left to train: writes the final weights
    assert_same_as_reference(out, reference)


def test_unwritable_output_is_refused_before_any_work(setup, tmp_path, monkeypatch, capsys):
    """A disk that is full from the start: the trainer's write test fails before the model is built."""
    import semask.engine.trainer as trainer
    import semask.modeling

    def forbidden(*args, **kwargs):
        raise AssertionError("the model was built")

    real_open = open

    def full_disk_open(path, mode="r", *args, **kwargs):
        if "w" in mode and Path(path).name.startswith(".write_test"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(semask.modeling, "build_from_config", forbidden)
    monkeypatch.setattr(trainer, "open", full_disk_open, raising=False)
    out = tmp_path / "out"
    code = main(train_argv(setup, out))
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"cannot write to the output folder {out}: No space left on device" in err
    assert list(out.iterdir()) == []


def test_a_failed_pointer_write_leaves_no_temporary(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, keep_last=2)
    manager.save({"model": {"w": torch.ones(2)}, "iteration": 1}, 1)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == POINTER:
            no_space()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        manager.save({"model": {"w": torch.zeros(2)}, "iteration": 2}, 2)
    monkeypatch.undo()
    assert not list(tmp_path.glob(".*.tmp"))
    assert (tmp_path / POINTER).read_text().strip() == "model_0000001.pth"
    assert load_checkpoint(manager.latest())["iteration"] == 1
