"""Multi-scale + flip test-time augmentation (the original's SemanticSegmentorWithTTA).

For each shortest-edge size s in `min_sizes` the image is resized (shorter side s, longer side at most
`max_size`, PIL bilinear as in evaluation), the model predicts per-class scores resized back to the
original resolution, and with `flip` the horizontally flipped image is predicted too and its scores
flipped back. The result is the mean of all these score maps. Augmentations run one at a time and are
summed into a single (K, H, W) buffer, so memory stays that of one forward pass plus one score map.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ..io import image_to_tensor
from ..preprocess import resize_image, shortest_edge_size


class TTAPredictor:
    """Averages a model's per-class scores over resized and horizontally flipped copies of an image."""

    def __init__(self, model: torch.nn.Module, min_sizes: Sequence[int], max_size: int, flip: bool = True) -> None:
        if not min_sizes:
            raise ValueError("TTA needs at least one test size (test.aug_min_sizes)")
        if any(int(s) < 1 for s in min_sizes) or max_size < 1:
            raise ValueError(f"TTA sizes must be positive, got min_sizes={list(min_sizes)} max_size={max_size}")
        self.model = model
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip = bool(flip)

    @classmethod
    def from_config(cls, model: torch.nn.Module, cfg) -> "TTAPredictor":
        """Sizes and flip from `cfg.test` (aug_min_sizes, aug_max_size, aug_flip)."""
        return cls(model, cfg.test.aug_min_sizes, cfg.test.aug_max_size, cfg.test.aug_flip)

    def augmentations(self) -> list[tuple[int, bool]]:
        """(shortest edge, flipped) in the order they run: each size, then its flip."""
        return [(s, f) for s in self.min_sizes for f in ((False, True) if self.flip else (False,))]

    def augmented_inputs(self, image: np.ndarray) -> Iterator[tuple[torch.Tensor, bool]]:
        """The (3, h, w) float input of each augmentation and whether it is flipped."""
        h, w = image.shape[:2]
        for size, flipped in self.augmentations():
            resized = resize_image(image, shortest_edge_size(h, w, size, self.max_size))
            tensor = image_to_tensor(resized)
            yield (tensor.flip(-1) if flipped else tensor), flipped

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def scores(self, image: np.ndarray) -> torch.Tensor:
        """Mean per-class scores (K, H, W) at the image's resolution, on the model's device."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
        size = (int(image.shape[0]), int(image.shape[1]))
        device = self.device
        total: torch.Tensor | None = None
        count = 0
        for tensor, flipped in self.augmented_inputs(image):
            s = self.model.predict([tensor.to(device)], output_sizes=[size])[0]
            if flipped:
                s = s.flip(-1)
            if total is None:
                total = s.float().clone()
            else:
                total += s.float()
            count += 1
            del s
        assert total is not None
        return total.div_(count)
