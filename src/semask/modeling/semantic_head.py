"""SeMask semantic head: fuses the per-stage semantic maps into one full-resolution class map.

It has no parameters. Each coarser map gets log2(stride / 4) successive 2x bilinear upsamplings
(align_corners=True), is resized to the stride-4 map and added to it (`fuse`); the sum is upsampled 4x
(`upsample`, bilinear, align_corners=True). Its output is supervised by the "cate" cross-entropy during
training; inference does not use it. Training keeps only the stride-4 sum: the loss upsamples it band
by band (`upsampled_cross_entropy.py`), which never holds the full-resolution map.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLE_FACTOR = 4


class SemanticHead(nn.Module):
    """Parameter-free fusion of semantic maps at strides `feature_strides` (finest first)."""

    def __init__(self, feature_strides: Sequence[int] = (4, 8, 16, 32)) -> None:
        super().__init__()
        strides = list(feature_strides)
        if min(strides) != strides[0]:
            raise ValueError("feature_strides must start with the finest stride")
        self.feature_strides = strides
        self.num_upsamplings = [(s // strides[0]).bit_length() - 1 for s in strides]

    def fuse(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """maps: (B, K, H_i, W_i) finest first -> their sum at the finest map's size (B, K, H_0, W_0)."""
        output = maps[0]
        for x, n_up in zip(maps[1:], self.num_upsamplings[1:]):
            for _ in range(n_up):
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
            output = output + F.interpolate(x, size=output.shape[2:], mode="bilinear", align_corners=True)
        return output

    @staticmethod
    def upsample(fused: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) -> (B, K, 4h, 4w), bilinear with align_corners=True: the head's final step."""
        h, w = fused.shape[2:]
        return F.interpolate(fused, size=(h * UPSAMPLE_FACTOR, w * UPSAMPLE_FACTOR), mode="bilinear",
                             align_corners=True)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """maps: (B, K, H_i, W_i) finest first -> (B, K, 4 * H_0, 4 * W_0)."""
        return self.upsample(self.fuse(maps))
