"""A semantic segmentation dataset: image/label pairs read lazily, checked, with an error policy.

Every dataset (ADE20K, Cityscapes, a user's folder) is this class with its own pairs and label
mapping. Loading a pair runs the checks of `checks.py`; with `on_error="raise"` the first bad file
stops with a DataError naming it, with `on_error="skip"` it is logged once, counted in `skipped`,
and the next good sample is used in its place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch.utils.data

from .checks import Problem, inspect_pair
from .errors import DataError
from .labels import IGNORE
from .layout import Pair

log = logging.getLogger("semask.data")

FIX_HINT = "(run `semask check-data` to list every problem at once, or set data.on_error=skip to skip bad files)"


@dataclass
class Sample:
    """One loaded pair. `label` holds train ids (255 = ignore), None for an unlabelled split."""
    image: np.ndarray            # uint8 (H, W, 3) RGB
    label: np.ndarray | None     # int64 (H, W)
    path: Path                   # the image file
    label_path: Path | None
    index: int                   # the index actually loaded (differs from the one asked for after a skip)


class SegmentationDataset(torch.utils.data.Dataset):
    """Image/label pairs of one split; `load(i)` (= `dataset[i]`) returns a checked `Sample`."""

    ignore_value = IGNORE

    def __init__(self, name: str, root: Path, split: str, pairs: Sequence[Pair], class_names: Sequence[str],
                 palette: np.ndarray, on_error: str = "raise", image_dir: Path | None = None,
                 label_dir: Path | None = None) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.name = name
        self.root = Path(root)
        self.split = split
        self.pairs = list(pairs)
        self.class_names = tuple(class_names)
        self.palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        self.on_error = on_error
        self.image_dir = image_dir
        self.label_dir = label_dir
        self.skipped_files: dict[str, str] = {}   # file -> problem, each bad file once
        self.log_skips = True                     # loader workers turn this off and report to the main process
        self._bad: set[int] = set()

    # ------------------------------------------------------------------ basic facts
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_labels(self) -> bool:
        return bool(self.pairs) and self.pairs[0].label is not None

    @property
    def skipped(self) -> int:
        """How many files were skipped under on_error=skip (each counted once)."""
        return len(self.skipped_files)

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return (f"SegmentationDataset({self.name}, split={self.split!r}, {len(self)} images, "
                f"{self.num_classes} classes, root={str(self.root)!r})")

    # ------------------------------------------------------------------ loading
    def check(self, i: int) -> tuple[Sample | None, Problem | None]:
        """Read and check pair `i`: (sample, None) or (None, the first problem)."""
        pair = self.pairs[i]
        result = inspect_pair(pair.image, pair.label, pair.mapping, stop_at_first=True)
        if result.problems:
            return None, result.problems[0]
        assert result.image is not None
        return Sample(result.image, result.label, pair.image, pair.label, i), None

    def read(self, i: int) -> Sample:
        """Pair `i`, checked; DataError naming the file on any problem (no policy applied)."""
        sample, problem = self.check(i)
        if problem is not None:
            raise DataError(f"{problem} {FIX_HINT}")
        assert sample is not None
        return sample

    def note_skip(self, path: str | Path, message: str) -> bool:
        """Record a skipped file; True when it is new (and was logged)."""
        key = str(path)
        if key in self.skipped_files:
            return False
        self.skipped_files[key] = message
        if self.log_skips:
            log.warning("skipping %s", message)
        return True

    def load(self, i: int) -> Sample:
        """Sample `i`, checked. Under on_error=skip a bad pair is replaced by the next good one."""
        n = len(self.pairs)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        i %= n
        if self.on_error == "raise":
            return self.read(i)
        for k in range(n):
            j = (i + k) % n
            if j in self._bad:
                continue
            sample, problem = self.check(j)
            if problem is None:
                return sample  # type: ignore[return-value]
            self._bad.add(j)
            self.note_skip(problem.path, str(problem))
        raise DataError(f"every one of the {n} samples in {self.image_dir or self.root} failed its checks; "
                        "run `semask check-data` to see why")

    def try_load(self, i: int) -> Sample | None:
        """Sample `i`, or None when it is bad and on_error=skip (for evaluation: skip, never substitute)."""
        if self.on_error == "raise":
            return self.read(i)
        sample, problem = self.check(i)
        if problem is not None:
            self._bad.add(i % len(self.pairs))
            self.note_skip(problem.path, str(problem))
        return sample

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)
