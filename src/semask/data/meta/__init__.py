"""Class names and colour palettes of the datasets semask knows (ADE20K-150, Cityscapes-19).

The tables live beside this file as JSON (one entry per train id: name and RGB colour) so that they
ship with the package and can be read without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

META_DIR = Path(__file__).parent
KNOWN = {"ade20k": 150, "cityscapes": 19}


@dataclass(frozen=True)
class DatasetMeta:
    """Names and colours of a dataset's classes, indexed by train id."""
    dataset: str
    class_names: tuple[str, ...]
    palette: np.ndarray  # (K, 3) uint8 RGB

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@lru_cache(maxsize=None)
def _load(dataset: str) -> DatasetMeta:
    data = json.loads((META_DIR / f"{dataset}.json").read_text())
    names = tuple(c["name"] for c in data["classes"])
    palette = np.asarray([c["color"] for c in data["classes"]], dtype=np.uint8).reshape(-1, 3)
    palette.setflags(write=False)
    return DatasetMeta(dataset, names, palette)


def dataset_meta(dataset: str, num_classes: int) -> DatasetMeta | None:
    """The built-in names/palette for `dataset` when its class count is `num_classes`, else None."""
    key = dataset.lower()
    if KNOWN.get(key) != num_classes:
        return None
    return _load(key)


__all__ = ["DatasetMeta", "dataset_meta", "KNOWN"]
