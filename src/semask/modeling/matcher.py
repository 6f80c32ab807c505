"""Hungarian matching between predicted masks (queries) and ground-truth masks, per image.

The cost of assigning query q to target t (Mask2Former, computed on `num_points` uniform random points
shared by all queries and targets of the image):
    C = cost_class * (-softmax(logits_q)[label_t])
      + cost_mask  * mean over points of sigmoid-CE(mask_q, mask_t)
      + cost_dice  * (1 - (2 sum sigmoid(mask_q) mask_t + 1) / (sum sigmoid(mask_q) + sum mask_t + 1))
and scipy's linear_sum_assignment picks the cheapest one-to-one assignment. Each cost term is one
matrix product over all queries and targets of the image; there is no loop over queries or points.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import PointSampler, point_sample

Indices = list[tuple[torch.Tensor, torch.Tensor]]


def sigmoid_ce_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid cross-entropy over points for every (prediction, target) pair: (N, P), (M, P) -> (N, M).

    sum_p [t BCE(x, 1) + (1 - t) BCE(x, 0)] = sum_p softplus(x) - x . t, one matrix product.
    """
    num_points = logits.shape[1]
    neg = F.softplus(logits).sum(-1, keepdim=True)
    return (neg - logits @ targets.T) / num_points


def dice_cost(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss (smoothing +1) for every (prediction, target) pair: (N, P), (M, P) -> (N, M)."""
    probs = logits.sigmoid()
    numerator = 2 * (probs @ targets.T)
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """One-to-one matching of queries to targets by class, sigmoid-CE mask and dice costs."""

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544, point_sampler: PointSampler | None = None) -> None:
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("all matching costs are 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        self.point_sampler = point_sampler or PointSampler()

    @torch.no_grad()
    def cost_matrices(self, pred_logits: torch.Tensor, pred_masks: torch.Tensor, targets: Sequence[dict],
                      key: str = "final") -> list[torch.Tensor]:
        """The (Q, n_b) cost matrix of each image b (float32).

        pred_logits (B, Q, K+1), pred_masks (B, Q, h, w); targets[b] = {"labels": (n_b,), "masks": (n_b, H, W)}.
        Points: one draw "matcher/<key>/<b>" of shape (1, num_points, 2) per image.
        """
        bs = pred_logits.shape[0]
        device = pred_masks.device
        coords = torch.cat([self.point_sampler.draw(f"matcher/{key}", [1], self.num_points, device, image=b)
                            for b in range(bs)])
        pred_points = point_sample(pred_masks.float(), coords)  # (B, Q, P): all queries of all images at once
        probs = pred_logits.float().softmax(-1)
        costs = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            tgt_points = point_sample(target["masks"].to(device, torch.float32)[None], coords[b: b + 1])[0]
            cost = self.cost_class * -probs[b][:, labels]
            cost = cost + self.cost_mask * sigmoid_ce_cost(pred_points[b], tgt_points)
            cost = cost + self.cost_dice * dice_cost(pred_points[b], tgt_points)
            costs.append(cost)
        return costs

    @torch.no_grad()
    def forward(self, outputs: dict, targets: Sequence[dict], key: str = "final") -> Indices:
        """[(query indices, target indices)] per image, int64, query indices ascending."""
        indices = []
        for cost in self.cost_matrices(outputs["pred_logits"], outputs["pred_masks"], targets, key):
            # NaN/Inf outputs still get some assignment; the losses then show the problem by name
            c = np.nan_to_num(cost.cpu().numpy(), nan=1e8, posinf=1e8, neginf=-1e8)
            rows, cols = linear_sum_assignment(c)
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices
