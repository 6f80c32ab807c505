"""Finding image/label pairs on disk: file listing, pairing by name, split folders, class files."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import DataError
from .labels import LabelMapping

log = logging.getLogger("semask.data")

LABEL_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".pgm")
SPLIT_ALIASES = {"train": "training", "training": "train", "val": "validation", "validation": "val"}


@dataclass(frozen=True)
class Pair:
    """An image file, its label map (None for an unlabelled split) and how to read the label values."""
    image: Path
    label: Path | None
    mapping: LabelMapping


@dataclass
class Discovery:
    """What was found for one split: the pairs, and the files that have no partner."""
    pairs: list[Pair]
    image_dir: Path
    label_dir: Path | None
    missing_labels: list[Path] = field(default_factory=list)   # images without a label map
    orphan_labels: list[Path] = field(default_factory=list)    # label maps without an image


def list_files(folder: Path, extensions: tuple[str, ...], recursive: bool = True) -> list[Path]:
    """Files under `folder` with one of `extensions` (case-insensitive), hidden files skipped, sorted."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = [p for p in it if p.suffix.lower() in extensions and not any(
        part.startswith(".") for part in p.relative_to(folder).parts) and p.is_file()]
    return sorted(files)


def keyed(files: list[Path], folder: Path, key: Callable[[Path], str | None]) -> dict[str, Path]:
    """Map each file to its pairing key (relative folder + name stem, as `key` defines); None = skip."""
    out: dict[str, Path] = {}
    for p in files:
        k = key(p)
        if k is None:
            continue
        rel = p.relative_to(folder).parent
        full = str(rel / k) if str(rel) != "." else k
        if full in out:  # the same name twice (a.jpg and a.png): the first one is used
            log.warning("%s and %s have the same name; using %s", out[full], p, out[full].name)
            continue
        out[full] = p
    return out


def pair_up(images: dict[str, Path], labels: dict[str, Path] | None, mapping_for: Callable[[Path], LabelMapping],
            image_dir: Path, label_dir: Path | None) -> Discovery:
    """Pairs in image order; images without labels and labels without images listed apart."""
    if labels is None:
        return Discovery([Pair(p, None, mapping_for(p)) for p in images.values()], image_dir, None)
    pairs, missing = [], []
    for k, img in images.items():
        lab = labels.get(k)
        if lab is None:
            missing.append(img)
        else:
            pairs.append(Pair(img, lab, mapping_for(lab)))
    orphans = [lab for k, lab in labels.items() if k not in images]
    return Discovery(pairs, image_dir, label_dir, missing, orphans)


def split_folder(parent: Path, split: str, canonical: dict[str, str], layout: str) -> Path:
    """parent/<split name>, accepting the dataset's own names and the usual aliases."""
    names = [canonical.get(split, split), split, SPLIT_ALIASES.get(split, split)]
    for name in dict.fromkeys(names):
        if (parent / name).is_dir():
            return parent / name
    if not parent.is_dir():
        raise DataError(f"{parent}: folder not found. Expected {layout}")
    found = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    raise DataError(f"{parent / names[0]}: split folder not found (found: {', '.join(found) or 'nothing'}). "
                    f"Expected {layout}")


def require_files(files: dict[str, Path], folder: Path, what: str, layout: str) -> None:
    if not files:
        raise DataError(f"{folder}: no {what} found. Expected {layout}")


def read_class_names(root: Path) -> tuple[list[str] | None, Path | None, list | None]:
    """(names, file, palette) from ROOT/classes.txt (one name per line) or ROOT/classes.json
    (a list of names, or {"classes": [{"name": ..., "color": [r, g, b]}, ...]}); (None, None, None) if absent."""
    txt, js = root / "classes.txt", root / "classes.json"
    if txt.is_file():
        try:
            names = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{txt}: cannot read the class names ({e}); it must be UTF-8 text, one name per line") \
                from None
        names = [n for n in names if n and not n.startswith("#")]
        if not names:
            raise DataError(f"{txt}: no class names in it; write one name per line, in train-id order")
        return names, txt, None
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{js}: cannot read the class names ({e})") from None
        palette = None
        if isinstance(data, dict):
            data = data.get("classes", data.get("class_names"))
        if isinstance(data, list) and data and all(isinstance(d, dict) and "name" in d for d in data):
            if all("color" in d for d in data):
                palette = [d["color"] for d in data]
            data = [d["name"] for d in data]
        if not (isinstance(data, list) and data and all(isinstance(n, str) for n in data)):
            raise DataError(f"{js}: expected a list of class names or {{\"classes\": [{{\"name\": ..., "
                            f"\"color\": [r, g, b]}}, ...]}}")
        return list(data), js, palette
    return None, None, None


def label_folder(parent: Path, image_split_name: str, split: str, canonical: dict[str, str], layout: str,
                 required: bool) -> Path | None:
    """The label folder matching the image split folder; None (an unlabelled split) unless `required`."""
    if (parent / image_split_name).is_dir():
        return parent / image_split_name
    try:
        return split_folder(parent, split, canonical, layout)
    except DataError:
        if required:
            raise
        return None
