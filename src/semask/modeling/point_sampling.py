"""Point sampling for the mask losses (PointRend style) and the random points it needs.

Mask2Former computes its mask costs and losses on a few thousand points per mask instead of whole
masks. `point_sample` reads values at normalised (x, y) coordinates in [0, 1]^2 with bilinear
interpolation; `uncertain_point_coords` picks most points where the predicted logit is closest to 0
(oversample, keep the most uncertain, add uniform ones).

All random coordinates come from a `PointSampler`, keyed by what they are for ("matcher/final/0",
"criterion_oversample/final", ...), so tests can replay recorded points and so training can make the
points of each image independent of the other images in its batch or process.
"""

from __future__ import annotations

import zlib
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F


def point_sample(x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of `x` (N, C, H, W) at `coords` (N, P, 2), (x, y) in [0, 1] -> (N, C, P).

    Equal to `grid_sample(x, 2 * coords - 1, align_corners=False)` with zero padding.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


class PointSampler:
    """Uniform random coordinates in [0, 1)^2 for named draws.

    `draw(name, rows_per_image, num_points, device)` returns (sum(rows_per_image), num_points, 2), the rows
    of image 0 first; with `image=b` the draw is for batch image b alone (`rows_per_image` has one entry)
    and its key is "<name>/<b>". By default one `torch.rand` call with `generator` (the global generator
    when None). After `set_image_seeds(seeds)`, each image's rows come from its own generator seeded by
    (its seed, name), so an image's points do not depend on which images share its batch or process.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self.image_seeds: list[int] | None = None

    def set_image_seeds(self, seeds: Sequence[int] | None) -> None:
        self.image_seeds = None if seeds is None else [int(s) for s in seeds]

    def draw(self, name: str, rows_per_image: Sequence[int], num_points: int, device: torch.device | str,
             image: int | None = None) -> torch.Tensor:
        rows = [int(r) for r in rows_per_image]
        if self.image_seeds is None:
            return torch.rand(sum(rows), num_points, 2, generator=self.generator, device=device)
        seeds = self.image_seeds if image is None else [self.image_seeds[image]]
        if len(rows) != len(seeds):
            raise ValueError(f"point draw {name!r} for {len(rows)} images, but {len(seeds)} image seeds apply")
        name_hash = zlib.crc32(name.encode())
        parts = []
        for seed, n in zip(seeds, rows):
            gen = torch.Generator(device=device)
            gen.manual_seed((seed * 0x9E3779B1 + name_hash) % (2 ** 63))
            parts.append(torch.rand(n, num_points, 2, generator=gen, device=device))
        return torch.cat(parts) if parts else torch.empty(0, num_points, 2, device=device)


class RecordedPointSampler(PointSampler):
    """Replays recorded draws: a dict "<name>" or "<name>/<image>" -> tensor (e.g. a reference run's points)."""

    def __init__(self, points: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.points = dict(points)

    def draw(self, name: str, rows_per_image: Sequence[int], num_points: int, device: torch.device | str,
             image: int | None = None) -> torch.Tensor:
        key = name if image is None else f"{name}/{image}"
        if key not in self.points:
            raise KeyError(f"no recorded points for {key!r}")
        pts = self.points[key]
        expected = (sum(int(r) for r in rows_per_image), num_points, 2)
        if tuple(pts.shape) != expected:
            raise ValueError(f"recorded points {key!r} have shape {tuple(pts.shape)}, expected {expected}")
        return pts.to(device)


def uncertain_point_coords(logits: torch.Tensor, num_points: int, oversample_ratio: float,
                           importance_sample_ratio: float, sampler: PointSampler, key: str,
                           rows_per_image: Sequence[int]) -> torch.Tensor:
    """Importance-sampled coordinates (M, num_points, 2) for mask logits (M, 1, h, w).

    Draw `num_points * oversample_ratio` uniform points per mask, keep the `importance_sample_ratio`
    fraction whose logits are closest to 0 (uncertainty = -|logit|), then append uniform points.
    Keys: "criterion_oversample/<key>" and "criterion_random/<key>".
    """
    m = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    coords = sampler.draw(f"criterion_oversample/{key}", rows_per_image, num_sampled, logits.device)
    uncertainty = -point_sample(logits, coords.to(logits.dtype))[:, 0].abs()
    idx = torch.topk(uncertainty, k=num_uncertain, dim=1)[1]
    coords = torch.gather(coords, 1, idx.unsqueeze(-1).expand(m, num_uncertain, 2))
    if num_random > 0:
        extra = sampler.draw(f"criterion_random/{key}", rows_per_image, num_random, logits.device)
        coords = torch.cat([coords, extra], dim=1)
    return coords
