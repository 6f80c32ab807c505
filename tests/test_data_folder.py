"""Folder datasets (a user's own data): pairing by stem, subfolders, train ids kept, classes file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semask.config import load_config
from semask.data import DataError, build_dataset


def cfg_for(num_classes: int = 3, **extra):
    return load_config("semask-tiny-ade20k", {"model.num_classes": num_classes, "data.dataset": "folder", **extra})


def write(root: Path, split: str, rel: str, label: np.ndarray, ext: str = ".png") -> None:
    img = root / "images" / split / f"{rel}{ext}"
    lab = root / "labels" / split / f"{rel}.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    lab.parent.mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    Image.fromarray(np.full((h, w, 3), 30, np.uint8)).save(img)
    Image.fromarray(label.astype(np.uint8), mode="L").save(lab)


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    write(tmp_path, "train", "b", np.array([[0, 1], [2, 255]]), ".jpg")
    write(tmp_path, "train", "a", np.ones((2, 3)))
    write(tmp_path, "train", "sub/a", np.full((2, 2), 2))  # same stem in a subfolder is another image
    write(tmp_path, "val", "c", np.zeros((4, 4)))
    (tmp_path / "classes.txt").write_text("cat\ndog\ngrass\n")
    (tmp_path / "images" / "train" / "notes.txt").write_text("not an image extension: ignored")
    return tmp_path


def test_pairs_by_stem_and_train_ids_unchanged(folder_root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", folder_root)
    assert ds.class_names == ("cat", "dog", "grass") and len(ds) == 3
    by_name = {str(ds[i].path.relative_to(folder_root / "images" / "train")): ds[i] for i in range(len(ds))}
    assert set(by_name) == {"a.png", "b.jpg", "sub/a.png"}
    assert np.array_equal(by_name["b.jpg"].label, [[0, 1], [2, 255]])
    assert np.array_equal(by_name["sub/a.png"].label, np.full((2, 2), 2))
    assert by_name["sub/a.png"].label_path == folder_root / "labels" / "train" / "sub" / "a.png"


def test_split_alias(folder_root: Path) -> None:
    ds = build_dataset(cfg_for(), "validation", folder_root)
    assert len(ds) == 1 and ds[0].path.name == "c.png"


def test_values_outside_the_classes(folder_root: Path) -> None:
    write(folder_root, "val", "d", np.array([[3, 0], [254, 1]]))
    ds = build_dataset(cfg_for(), "val", folder_root)
    with pytest.raises(DataError, match=r"labels/val/d\.png: label value\(s\) 3, 254 not accepted"):
        ds.load(1)


def test_classes_file_or_config_names_required(folder_root: Path) -> None:
    (folder_root / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"classes\.txt: file not found"):
        build_dataset(cfg_for(), "train", folder_root)
    ds = build_dataset(cfg_for(**{"data.class_names": ["x", "y", "z"]}), "train", folder_root)
    assert ds.class_names == ("x", "y", "z")


def test_unknown_dataset_kind(folder_root: Path) -> None:
    with pytest.raises(DataError, match="data.dataset='coco' is not known"):
        build_dataset(cfg_for(**{"data.dataset": "coco"}), "train", folder_root)
