"""A user's own data: ROOT/images/<split>/<name>.<ext> with ROOT/labels/<split>/<name>.png (same
name stem, subfolders allowed) and ROOT/classes.txt (one class name per line, in train-id order).
Label maps hold train ids directly: 0..K-1 for the classes, 255 for pixels to ignore.
"""

from __future__ import annotations

from pathlib import Path

from ..io import IMAGE_EXTENSIONS
from .labels import identity_mapping
from .layout import LABEL_EXTENSIONS, Discovery, keyed, list_files, label_folder, pair_up, require_files, split_folder

NAME = "folder"
SPLITS: dict[str, str] = {}
LAYOUT = ("the folder layout: ROOT/images/<split>/<name>.jpg|png|..., ROOT/labels/<split>/<name>.png "
          "(class index per pixel, 255 = ignore) and ROOT/classes.txt (one class name per line)")


def discover(root: Path, split: str, num_classes: int) -> Discovery:
    image_dir = split_folder(root / "images", split, SPLITS, LAYOUT)
    images = keyed(list_files(image_dir, IMAGE_EXTENSIONS), image_dir, lambda p: p.stem)
    require_files(images, image_dir, "images", LAYOUT)
    mapping = identity_mapping(num_classes)
    label_dir = label_folder(root / "labels", image_dir.name, split, SPLITS, LAYOUT,
                             required=image_dir.name in ("train", "training"))
    if label_dir is None:
        return pair_up(images, None, lambda p: mapping, image_dir, None)
    labels = keyed(list_files(label_dir, LABEL_EXTENSIONS), label_dir, lambda p: p.stem)
    return pair_up(images, labels, lambda p: mapping, image_dir, label_dir)
