"""Lazy checks while loading, and the data.on_error policy (raise: DataError naming the file;
skip: logged once per file, counted, another sample used)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semask.config import load_config
from semask.data import DataError, build_dataset


def cfg_for(on_error: str = "raise"):
    return load_config("semask-tiny-ade20k", {"model.num_classes": 4, "data.dataset": "folder",
                                             "data.on_error": on_error})


def good_pair(root: Path, stem: str, value: int = 1, size=(6, 8)) -> None:
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 20 * value, np.uint8)).save(root / "images" / "train" / f"{stem}.png")
    Image.fromarray(np.full(size, value, np.uint8), mode="L").save(root / "labels" / "train" / f"{stem}.png")


def corrupt(root: Path, kind: str, stem: str) -> str:
    """Make pair `stem` bad in one way; the name of the file the message must name."""
    img, lab = root / "images" / "train" / f"{stem}.png", root / "labels" / "train" / f"{stem}.png"
    if kind == "zero-byte":
        img.write_bytes(b"")
        return img.name
    if kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
        img.write_bytes(img.read_bytes()[:200])
        return img.name
    if kind == "not-an-image":
        img.write_text("this is a text file")
        return img.name
    if kind == "label-values":
        Image.fromarray(np.full((6, 8), 9, np.uint8), mode="L").save(lab)
        return lab.name
    if kind == "size-mismatch":
        Image.fromarray(np.full((5, 8), 1, np.uint8), mode="L").save(lab)
        return lab.name
    if kind == "rgb-label":
        Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(lab)
        return lab.name
    raise AssertionError(kind)


KINDS = ["zero-byte", "truncated", "not-an-image", "label-values", "size-mismatch", "rgb-label"]
MESSAGES = {"zero-byte": "0 bytes", "truncated": "truncated", "not-an-image": "not an image",
            "label-values": "label value", "size-mismatch": "must match", "rgb-label": "mode RGB"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for i, stem in enumerate(["a", "b", "c"]):
        good_pair(tmp_path, stem, value=i + 1)
    (tmp_path / "classes.txt").write_text("zero\none\ntwo\nthree\n")
    return tmp_path


@pytest.mark.parametrize("kind", KINDS)
def test_raise_names_the_file(root: Path, kind: str) -> None:
    name = corrupt(root, kind, "b")
    ds = build_dataset(cfg_for("raise"), "train", root)
    assert ds[0].path.name == "a.png"
    with pytest.raises(DataError) as info:
        ds.load(1)
    msg = str(info.value)
    assert name in msg and MESSAGES[kind] in msg and "\n" not in msg
    assert "check-data" in msg and "on_error=skip" in msg


@pytest.mark.parametrize("kind", KINDS)
def test_skip_uses_the_next_sample_and_counts_once(root: Path, kind: str, caplog) -> None:
    name = corrupt(root, kind, "b")
    ds = build_dataset(cfg_for("skip"), "train", root)
    with caplog.at_level(logging.WARNING, logger="semask.data"):
        for _ in range(3):
            s = ds.load(1)
            assert s.path.name == "c.png" and s.index == 2 and int(s.label[0, 0]) == 3
    assert ds.skipped == 1 and any(k.endswith(name) for k in ds.skipped_files)
    assert sum(name in r.getMessage() for r in caplog.records) == 1
    assert ds.try_load(1) is None and ds.try_load(0) is not None and ds.skipped == 1


def test_skip_wraps_around_and_fails_when_nothing_is_good(root: Path) -> None:
    corrupt(root, "zero-byte", "c")
    ds = build_dataset(cfg_for("skip"), "train", root)
    assert ds.load(2).path.name == "a.png"
    corrupt(root, "zero-byte", "a")
    corrupt(root, "truncated", "b")
    ds = build_dataset(cfg_for("skip"), "train", root)
    with pytest.raises(DataError, match="every one of the 3 samples"):
        ds.load(0)
    assert ds.skipped == 3


def test_index_bounds_and_repr(root: Path) -> None:
    ds = build_dataset(cfg_for(), "train", root)
    assert ds[-1].path.name == "c.png"
    with pytest.raises(IndexError):
        ds.load(3)
    assert "3 images" in repr(ds) and "4 classes" in repr(ds)


def test_grey_and_palette_images_become_rgb(root: Path) -> None:
    Image.fromarray(np.full((6, 8), 77, np.uint8), mode="L").save(root / "images" / "train" / "a.png")
    s = build_dataset(cfg_for(), "train", root)[0]
    assert s.image.shape == (6, 8, 3) and (s.image == 77).all()
    pal = Image.fromarray(np.full((6, 8), 2, np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 0, 0, 0, 10, 20, 30] + [0] * 759)
    pal.save(root / "labels" / "train" / "a.png")  # palette label maps keep their indices
    assert (build_dataset(cfg_for(), "train", root)[0].label == 2).all()
