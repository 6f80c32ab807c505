"""`build_dataset(cfg, split)`: the dataset a config names, checked against the model's class count."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import Config
from ..visualize import default_palette
from . import ade20k, cityscapes, folder
from .dataset import SegmentationDataset
from .errors import DataError
from .layout import Discovery, read_class_names
from .meta import dataset_meta

log = logging.getLogger("semask.data")
DATASETS = ("ade20k", "cityscapes", "folder")


def _root(cfg: Config, root: str | Path | None) -> Path:
    value = root if root not in (None, "") else cfg.data.root
    if not value:
        raise DataError("no dataset folder given: pass --data ROOT (or set data.root)")
    path = Path(value).expanduser()
    if not path.exists():
        raise DataError(f"{path}: dataset folder not found")
    if not path.is_dir():
        raise DataError(f"{path}: expected a dataset folder, got a file")
    return path


def _classes(cfg: Config, root: Path, kind: str) -> tuple[list[str], np.ndarray, str]:
    """(names, palette, where they came from) for the dataset at `root`."""
    names, source, palette = read_class_names(root)
    where = str(source) if source else ""
    if names is None:
        if kind == "folder":
            if cfg.data.class_names:
                names, where = list(cfg.data.class_names), "data.class_names"
            else:
                raise DataError(f"{root / 'classes.txt'}: file not found; a folder dataset needs it (one class "
                                f"name per line, in train-id order) or data.class_names in the config")
        else:
            meta = dataset_meta(kind, ade20k.NUM_CLASSES if kind == "ade20k" else cityscapes.NUM_CLASSES)
            assert meta is not None
            names, palette, where = list(meta.class_names), meta.palette, f"the {kind} class list"
    if kind == "cityscapes" and len(names) != cityscapes.NUM_CLASSES:
        raise DataError(f"{source}: Cityscapes has {cityscapes.NUM_CLASSES} train ids, the file names {len(names)} "
                        "classes; remove it or use data.dataset=folder")
    if palette is None:
        meta = dataset_meta(kind, len(names))
        palette = meta.palette if meta is not None and source is None else default_palette(len(names))
    palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(palette) != len(names):
        raise DataError(f"{source}: {len(names)} class names but {len(palette)} colours")
    if cfg.data.class_names and len(cfg.data.class_names) == len(names):
        names = list(cfg.data.class_names)  # names from the config are for display only
    return names, palette, where


def discover(cfg: Config, split: str, root: str | Path | None = None) -> tuple[Discovery, list[str], np.ndarray, Path]:
    """Find the pairs of `split` and the class names, without applying any policy (check-data uses this)."""
    kind = cfg.data.dataset.lower()
    if kind not in DATASETS:
        raise DataError(f"data.dataset={cfg.data.dataset!r} is not known; use one of {', '.join(DATASETS)}")
    path = _root(cfg, root)
    names, palette, where = _classes(cfg, path, kind)
    if len(names) != cfg.model.num_classes:
        raise DataError(f"the dataset at {path} has {len(names)} classes ({where}) but model.num_classes is "
                        f"{cfg.model.num_classes}; set model.num_classes={len(names)} (a pretrained model needs "
                        "fine-tuning with a new head for a different class count)")
    if kind == "ade20k":
        found = ade20k.discover(path, split, len(names))
    elif kind == "cityscapes":
        found = cityscapes.discover(path, split)
    else:
        found = folder.discover(path, split, len(names))
    return found, names, palette, path


def build_dataset(cfg: Config, split: str, root: str | Path | None = None) -> SegmentationDataset:
    """The `cfg.data.dataset` dataset ("ade20k" | "cityscapes" | "folder") of `split` ("train", "val" or the
    dataset's own folder name) under `root` (default `cfg.data.root`), with the `cfg.data.on_error` policy."""
    found, names, palette, path = discover(cfg, split, root)
    on_error = cfg.data.on_error
    ds = SegmentationDataset(cfg.data.dataset.lower(), path, split, found.pairs, names, palette, on_error,
                             found.image_dir, found.label_dir)
    if found.missing_labels:
        first = found.missing_labels[0]
        n = len(found.missing_labels)
        if on_error == "raise":
            raise DataError(f"{first}: image has no label map in {found.label_dir}"
                            + (f" (and {n - 1} more image(s) without one)" if n > 1 else "")
                            + "; run `semask check-data` to list them, or set data.on_error=skip to leave them out")
        for p in found.missing_labels:
            ds.note_skip(p, f"{p}: image has no label map in {found.label_dir}")
    if found.orphan_labels:
        log.warning("%d label map(s) in %s have no image (first: %s); they are not used",
                    len(found.orphan_labels), found.label_dir, found.orphan_labels[0].name)
    if not ds.pairs:
        raise DataError(f"{found.image_dir}: none of the images has a label map in {found.label_dir}")
    return ds
