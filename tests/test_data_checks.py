"""`semask check-data` and the checks behind it: every problem reported at once, one line each, with
counts per kind and a non-zero exit code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semask.cli import main
from semask.data.checks import KINDS, inspect_pair
from semask.data.labels import identity_mapping

CLASSES = "a\nb\nc\n"


def make(root: Path, stem: str, label: np.ndarray | None = None, image: np.ndarray | None = None) -> None:
    (root / "images" / "train").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    image = np.zeros((6, 8, 3), np.uint8) if image is None else image
    Image.fromarray(image).save(root / "images" / "train" / f"{stem}.png")
    label = np.ones((6, 8), np.uint8) if label is None else label
    Image.fromarray(label.astype(np.uint8)).save(root / "labels" / "train" / f"{stem}.png")


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """One file of every problem kind, plus two clean pairs."""
    root = tmp_path / "my data ü"  # spaces and unicode in paths
    (root).mkdir()
    (root / "classes.txt").write_text(CLASSES)
    make(root, "good1")
    make(root, "good2", label=np.array([[0, 1], [2, 255]]), image=np.zeros((2, 2, 3), np.uint8))
    make(root, "no_label")
    (root / "labels" / "train" / "no_label.png").unlink()
    make(root, "orphan")
    (root / "images" / "train" / "orphan.png").unlink()
    make(root, "empty")
    (root / "images" / "train" / "empty.png").write_bytes(b"")
    make(root, "text")
    (root / "images" / "train" / "text.png").write_text("not really a png")
    make(root, "cut", image=np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8),
         label=np.ones((40, 40)))
    cut = root / "images" / "train" / "cut.png"
    cut.write_bytes(cut.read_bytes()[:300])
    make(root, "rgb")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "labels" / "train" / "rgb.png")
    make(root, "values", label=np.full((6, 8), 7))
    make(root, "size", label=np.ones((3, 8)))
    return root


EXPECTED = {
    "missing-label": "no_label.png", "missing-image": "orphan.png", "zero-byte": "empty.png",
    "not-an-image": "text.png", "unreadable": "cut.png", "label-mode": "rgb.png", "label-values": "values.png",
    "size-mismatch": "size.png",
}


def test_every_kind_is_found_at_once(messy: Path, capsys) -> None:
    code = main(["check-data", "--config", "semask-tiny-ade20k", "--data", str(messy), "data.dataset=folder",
                 "model.num_classes=3"])
    out = capsys.readouterr().out
    assert code == 1
    problem_lines = [line for line in out.splitlines() if line.split(":")[0] in KINDS]
    assert len(problem_lines) == len(EXPECTED)
    for kind, name in EXPECTED.items():
        lines = [line for line in problem_lines if line.startswith(f"{kind}: ")]
        assert len(lines) == 1 and name in lines[0], (kind, lines)
    assert "good1" not in out and "good2" not in out
    assert f"{len(EXPECTED)} problem(s)" in out
    for kind in EXPECTED:
        assert f"  {kind}: 1 " in out


def test_clean_split_exits_zero(messy: Path, capsys) -> None:
    for p in (messy / "images" / "train").iterdir():
        if not p.name.startswith("good"):
            p.unlink()
    for p in (messy / "labels" / "train").iterdir():
        if not p.name.startswith("good"):
            p.unlink()
    code = main(["check-data", "-c", "semask-tiny-ade20k", "-d", str(messy), "--jobs", "2", "data.dataset=folder",
                 "model.num_classes=3"])
    out = capsys.readouterr().out
    assert code == 0 and "no problems found" in out and "checked 2 images" in out


def test_wrong_class_count_is_a_one_line_error(messy: Path, capsys) -> None:
    code = main(["check-data", "--config", "semask-tiny-ade20k", "--data", str(messy), "data.dataset=folder"])
    err = capsys.readouterr().err
    assert code == 2 and "model.num_classes is 150" in err and len(err.strip().splitlines()) == 1


def test_missing_folder_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    code = main(["check-data", "--config", "semask-tiny-ade20k", "--data", str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "absent: dataset folder not found" in err


def test_inspect_pair_collects_all_problems_of_a_pair(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "i.png")
    Image.fromarray(np.full((5, 4), 200, np.uint8)).save(tmp_path / "l.png")
    result = inspect_pair(tmp_path / "i.png", tmp_path / "l.png", identity_mapping(3))
    assert [p.kind for p in result.problems] == ["label-values", "size-mismatch"]
    first = inspect_pair(tmp_path / "i.png", tmp_path / "l.png", identity_mapping(3), stop_at_first=True)
    assert [p.kind for p in first.problems] == ["label-values"]


def test_decompression_bomb_is_too_large(tmp_path: Path, monkeypatch, capsys) -> None:
    import semask.io

    monkeypatch.setattr(semask.io, "MAX_IMAGE_PIXELS", 1000)  # a 40x40 image stands in for a huge one
    (tmp_path / "classes.txt").write_text(CLASSES)
    make(tmp_path, "huge", image=np.zeros((40, 40, 3), np.uint8), label=np.ones((40, 40)))
    make(tmp_path, "small", image=np.zeros((20, 20, 3), np.uint8), label=np.ones((20, 20)))
    code = main(["check-data", "--config", "semask-tiny-ade20k", "--data", str(tmp_path), "data.dataset=folder",
                 "model.num_classes=3"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("too-large: ")]
    assert code == 1 and len(lines) == 2 and all("huge.png" in line for line in lines)  # image and label
