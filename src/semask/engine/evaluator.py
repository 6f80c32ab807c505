"""Dataset evaluation: predictions for every image, a streaming confusion matrix, mIoU and friends.

Test-time pipeline as the original: the image's shorter side is resized to `data.min_size_test`
(longer side at most `data.max_size_test`), the model's per-class scores are resized back to the
original image size and argmaxed; the label's ignore value (255) is not counted. With `tta=True`
the scores come from :class:`semask.engine.tta.TTAPredictor` (multi-scale + flip, `test.aug_*`).

Under torch.distributed every rank predicts its share of the images (every world_size-th one), the
confusion matrices and image counts are summed with all_reduce, and every rank returns the same result.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..io import image_to_tensor
from ..metrics import ConfusionMatrix
from ..preprocess import resize_image, shortest_edge_size

log = logging.getLogger("semask.eval")


def _data_error(message: str) -> Exception:
    try:
        from ..data import DataError
    except ImportError:
        return ValueError(message)
    return DataError(message)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


class EvalItems(Dataset):
    """The samples one process evaluates, with the test-time resize done where the data is loaded
    (so DataLoader workers can do it). Items: (index, model input (3, h, w) or the raw image for TTA,
    label, image path, label path), or None for a bad pair skipped under data.on_error=skip (evaluation
    never substitutes another image for it)."""

    def __init__(self, dataset, indices: list[int], min_size: int, max_size: int, raw: bool) -> None:
        self.dataset = dataset
        self.indices = indices
        self.min_size = min_size
        self.max_size = max_size
        self.raw = raw

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, Any, np.ndarray, Path, Path] | None:
        index = self.indices[i]
        try_load = getattr(self.dataset, "try_load", None)
        sample = try_load(index) if try_load is not None else self.dataset.load(index)
        if sample is None:
            return None
        image, label = sample.image, sample.label
        if label is None:
            raise _data_error(f"{sample.path}: this split has no ground-truth labels, so it cannot be evaluated; "
                              "choose a split with annotations (e.g. --split val)")
        if label.shape != image.shape[:2]:
            raise _data_error(f"{sample.label_path}: label size {label.shape[1]}x{label.shape[0]} differs from "
                              f"the image size {image.shape[1]}x{image.shape[0]} of {sample.path}")
        if not self.raw:
            h, w = image.shape[:2]
            image = image_to_tensor(resize_image(image, shortest_edge_size(h, w, self.min_size, self.max_size)))
        return index, image, label, Path(sample.path), Path(sample.label_path or sample.path)


def _first(batch: list) -> Any:
    return batch[0]


@torch.inference_mode()
def evaluate(model: torch.nn.Module, dataset, cfg, tta: bool = False, device: str | torch.device | None = None,
             progress: bool = False, save_dir: str | Path | None = None, num_workers: int | None = None) -> dict:
    """Evaluate `model` on `dataset` (a semask.data SegmentationDataset); metrics in percent.

    Returns {"mIoU", "fwIoU", "mACC", "pACC", "per_class": {name: {"IoU", "ACC"}}, "num_images",
    "skipped" (bad pairs left out under data.on_error=skip), "num_pixels", "num_classes_present", "tta",
    "seconds"}.
    `device`: where to run (default: where the model is; the model is moved there). `save_dir`: also
    write each prediction as `<stem>.png` (palette PNG of class indices). `num_workers`: DataLoader
    workers for reading images (default 0 on CPU, up to 4 on GPU). The model is left in the
    train/eval mode it was in.
    """
    net = unwrap(model)
    if device is not None:
        net.to(device)
    device = next(net.parameters()).device
    num_classes = int(getattr(net, "num_classes", cfg.model.num_classes))
    if int(dataset.num_classes) != num_classes:
        raise _data_error(f"the dataset has {dataset.num_classes} classes but the model predicts {num_classes} "
                          "(model.num_classes); evaluate with a config that fits the dataset")
    rank, world = _dist()
    indices = list(range(rank, len(dataset), world))
    items = EvalItems(dataset, indices, cfg.data.min_size_test, cfg.data.max_size_test, raw=tta)
    if num_workers is None:
        num_workers = min(int(cfg.data.num_workers), 4) if device.type == "cuda" else 0
    loader = DataLoader(items, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=_first,
                        pin_memory=device.type == "cuda")
    tta_predictor = None
    if tta:
        from .tta import TTAPredictor

        tta_predictor = TTAPredictor.from_config(net, cfg)
    out_dir = Path(save_dir) if save_dir is not None else None
    palette = None
    if out_dir is not None:
        from ..visualize import palette_for

        out_dir.mkdir(parents=True, exist_ok=True)
        palette = palette_for(num_classes, getattr(dataset, "palette", None))

    conf = ConfusionMatrix(num_classes, int(getattr(dataset, "ignore_value", cfg.data.ignore_value)), device)
    was_training = net.training
    net.eval()
    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(items), unit="img", desc="eval" + (" (ms+flip)" if tta else ""), dynamic_ncols=True)
    start = time.perf_counter()
    skipped = 0
    try:
        for item in loader:
            if item is None:
                skipped += 1
                if bar is not None:
                    bar.update(1)
                continue
            _index, image, label, path, label_path = item
            size = (int(label.shape[0]), int(label.shape[1]))
            if tta_predictor is not None:
                pred = tta_predictor.scores(image).argmax(0)
            else:  # the argmax of the scores, computed in bands without holding the (K, H, W) scores
                pred = net.predict_labels([image.to(device, non_blocking=True)], output_sizes=[size])[0]
            try:
                conf.update(pred, torch.from_numpy(label))
            except ValueError as e:
                raise _data_error(f"{label_path}: {e}") from None
            if out_dir is not None:
                from ..visualize import save_label_png

                save_label_png(pred.to(torch.int32).cpu().numpy(), out_dir / f"{path.stem}.png", palette)
            if bar is not None:
                bar.update(1)
    finally:
        net.train(was_training)
        if bar is not None:
            bar.close()
    counts = torch.tensor([len(items) - skipped, skipped], dtype=torch.int64, device=device)
    if world > 1:
        conf.all_reduce()
        torch.distributed.all_reduce(counts)
    seconds = time.perf_counter() - start
    num_images, skipped = (int(v) for v in counts.tolist())
    if skipped and rank == 0:
        log.warning("%d image(s) could not be read and were left out of the evaluation", skipped)
    result = conf.compute(getattr(dataset, "class_names", None))
    result.update({"num_images": num_images, "skipped": skipped, "tta": bool(tta), "seconds": round(seconds, 3)})
    return result
