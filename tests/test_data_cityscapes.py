"""Cityscapes layout: city folders, *_labelIds -> 19 train ids through our own table, *_labelTrainIds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semask.config import load_config
from semask.data import DataError, build_dataset
from semask.data.meta import dataset_meta

# The official Cityscapes label table (name, id, trainId) as published with the dataset, written out
# independently of the library's lookup table.
OFFICIAL = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
]


def cfg_for(num_classes: int = 19, **extra):
    return load_config("semask-tiny-cityscapes", {"model.num_classes": num_classes, **extra})


def write(root: Path, split: str, city: str, frame: str, label: np.ndarray, kind: str = "labelIds") -> None:
    img_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    h, w = label.shape
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(img_dir / f"{city}_{frame}_leftImg8bit.png")
    Image.fromarray(label.astype(np.uint8), mode="L").save(gt_dir / f"{city}_{frame}_gtFine_{kind}.png")


@pytest.fixture
def city_root(tmp_path: Path) -> Path:
    ids = np.array([i for _, i, _ in OFFICIAL]).reshape(2, 17)
    write(tmp_path, "train", "aachen", "000000_000019", ids)
    write(tmp_path, "train", "bremen", "000001_000019", np.full((3, 5), 26))
    write(tmp_path, "val", "frankfurt", "000000_000294", np.full((3, 5), 7))
    # files of other kinds beside the labels are ignored
    Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(
        tmp_path / "gtFine" / "train" / "bremen" / "bremen_000001_000019_gtFine_color.png")
    return tmp_path


def test_label_ids_map_to_the_19_train_ids(city_root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", city_root)
    assert len(ds) == 2 and ds.num_classes == 19
    s = ds[0]
    assert s.path.parent.name == "aachen" and s.label_path.name.endswith("_gtFine_labelIds.png")
    expected = np.array([t for _, _, t in OFFICIAL]).reshape(2, 17)
    assert np.array_equal(s.label, expected)
    assert np.array_equal(ds[1].label, np.full((3, 5), 13))  # car


def test_names_match_the_official_order(city_root: Path) -> None:
    ds = build_dataset(cfg_for(), "val", city_root)
    train_names = [name for name, _, t in sorted(OFFICIAL, key=lambda r: r[2]) if t != 255]
    assert list(ds.class_names) == train_names
    assert tuple(ds.palette[0]) == (128, 64, 128) and np.array_equal(ds.palette, dataset_meta("cityscapes", 19).palette)
    assert np.array_equal(ds[0].label, np.zeros((3, 5)))  # id 7 = road = 0


def test_train_ids_files_are_used_when_present(city_root: Path) -> None:
    gt = city_root / "gtFine" / "train" / "bremen"
    Image.fromarray(np.full((3, 5), 5, np.uint8), mode="L").save(gt / "bremen_000001_000019_gtFine_labelTrainIds.png")
    ds = build_dataset(cfg_for(), "training", city_root)
    s = ds[1]
    assert s.label_path.name.endswith("_labelTrainIds.png") and np.array_equal(s.label, np.full((3, 5), 5))


def test_unknown_label_ids_are_an_error_naming_the_file(city_root: Path) -> None:
    write(city_root, "train", "aachen", "000002_000019", np.full((3, 5), 40))
    ds = build_dataset(cfg_for(), "train", city_root)
    with pytest.raises(DataError, match=r"aachen_000002_000019_gtFine_labelIds\.png.*40"):
        ds.load(1)


def test_class_count_and_layout_errors(city_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="model.num_classes"):
        build_dataset(cfg_for(150), "train", city_root)
    with pytest.raises(DataError, match=r"leftImg8bit.*Cityscapes layout"):
        build_dataset(cfg_for(), "train", tmp_path / "gtFine")
