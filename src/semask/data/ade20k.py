"""ADE20K (ADEChallengeData2016 layout): images/{training,validation}/*.jpg with
annotations/{training,validation}/*.png; stored 0 ("other") -> ignore 255, k -> k-1.

ROOT/classes.txt (or classes.json), when present, replaces the 150 ADE20K names: that is how other
data in this layout (e.g. `semask make-synthetic`) names its own classes.
"""

from __future__ import annotations

from pathlib import Path

from ..io import IMAGE_EXTENSIONS
from .labels import ade20k_mapping
from .layout import LABEL_EXTENSIONS, Discovery, keyed, list_files, label_folder, pair_up, require_files, split_folder

NAME = "ade20k"
NUM_CLASSES = 150
SPLITS = {"train": "training", "val": "validation", "test": "testing"}
LAYOUT = ("the ADE20K layout (ADEChallengeData2016): ROOT/images/{training,validation}/*.jpg and "
          "ROOT/annotations/{training,validation}/*.png")


def discover(root: Path, split: str, num_classes: int = NUM_CLASSES) -> Discovery:
    """Pairs of one split. A missing annotations folder means an unlabelled split (except for training)."""
    image_dir = split_folder(root / "images", split, SPLITS, LAYOUT)
    images = keyed(list_files(image_dir, IMAGE_EXTENSIONS), image_dir, lambda p: p.stem)
    require_files(images, image_dir, "images", LAYOUT)
    mapping = ade20k_mapping(num_classes)
    label_dir = label_folder(root / "annotations", image_dir.name, split, SPLITS, LAYOUT,
                             required=image_dir.name == "training")
    if label_dir is None:
        return pair_up(images, None, lambda p: mapping, image_dir, None)
    labels = keyed(list_files(label_dir, LABEL_EXTENSIONS), label_dir, lambda p: p.stem)
    return pair_up(images, labels, lambda p: mapping, image_dir, label_dir)
