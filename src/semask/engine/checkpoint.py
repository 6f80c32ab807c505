"""Training checkpoints: atomic writes, a `last_checkpoint` pointer, keeping the last N, RNG states.

A checkpoint is one `torch.save` file `model_<iteration>.pth` holding the model, optimiser, scheduler
and grad-scaler states, the iteration, the data position and the random-number-generator states (torch,
CUDA, numpy, python), so that a resumed run continues exactly. The model entry is the detectron2 layout
({"model": state_dict, ...}), so `semask predict --weights model_0001000.pth` works on it directly.

Writes go to a temporary file in the same folder, are flushed and fsynced, then renamed over the final
name (os.replace is atomic): a crash mid-write leaves the previous checkpoint and pointer intact.
Reading uses `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import torch

log = logging.getLogger("semask.train")

POINTER = "last_checkpoint"
PATTERN = re.compile(r"^model_(\d+)\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, mode: str, write: Callable[[IO], None]) -> Path:
    """Write through a temporary file + fsync + os.replace; the temporary file is removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically: a reader sees the old file or the complete new one."""
    return _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write `text` to `path` atomically."""
    return _atomic_write(path, "w", lambda f: f.write(text))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint dict, read without running pickled code."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - one clear line for any unreadable file
        raise CheckpointError(f"{path}: cannot read the checkpoint ({str(e).splitlines()[0] if str(e) else e!r}); "
                              "it may be truncated: delete it and resume from an earlier one") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise CheckpointError(f"{path}: not a training checkpoint (no 'model' entry)")
    return obj


class CheckpointManager:
    """Checkpoints of one output folder: save (keeping the last `keep_last`), find the latest, load."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 3) -> None:
        self.folder = Path(folder)
        self.keep_last = max(int(keep_last), 1)

    def path_for(self, iteration: int) -> Path:
        return self.folder / f"model_{iteration:07d}.pth"

    def list(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        found = []
        for p in self.folder.glob("model_*.pth"):
            m = PATTERN.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The checkpoint named by the pointer file, else the newest one found."""
        pointer = self.folder / POINTER
        if pointer.exists():
            name = pointer.read_text().strip()
            if name and (self.folder / name).exists():
                return self.folder / name
            log.warning("%s names %r, which does not exist; using the newest checkpoint found", pointer, name)
        found = self.list()
        return found[-1] if found else None

    def save(self, state: dict, iteration: int) -> Path:
        """Write `state` as the checkpoint of `iteration`, move the pointer, delete the oldest beyond N."""
        path = atomic_save(state, self.path_for(iteration))
        atomic_write_text(path.name + "\n", self.folder / POINTER)
        for old in self.list()[:-self.keep_last]:
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a write that was interrupted."""
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- random-number generators


def rng_state() -> dict:
    """The states of torch (CPU and CUDA), numpy and python's random, in tensors and plain types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return tuple(_as_tuples(v) for v in obj)
    return obj
