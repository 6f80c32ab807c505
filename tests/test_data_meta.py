"""Built-in class names and palettes (ADE20K-150, Cityscapes-19), shipped as package data."""

from __future__ import annotations

import json

import numpy as np

from semask.data.meta import META_DIR, dataset_meta


def test_ade20k_table() -> None:
    meta = dataset_meta("ade20k", 150)
    assert meta is not None and meta.num_classes == 150 and len(set(meta.class_names)) == 150
    assert meta.class_names[:5] == ("wall", "building", "sky", "floor", "tree") and meta.class_names[-1] == "flag"
    assert meta.palette.shape == (150, 3) and meta.palette.dtype == np.uint8
    assert tuple(meta.palette[0]) == (120, 120, 120) and tuple(meta.palette[-1]) == (92, 0, 255)
    assert all(n == n.strip() and n for n in meta.class_names)


def test_cityscapes_table() -> None:
    meta = dataset_meta("Cityscapes", 19)
    assert meta is not None and meta.class_names[0] == "road" and meta.class_names[-1] == "bicycle"
    assert tuple(meta.palette[13]) == (0, 0, 142)  # car


def test_unknown_combinations_give_none() -> None:
    assert dataset_meta("ade20k", 6) is None
    assert dataset_meta("cityscapes", 150) is None
    assert dataset_meta("folder", 150) is None


def test_files_are_plain_json_next_to_the_module() -> None:
    for name, n in (("ade20k", 150), ("cityscapes", 19)):
        data = json.loads((META_DIR / f"{name}.json").read_text())
        assert len(data["classes"]) == n and all(len(c["color"]) == 3 for c in data["classes"])


def test_palette_is_read_only() -> None:
    meta = dataset_meta("ade20k", 150)
    assert not meta.palette.flags.writeable
