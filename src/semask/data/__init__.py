"""Datasets, synthetic scenes, training transforms and loaders.

    from semask.data import build_dataset
    ds = build_dataset(cfg, "train")            # ADE20K, Cityscapes or a folder, as cfg.data.dataset says
    sample = ds[0]                              # Sample(image uint8 HxWx3, label int64 HxW, path, ...)

Training: `semask.data.transforms.TrainTransform` and `semask.data.loader.build_train_loader`;
synthetic scenes: `semask.data.synthetic.make_synthetic_dataset`. See docs/data.md.
"""

from __future__ import annotations

from .errors import DataError
from .build import build_dataset
from .dataset import Sample, SegmentationDataset

__all__ = ["DataError", "Sample", "SegmentationDataset", "build_dataset"]
