"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query attends to `n_points` bilinearly sampled locations per head and per level around its
reference point. Sampling uses `grid_sample(align_corners=False, padding_mode="zeros")`, which is the
same bilinear rule (pixel centres at +0.5, zeros outside) as the compiled CUDA kernel of the original
code, so no compiled extension is needed and autograd, CPU, GPU, fp16 and bf16 all work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def ms_deform_attn_sample(value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                          sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Core of deformable attention.

    value: (N, S, M, D) with S = sum(H_l * W_l); sampling_locations: (N, Lq, M, L, P, 2) in [0, 1] as (x, y);
    attention_weights: (N, Lq, M, L, P). Returns (N, Lq, M * D).
    """
    n, _, m, d = value.shape
    _, lq, _, L, p, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # (N, HW, M, D) -> (N*M, D, H, W)
        v = values[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, D, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, L * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights.to(value.dtype)).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (parameter names of the released checkpoints)."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR initialisation: offsets start on a ring around the reference point."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], offset_normalizer: torch.Tensor) -> torch.Tensor:
        """query: (N, Lq, C); reference_points: (N or 1, Lq, L, 2) normalised (x, y); input_flatten: (N, S, C);
        offset_normalizer: (L, 2) = (W_l, H_l). Returns (N, Lq, C)."""
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        value = self.value_proj(input_flatten).view(n, s, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, lq, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = F.softmax(weights, -1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        locations = reference_points[:, :, None, :, None, :] + offsets / offset_normalizer[None, None, None, :, None, :]
        out = ms_deform_attn_sample(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
