"""Semantic segmentation metrics from a streaming confusion matrix (detectron2's SemSegEvaluator rules).

The confusion matrix counts pixels as `matrix[gt, pred]` (rows: ground truth, columns: prediction);
pixels whose ground truth is the ignore value are not counted. It is accumulated with one `bincount`
per image on the device where the predictions are, and summed across processes with `all_reduce`.

From it (all in percent):
- IoU_c = TP_c / (GT_c + Pred_c - TP_c) and ACC_c = TP_c / GT_c per class; a class with no ground-truth
  pixels gets NaN and is left out of the means (detectron2's convention),
- mIoU and mACC: means over the classes present in the ground truth,
- fwIoU: IoU weighted by each class's share of the ground-truth pixels,
- pACC: correctly labelled pixels / labelled pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


class ConfusionMatrix:
    """A (K, K) int64 pixel count matrix `[gt, pred]`, updated image by image."""

    def __init__(self, num_classes: int, ignore_value: int = 255, device: str | torch.device = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor | np.ndarray, gt: torch.Tensor | np.ndarray) -> None:
        """Add one prediction (class indices) and its ground truth (class indices, ignore value allowed).

        Raises ValueError when the shapes differ, or when the ground truth or the prediction holds a
        value outside 0..K-1 that is not the ignore value.
        """
        device = self.matrix.device
        pred = torch.as_tensor(pred, device=device).long()
        gt = torch.as_tensor(gt, device=device).long()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from ground-truth shape {tuple(gt.shape)}")
        k = self.num_classes
        valid = gt != self.ignore_value
        gt, pred = gt[valid], pred[valid]
        if gt.numel() == 0:
            return
        bad_gt = (gt < 0) | (gt >= k)
        if bool(bad_gt.any()):
            values = torch.unique(gt[bad_gt])[:5].tolist()
            raise ValueError(f"ground-truth values {values} are outside 0..{k - 1} and not the ignore value "
                             f"{self.ignore_value}")
        if bool(((pred < 0) | (pred >= k)).any()):
            raise ValueError(f"predicted class indices must be within 0..{k - 1}")
        self.matrix += torch.bincount(gt * k + pred, minlength=k * k).view(k, k)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes (no-op unless torch.distributed is initialised)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix, op=torch.distributed.ReduceOp.SUM)

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self, class_names: Sequence[str] | None = None) -> dict:
        """The metrics of :func:`segmentation_metrics` for the counts so far."""
        return segmentation_metrics(self.matrix, class_names)


def _percent(x: float) -> float:
    return float(100.0 * x) if not math.isnan(x) else math.nan


def unique_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """One distinct name per class: the given names (duplicates suffixed with their index) or 'class_<i>'."""
    if class_names is None:
        return [f"class_{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    names: list[str] = []
    seen: set[str] = set()
    for i, n in enumerate(class_names):
        name = str(n) if str(n) not in seen else f"{n}_{i}"
        seen.add(name)
        names.append(name)
    return names


def segmentation_metrics(matrix: torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, fwIoU, mACC, pACC (percent) and per-class IoU / ACC from a `[gt, pred]` confusion matrix.

    Returns {"mIoU", "fwIoU", "mACC", "pACC", "per_class": {name: {"IoU", "ACC"}}, "num_pixels",
    "num_classes_present"}. Classes absent from the ground truth have NaN IoU and ACC and do not enter
    the means; with no labelled pixel at all every value is NaN.
    """
    conf = torch.as_tensor(matrix).detach().cpu().to(torch.float64).numpy()
    k = conf.shape[0]
    if conf.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got shape {conf.shape}")
    names = unique_class_names(class_names, k)
    tp = np.diag(conf)
    pos_gt = conf.sum(axis=1)
    pos_pred = conf.sum(axis=0)
    total = pos_gt.sum()
    present = pos_gt > 0
    acc = np.full(k, np.nan)
    iou = np.full(k, np.nan)
    acc[present] = tp[present] / pos_gt[present]
    union = pos_gt + pos_pred - tp
    iou[present] = tp[present] / union[present]  # union >= GT > 0 for present classes
    if present.any():
        miou = float(iou[present].mean())
        macc = float(acc[present].mean())
        fwiou = float((iou[present] * pos_gt[present] / total).sum())
        pacc = float(tp.sum() / total)
    else:
        miou = macc = fwiou = pacc = math.nan
    return {
        "mIoU": _percent(miou),
        "fwIoU": _percent(fwiou),
        "mACC": _percent(macc),
        "pACC": _percent(pacc),
        "per_class": {n: {"IoU": _percent(float(i)), "ACC": _percent(float(a))} for n, i, a in zip(names, iou, acc)},
        "num_pixels": int(total),
        "num_classes_present": int(present.sum()),
    }


def json_safe(obj):
    """NaN -> None recursively, so that metrics dump as strict JSON (null for classes without pixels)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def format_table(metrics: dict, sort_by: str | None = None) -> str:
    """A plain-text per-class table (IoU and ACC in percent, '-' for classes without ground truth) and
    a summary line; `sort_by="IoU"` orders classes by IoU, best first."""
    rows = list(metrics["per_class"].items())
    if sort_by:
        rows.sort(key=lambda r: -math.inf if math.isnan(r[1][sort_by]) else r[1][sort_by], reverse=True)
    width = max([len("class")] + [len(n) for n, _ in rows])

    def fmt(v: float) -> str:
        return f"{v:7.2f}" if not math.isnan(v) else f"{'-':>7}"

    lines = [f"{'class':<{width}}  {'IoU':>7}  {'ACC':>7}", f"{'-' * width}  {'-' * 7}  {'-' * 7}"]
    lines += [f"{n:<{width}}  {fmt(v['IoU'])}  {fmt(v['ACC'])}" for n, v in rows]
    lines.append(f"{'-' * width}  {'-' * 7}  {'-' * 7}")
    lines.append("  ".join(f"{k} {fmt(metrics[k]).strip()}" for k in ("mIoU", "fwIoU", "mACC", "pACC")))
    return "\n".join(lines)
