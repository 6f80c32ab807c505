"""ADE20K layout: discovery, label mapping (0 -> 255, k -> k-1), class names, splits and folder errors."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semask.config import load_config
from semask.data import DataError, build_dataset
from semask.data.meta import dataset_meta


def cfg_for(num_classes: int = 150, **extra):
    return load_config("semask-tiny-ade20k", {"model.num_classes": num_classes, **extra})


def write_pair(root: Path, split: str, stem: str, label: np.ndarray, ext: str = ".jpg") -> None:
    h, w = label.shape
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(stem.encode()))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / split / f"{stem}{ext}")
    Image.fromarray(label.astype(np.uint8), mode="L").save(root / "annotations" / split / f"{stem}.png")


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    stored = np.array([[0, 1, 2, 150], [75, 0, 1, 149], [3, 3, 3, 3]])
    write_pair(tmp_path, "training", "ADE_train_00000001", stored)
    write_pair(tmp_path, "training", "ADE_train_00000002", np.ones((5, 6)))
    write_pair(tmp_path, "validation", "ADE_val_00000001", np.full((4, 4), 10))
    return tmp_path


def test_label_mapping_other_to_ignore_and_shift(ade_root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", ade_root)
    assert len(ds) == 2 and ds.num_classes == 150 and ds.ignore_value == 255
    s = ds[0]
    assert s.path.name == "ADE_train_00000001.jpg" and s.label_path.name == "ADE_train_00000001.png"
    expected = np.array([[255, 0, 1, 149], [74, 255, 0, 148], [2, 2, 2, 2]])
    assert s.label.dtype == np.int64 and np.array_equal(s.label, expected)
    assert s.image.dtype == np.uint8 and s.image.shape == (3, 4, 3)


def test_names_and_palette_are_the_ade20k_tables(ade_root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", ade_root)
    meta = dataset_meta("ade20k", 150)
    assert ds.class_names == meta.class_names and ds.class_names[:3] == ("wall", "building", "sky")
    assert np.array_equal(ds.palette, meta.palette)


@pytest.mark.parametrize("split", ["val", "validation"])
def test_split_aliases(ade_root: Path, split: str) -> None:
    ds = build_dataset(cfg_for(), split, ade_root)
    assert len(ds) == 1 and np.array_equal(ds[0].label, np.full((4, 4), 9))


def test_training_alias_and_root_from_config(ade_root: Path) -> None:
    ds = build_dataset(cfg_for(**{"data.root": str(ade_root)}), "training")
    assert len(ds) == 2


def test_classes_file_replaces_the_names(ade_root: Path) -> None:
    (ade_root / "classes.txt").write_text("sky\n\nground\n# a comment\ntree\n")
    with pytest.raises(DataError, match="model.num_classes"):
        build_dataset(cfg_for(150), "val", ade_root)
    ds = build_dataset(cfg_for(3), "val", ade_root)
    assert ds.class_names == ("sky", "ground", "tree") and ds.palette.shape == (3, 3)
    # with 3 classes, stored 10 is not a class any more: the check names the file
    with pytest.raises(DataError, match=r"ADE_val_00000001\.png.*10"):
        ds.load(0)


def test_classes_json_with_colours(ade_root: Path) -> None:
    (ade_root / "classes.json").write_text('{"classes": [{"name": "a", "color": [1, 2, 3]}, '
                                           '{"name": "b", "color": [4, 5, 6]}]}')
    ds = build_dataset(cfg_for(2), "train", ade_root)
    assert ds.class_names == ("a", "b") and ds.palette.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_class_count_must_match_the_model(ade_root: Path) -> None:
    with pytest.raises(DataError, match=r"150 classes.*model.num_classes is 19"):
        build_dataset(cfg_for(19), "train", ade_root)


def test_unlabelled_validation_split(tmp_path: Path) -> None:
    write_pair(tmp_path, "training", "a", np.ones((4, 4)))
    (tmp_path / "images" / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "validation" / "v.jpg")
    ds = build_dataset(cfg_for(), "val", tmp_path)
    assert len(ds) == 1 and ds[0].label is None and ds[0].label_path is None and not ds.has_labels


def test_missing_and_empty_folders_name_the_folder_and_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        build_dataset(cfg_for(), "train", tmp_path / "nope")
    with pytest.raises(DataError, match=r"images.*folder not found.*ADE20K layout"):
        build_dataset(cfg_for(), "train", tmp_path)
    (tmp_path / "images" / "training").mkdir(parents=True)
    with pytest.raises(DataError, match=r"images/training: no images found.*annotations"):
        build_dataset(cfg_for(), "train", tmp_path)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "training" / "a.jpg")
    with pytest.raises(DataError, match=r"annotations.*not found"):
        build_dataset(cfg_for(), "train", tmp_path)
    with pytest.raises(DataError, match=r"validation.*split folder not found.*found: training"):
        build_dataset(cfg_for(), "val", tmp_path)


def test_no_root_given(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--data ROOT"):
        build_dataset(cfg_for(), "train")


def test_image_without_label_raises_or_is_skipped(ade_root: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(ade_root / "images" / "training" / "lonely.jpg")
    with pytest.raises(DataError, match=r"lonely\.jpg: image has no label map"):
        build_dataset(cfg_for(), "train", ade_root)
    ds = build_dataset(cfg_for(**{"data.on_error": "skip"}), "train", ade_root)
    assert len(ds) == 2 and ds.skipped == 1 and any("lonely.jpg" in k for k in ds.skipped_files)
