"""Synthetic scenes: deterministic bytes from the seed, ADE20K layout, classes colour cannot separate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semask.cli import main
from semask.config import load_config
from semask.data import build_dataset
from semask.data.synthetic import CLASSES, make_synthetic_dataset


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("scenes"), num_train=24, num_val=6, size=64, seed=3)


def test_same_seed_same_bytes_other_seed_other_bytes(scenes: Path, tmp_path: Path) -> None:
    again = make_synthetic_dataset(tmp_path / "again", num_train=24, num_val=6, size=64, seed=3)
    assert files(again) == files(scenes)
    other = make_synthetic_dataset(tmp_path / "other", num_train=24, num_val=6, size=64, seed=4)
    a, b = files(scenes), files(other)
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a if k.endswith(".png")) == len([k for k in a if k.endswith(".png")])


def test_layout(scenes: Path) -> None:
    assert (scenes / "classes.txt").read_text().split() == list(CLASSES)
    for split, n in (("training", 24), ("validation", 6)):
        images = sorted((scenes / "images" / split).glob("*.png"))
        labels = sorted((scenes / "annotations" / split).glob("*.png"))
        assert len(images) == n and [p.name for p in images] == [p.name for p in labels]
        im, lab = Image.open(images[0]), Image.open(labels[0])
        assert im.mode == "RGB" and im.size == (64, 64) and lab.mode == "L" and lab.size == (64, 64)
        stored = np.asarray(lab)
        assert stored.min() >= 1 and stored.max() <= len(CLASSES)  # every pixel labelled, ADE20K style


def test_loads_as_an_ade20k_dataset(scenes: Path) -> None:
    cfg = load_config("semask-tiny-ade20k", {"model.num_classes": len(CLASSES)})
    ds = build_dataset(cfg, "train", scenes)
    assert len(ds) == 24 and ds.class_names == CLASSES
    seen = np.zeros(len(CLASSES), dtype=np.int64)
    colours_of: dict[int, set] = {c: set() for c in range(len(CLASSES))}
    for i in range(len(ds)):
        s = ds[i]
        assert s.label.min() >= 0 and s.label.max() < len(CLASSES)
        seen += np.bincount(s.label.ravel(), minlength=len(CLASSES))
        for c in np.unique(s.label):
            colours_of[int(c)] |= {tuple(v) for v in np.unique(s.image[s.label == c], axis=0)}
    assert (seen > 0).all(), seen  # every class occurs
    # colour is not the class: every object class shares colours with another class
    for c in range(len(CLASSES)):
        others = set().union(*(colours_of[o] for o in colours_of if o != c))
        assert colours_of[c] & others, CLASSES[c]


def test_regenerating_fewer_images_removes_the_old_ones(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path, num_train=5, num_val=2, size=32, seed=0)
    make_synthetic_dataset(tmp_path, num_train=2, num_val=1, size=32, seed=0)
    assert len(list((tmp_path / "images" / "training").glob("*.png"))) == 2
    assert len(list((tmp_path / "annotations" / "validation").glob("*.png"))) == 1


def test_command_line(tmp_path: Path) -> None:
    assert main(["make-synthetic", str(tmp_path / "d"), "--train", "3", "--val", "2", "--size", "48", "--seed", "7"]) == 0
    direct = make_synthetic_dataset(tmp_path / "e", 3, 2, 48, 7)
    assert files(tmp_path / "d") == files(direct)
    assert main(["make-synthetic", str(tmp_path / "f"), "--size", "8"]) == 2
