"""Cityscapes: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png with gtFine/{train,val}/<city>/
*_gtFine_labelIds.png, mapped to the 19 train ids (other ids ignored) by a lookup table; a
*_gtFine_labelTrainIds.png beside it (written by the official conversion script) is used when present.
"""

from __future__ import annotations

from pathlib import Path

from .labels import LabelMapping, cityscapes_label_ids_mapping, cityscapes_train_ids_mapping
from .layout import Discovery, keyed, list_files, label_folder, pair_up, require_files, split_folder

NAME = "cityscapes"
NUM_CLASSES = 19
SPLITS = {"training": "train", "validation": "val"}
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LAYOUT = ("the Cityscapes layout: ROOT/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
          "ROOT/gtFine/{train,val}/<city>/*_gtFine_labelIds.png")


def _strip(suffix: str):
    return lambda p: p.name[: -len(suffix)] if p.name.endswith(suffix) else None


def discover(root: Path, split: str) -> Discovery:
    image_dir = split_folder(root / "leftImg8bit", split, SPLITS, LAYOUT)
    images = keyed(list_files(image_dir, (".png",)), image_dir, _strip(IMAGE_SUFFIX))
    require_files(images, image_dir, f"*{IMAGE_SUFFIX} images", LAYOUT)
    label_dir = label_folder(root / "gtFine", image_dir.name, split, SPLITS, LAYOUT,
                             required=image_dir.name == "train")
    if label_dir is None:
        return pair_up(images, None, lambda p: cityscapes_label_ids_mapping(), image_dir, None)
    files = list_files(label_dir, (".png",))
    labels = keyed(files, label_dir, _strip(LABEL_IDS_SUFFIX))
    labels.update(keyed(files, label_dir, _strip(TRAIN_IDS_SUFFIX)))  # train ids win when both exist
    ids, train_ids = cityscapes_label_ids_mapping(), cityscapes_train_ids_mapping()

    def mapping_for(path: Path) -> LabelMapping:
        return train_ids if path.name.endswith(TRAIN_IDS_SUFFIX) else ids

    return pair_up(images, labels, mapping_for, image_dir, label_dir)
