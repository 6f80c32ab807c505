"""SeMask Mask2Former training losses.

For each prediction (the final one and, with deep supervision, every auxiliary one, each matched on its
own by the Hungarian matcher):
  loss_ce    cross-entropy of the class logits; unmatched queries target "no object" (weight
             `no_object_weight`); normalised by the sum of the class weights of all queries;
  loss_mask  sigmoid cross-entropy of the matched masks on importance-sampled points, mean over points,
             summed over masks and divided by the number of target masks;
  loss_dice  dice loss (smoothing +1) on the same points, summed over masks / number of target masks;
  loss_cate  SeMask: cross-entropy of the semantic head's logits against the label map (ignore value
             excluded), final prediction only; auxiliary predictions report a zero of shape (1,).
             From "sem_seg_fused" (the head's stride-4 logits, what the model gives in training) the 4x
             upsampling and the cross-entropy are computed band by band (`upsampled_cross_entropy`);
             from "sem_seg_logits" alone (full resolution) directly. Both give the same loss.
Keys: loss_ce, loss_cate, loss_mask, loss_dice, then the same with `_0`, `_1`, ... for the auxiliary
predictions (earliest first). `forward` returns them multiplied by their weights.

Under torch.distributed the three normalisers (number of masks, sum of class weights, number of
labelled pixels) are averaged over the processes, so the gradient of a global batch does not depend on
how it is split between processes. In one process this is exactly the original computation.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .matcher import HungarianMatcher, Indices
from .point_sampling import PointSampler, point_sample, uncertain_point_coords
from .semantic_head import UPSAMPLE_FACTOR
from .upsampled_cross_entropy import upsampled_cross_entropy

LOSS_NAMES = ("loss_ce", "loss_cate", "loss_mask", "loss_dice")


def prediction_keys(num_aux: int) -> list[str]:
    """Point-draw keys of the predictions in loss order: "final", then "0", "1", ... for the auxiliary ones."""
    return ["final"] + [str(i) for i in range(num_aux)]


class SetCriterion(nn.Module):
    """Matching + class / mask / dice losses for every prediction, and SeMask's semantic ("cate") loss."""

    def __init__(self, num_classes: int, matcher: HungarianMatcher, class_weight: float = 2.0,
                 mask_weight: float = 5.0, dice_weight: float = 5.0, cate_weight: float = 0.4,
                 no_object_weight: float = 0.1, num_points: int = 12544, oversample_ratio: float = 3.0,
                 importance_sample_ratio: float = 0.75, deep_supervision: bool = True, ignore_value: int = 255,
                 point_sampler: PointSampler | None = None) -> None:
        super().__init__()
        if not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
        if oversample_ratio < 1.0:
            raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": class_weight, "loss_cate": cate_weight, "loss_mask": mask_weight,
                        "loss_dice": dice_weight}
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.ignore_value = ignore_value
        self.point_sampler = point_sampler or matcher.point_sampler
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def weight_dict(self, num_aux: int) -> dict[str, float]:
        """The weight of every loss key for a model with `num_aux` auxiliary predictions."""
        out = {}
        for suffix in [""] + [f"_{i}" for i in range(num_aux if self.deep_supervision else 0)]:
            out.update({name + suffix: self.weights[name] for name in LOSS_NAMES})
        return out

    def forward(self, outputs: dict, targets: Sequence[dict], label_maps: torch.Tensor | None = None) -> dict:
        """Weighted losses (see the module docstring). `targets`: per image {"labels", "masks"};
        `label_maps` (B, H, W) for the cate loss (needed when outputs hold "sem_seg_logits")."""
        losses = self.unweighted(outputs, targets, label_maps)
        num_aux = len(outputs.get("aux_outputs", ())) if self.deep_supervision else 0
        weights = self.weight_dict(num_aux)
        return {k: v * weights[k] for k, v in losses.items()}

    def unweighted(self, outputs: dict, targets: Sequence[dict], label_maps: torch.Tensor | None = None,
                   indices_out: dict[str, Indices] | None = None) -> dict:
        """The loss terms before weighting, in key order. `indices_out` (optional) receives the matching of
        every prediction ("final", "0", "1", ...)."""
        aux = list(outputs.get("aux_outputs", ())) if self.deep_supervision else []
        device = outputs["pred_logits"].device
        counts = [int(t["labels"].numel()) for t in targets]
        bs, num_queries = outputs["pred_logits"].shape[:2]
        if len(targets) != bs:
            raise ValueError(f"{len(targets)} targets for a batch of {bs}")
        matched = sum(min(n, num_queries) for n in counts)
        normalisers = [float(sum(counts)), matched + self.no_object_weight * (bs * num_queries - matched), 0.0]
        sem_logits = outputs.get("sem_seg_fused")
        banded = sem_logits is not None
        if not banded:
            sem_logits = outputs.get("sem_seg_logits")
        if sem_logits is not None:
            if label_maps is None:
                raise ValueError("outputs have semantic logits: pass the label maps for the cate loss")
            size = sem_logits.shape[-2:]
            if banded:
                size = (size[0] * UPSAMPLE_FACTOR, size[1] * UPSAMPLE_FACTOR)
            label_maps = self._fit_label_maps(label_maps.to(device), size)
            normalisers[2] = float((label_maps != self.ignore_value).sum())
        num_masks, ce_norm, cate_norm = self._average_over_workers(normalisers, device)
        num_masks = max(num_masks, 1.0)

        losses: dict[str, torch.Tensor] = {}
        predictions = [("final", "", outputs)] + [(str(i), f"_{i}", a) for i, a in enumerate(aux)]
        for key, suffix, pred in predictions:
            indices = self.matcher(pred, targets, key)
            if indices_out is not None:
                indices_out[key] = indices
            losses["loss_ce" + suffix] = self.loss_labels(pred["pred_logits"], targets, indices, ce_norm)
            if key == "final" and sem_logits is not None:
                losses["loss_cate"] = self.loss_cate(sem_logits, label_maps, cate_norm, banded)
            else:
                losses["loss_cate" + suffix] = torch.zeros(1, device=device)
            mask_loss, dice_loss = self.loss_masks(pred["pred_masks"], targets, indices, num_masks, key)
            losses["loss_mask" + suffix] = mask_loss
            losses["loss_dice" + suffix] = dice_loss
        return losses

    # ------------------------------------------------------------------ terms

    def loss_labels(self, pred_logits: torch.Tensor, targets: Sequence[dict], indices: Indices,
                    normaliser: float) -> torch.Tensor:
        """Class cross-entropy, "no object" for unmatched queries; sum of weighted terms / `normaliser`."""
        logits = pred_logits.float()
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        batch_idx, src_idx = _source_index(indices)
        if batch_idx.numel():
            labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
            target_classes[batch_idx.to(logits.device), src_idx.to(logits.device)] = labels
        weight = self.empty_weight.to(logits.device)
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, weight=weight, reduction="sum")
        return loss / normaliser

    def loss_masks(self, pred_masks: torch.Tensor, targets: Sequence[dict], indices: Indices,
                   num_masks: float, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Sigmoid-CE and dice losses of the matched masks on importance-sampled points.

        All matched masks of the batch go through one point-sampling call each for coordinates, target
        values and predicted logits.
        """
        batch_idx, src_idx = _source_index(indices)
        if batch_idx.numel() == 0:
            zero = pred_masks.sum() * 0.0
            return zero, zero.clone()
        device = pred_masks.device
        src = pred_masks[batch_idx.to(device), src_idx.to(device)].float()[:, None]  # (M, 1, h, w)
        tgt = torch.cat([t["masks"][j.to(t["masks"].device)] for t, (_, j) in zip(targets, indices)])
        tgt = tgt.to(device, torch.float32)[:, None]                                   # (M, 1, H, W)
        rows = [int(i.numel()) for i, _ in indices]
        with torch.no_grad():
            coords = uncertain_point_coords(src, self.num_points, self.oversample_ratio,
                                            self.importance_sample_ratio, self.point_sampler, key, rows)
            point_labels = point_sample(tgt, coords)[:, 0]
        point_logits = point_sample(src, coords)[:, 0]
        mask_loss = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none")
        mask_loss = mask_loss.mean(1).sum() / num_masks
        probs = point_logits.sigmoid()
        numerator = 2 * (probs * point_labels).sum(-1)
        denominator = probs.sum(-1) + point_labels.sum(-1)
        dice_loss = (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks
        return mask_loss, dice_loss

    def loss_cate(self, sem_logits: torch.Tensor, label_maps: torch.Tensor, normaliser: float,
                  upsample: bool = False) -> torch.Tensor:
        """Cross-entropy of the semantic head's logits (B, K, H, W) against the label maps (ignore excluded).
        upsample=True: `sem_logits` are the stride-4 logits (B, K, H / 4, W / 4), upsampled in bands."""
        if upsample:
            loss = upsampled_cross_entropy(sem_logits, label_maps, self.ignore_value)
        else:
            loss = F.cross_entropy(sem_logits.float(), label_maps, ignore_index=self.ignore_value, reduction="sum")
        return loss / max(normaliser, 1.0)

    # ------------------------------------------------------------------ helpers

    def _fit_label_maps(self, label_maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Label maps padded with the ignore value to the logits' (padded) size."""
        h, w = int(size[0]), int(size[1])
        lh, lw = label_maps.shape[-2:]
        if lh > h or lw > w:
            raise ValueError(f"label maps {lh}x{lw} are larger than the semantic logits {h}x{w}; "
                             "pad the images and the labels to the same size")
        if (lh, lw) != (h, w):
            label_maps = F.pad(label_maps, (0, w - lw, 0, h - lh), value=self.ignore_value)
        return label_maps.long()

    @staticmethod
    def _average_over_workers(values: list[float], device: torch.device) -> list[float]:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
            dist.all_reduce(t)
            return (t / dist.get_world_size()).tolist()
        return values


def _source_index(indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, query index) of every matched query, images in order."""
    if not indices:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


def build_criterion(cfg, num_classes: int | None = None, point_sampler: PointSampler | None = None,
                    ignore_value: int | None = None) -> SetCriterion:
    """A SetCriterion (with its matcher) from a Config (or its `loss` section plus `num_classes`)."""
    loss = getattr(cfg, "loss", cfg)
    if num_classes is None:
        num_classes = cfg.model.num_classes
    if ignore_value is None:
        ignore_value = cfg.data.ignore_value if hasattr(cfg, "data") else 255
    sampler = point_sampler or PointSampler()
    matcher = HungarianMatcher(loss.class_weight, loss.mask_weight, loss.dice_weight, loss.num_points, sampler)
    return SetCriterion(num_classes, matcher, class_weight=loss.class_weight, mask_weight=loss.mask_weight,
                        dice_weight=loss.dice_weight, cate_weight=loss.cate_weight,
                        no_object_weight=loss.no_object_weight, num_points=loss.num_points,
                        oversample_ratio=loss.oversample_ratio, importance_sample_ratio=loss.importance_sample_ratio,
                        deep_supervision=loss.deep_supervision, ignore_value=ignore_value, point_sampler=sampler)
