"""Pairing files by name, split folder aliases and class-name files."""

from __future__ import annotations

from pathlib import Path

import pytest

from semask.data import DataError
from semask.data.labels import identity_mapping
from semask.data.layout import keyed, list_files, pair_up, read_class_names, split_folder


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_listing_skips_hidden_files_and_other_extensions(tmp_path: Path) -> None:
    for name in ("b.JPG", "a.png", "sub/c.jpeg", ".hidden.png", ".cache/d.png", "notes.txt"):
        touch(tmp_path / name)
    names = [str(p.relative_to(tmp_path)) for p in list_files(tmp_path, (".jpg", ".jpeg", ".png"))]
    assert names == ["a.png", "b.JPG", "sub/c.jpeg"]


def test_pairing_reports_both_kinds_of_orphans(tmp_path: Path) -> None:
    imgs = {k: touch(tmp_path / "i" / f"{k}.jpg") for k in ("a", "b", "c")}
    labs = {k: touch(tmp_path / "l" / f"{k}.png") for k in ("b", "c", "d")}
    found = pair_up(imgs, labs, lambda p: identity_mapping(2), tmp_path / "i", tmp_path / "l")
    assert [p.image.stem for p in found.pairs] == ["b", "c"] and all(p.label.stem == p.image.stem for p in found.pairs)
    assert found.missing_labels == [imgs["a"]] and found.orphan_labels == [labs["d"]]


def test_keys_include_subfolders_and_duplicates_keep_the_first(tmp_path: Path, caplog) -> None:
    files = [touch(tmp_path / "x" / "a.jpg"), touch(tmp_path / "x" / "a.png"), touch(tmp_path / "a.png")]
    keys = keyed(sorted(files), tmp_path, lambda p: p.stem)
    assert keys == {"a": tmp_path / "a.png", "x/a": tmp_path / "x" / "a.jpg"}
    assert "same name" in caplog.text


def test_split_folder_aliases_and_errors(tmp_path: Path) -> None:
    (tmp_path / "training").mkdir()
    assert split_folder(tmp_path, "train", {"train": "training"}, "LAYOUT") == tmp_path / "training"
    assert split_folder(tmp_path, "training", {}, "LAYOUT") == tmp_path / "training"
    with pytest.raises(DataError, match=r"val: split folder not found \(found: training\). Expected LAYOUT"):
        split_folder(tmp_path, "val", {}, "LAYOUT")


def test_class_files(tmp_path: Path) -> None:
    assert read_class_names(tmp_path) == (None, None, None)
    (tmp_path / "classes.json").write_text('["road", "car"]')
    assert read_class_names(tmp_path)[0] == ["road", "car"]
    (tmp_path / "classes.json").write_text('{"classes": 3}')
    with pytest.raises(DataError, match="classes.json: expected a list"):
        read_class_names(tmp_path)
    (tmp_path / "classes.json").write_text("{broken")
    with pytest.raises(DataError, match="classes.json: cannot read"):
        read_class_names(tmp_path)
    (tmp_path / "classes.txt").write_text("# only a comment\n\n")
    with pytest.raises(DataError, match="classes.txt: no class names"):
        read_class_names(tmp_path)
    (tmp_path / "classes.txt").write_text(" sky \nground\n")
    names, source, palette = read_class_names(tmp_path)  # the text file wins over the JSON one
    assert names == ["sky", "ground"] and source.name == "classes.txt" and palette is None
