"""Test-time geometry shared by prediction and evaluation: detectron2's ResizeShortestEdge rule."""

from __future__ import annotations

import numpy as np
from PIL import Image


def shortest_edge_size(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) with the shorter side at `short_edge` and the longer at most `max_size` (detectron2)."""
    scale = short_edge / min(h, w)
    if h < w:
        new_h, new_w = short_edge, scale * w
    else:
        new_h, new_w = scale * h, short_edge
    if max(new_h, new_w) > max_size:
        s = max_size / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    return int(new_h + 0.5), int(new_w + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (H, W, 3) resized to (h, w) with PIL bilinear, as detectron2's ResizeTransform does."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Label map resized to (h, w) with nearest neighbour (labels are never interpolated)."""
    h, w = size
    if label.shape[:2] == (h, w):
        return label
    if label.max(initial=0) < 256 and label.min(initial=0) >= 0:
        out = Image.fromarray(label.astype(np.uint8)).resize((w, h), Image.NEAREST)
        return np.asarray(out).astype(label.dtype)
    out = Image.fromarray(label.astype(np.int32)).resize((w, h), Image.NEAREST)
    return np.asarray(out).astype(label.dtype)
