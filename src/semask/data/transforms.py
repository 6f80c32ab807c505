"""Training augmentation, as Mask2Former's MaskFormerSemanticDatasetMapper does it.

In order: resize the shortest edge to a random choice of `min_size_train` (longest edge at most
`max_size_train`; image bilinear, label nearest), random crop of `crop_size` with the single-category
area constraint, SSD-style photometric distortion, horizontal flip with probability 1/2, then padding
(image 128, label 255) at the bottom/right to a multiple of `size_divisibility` when it is > 0.
Every random choice comes from the `rng` argument, so a seed fixes the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import ConfigError, DataConfig
from ..preprocess import resize_image, shortest_edge_size
from .labels import IGNORE
from .photometric import PhotometricParams, apply_photometric, sample_photometric

PAD_IMAGE_VALUE = 128
CROP_TRIES = 10


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source index of each output index under torch's 'nearest' rule: floor(dst * (in / out)) in float32."""
    if n_out == n_in:
        return np.arange(n_out)
    scale = np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def resize_label_nearest(label: np.ndarray, size: tuple[int, int],
                         window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Nearest-neighbour resize with torch's 'nearest' rule (src = floor(dst * in / out), float32), optionally
    returning only the crop `window` (y0, x0, h, w) of the resized map (the same values, less work).

    This is what the original pipeline does to label maps (detectron2 reads them as float and resizes
    non-uint8 arrays with torch's F.interpolate(mode="nearest")); labels are never interpolated.
    """
    h, w = size
    if (label.shape[0], label.shape[1]) == (h, w) and window is None:
        return label
    ys, xs = _nearest_index(h, label.shape[0]), _nearest_index(w, label.shape[1])
    if window is not None:
        y0, x0, ch, cw = window
        ys, xs = ys[y0: y0 + ch], xs[x0: x0 + cw]
    return label[ys[:, None], xs[None, :]]


def crop_window(label: np.ndarray | tuple[int, int], crop_size: tuple[int, int], single_category_max_area: float,
                rng: np.random.Generator, ignore_value: int = IGNORE) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of a random crop; with a max area < 1, up to 10 tries for a window in which no single
    category (ignore excluded) covers that fraction of the labelled pixels (detectron2's
    RandomCrop_CategoryAreaConstraint); the last try is kept when none qualifies. Without the constraint
    only the shape of `label` is needed (a (H, W) tuple will do)."""
    H, W = (label if isinstance(label, tuple) else label.shape)[:2]
    ch, cw = min(crop_size[0], H), min(crop_size[1], W)
    tries = 1 if single_category_max_area >= 1.0 else CROP_TRIES
    if tries > 1 and isinstance(label, tuple):
        raise ValueError("the category-area constraint needs the label map, not only its shape")
    y0 = x0 = 0
    for _ in range(tries):
        y0 = int(rng.integers(H - ch + 1))
        x0 = int(rng.integers(W - cw + 1))
        if tries == 1:
            break
        values, counts = np.unique(label[y0: y0 + ch, x0: x0 + cw], return_counts=True)  # type: ignore[index]
        counts = counts[values != ignore_value]
        if len(counts) > 1 and counts.max() < counts.sum() * single_category_max_area:
            break
    return y0, x0, ch, cw


def pad_to_multiple(image: np.ndarray, label: np.ndarray, divisor: int, image_value: int = PAD_IMAGE_VALUE,
                    label_value: int = IGNORE) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to a multiple of `divisor` (image with 128, label with 255)."""
    h, w = label.shape[:2]
    ph, pw = -h % divisor, -w % divisor
    if ph == 0 and pw == 0:
        return image, label
    image = np.pad(image, ((0, ph), (0, pw), (0, 0)), constant_values=image_value)
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=label_value)
    return image, label


@dataclass(frozen=True)
class AugmentParams:
    """The random choices of one call, for inspection and tests."""
    resized: tuple[int, int]                 # (h, w) after the shortest-edge resize
    crop: tuple[int, int, int, int] | None   # (y0, x0, h, w) in the resized image
    photometric: PhotometricParams | None
    flip: bool


@dataclass
class Augmented:
    image: np.ndarray   # uint8 (H, W, 3), before padding
    label: np.ndarray   # int64 (H, W), before padding
    params: AugmentParams


class TrainTransform:
    """Mask2Former's training augmentation for one (image, label) pair; see the module docstring."""

    def __init__(self, data_cfg: DataConfig) -> None:
        if not data_cfg.min_size_train or min(data_cfg.min_size_train) < 1:
            raise ConfigError(f"data.min_size_train needs positive sizes, got {list(data_cfg.min_size_train)}")
        if data_cfg.min_size_train_sampling not in ("choice", "range"):
            raise ConfigError("data.min_size_train_sampling must be 'choice' or 'range', got "
                              f"{data_cfg.min_size_train_sampling!r}")
        if data_cfg.min_size_train_sampling == "range" and len(data_cfg.min_size_train) != 2:
            raise ConfigError("data.min_size_train needs [min, max] with min_size_train_sampling=range")
        if data_cfg.crop_enabled and (len(data_cfg.crop_size) != 2 or min(data_cfg.crop_size) < 1):
            raise ConfigError(f"data.crop_size needs positive (height, width), got {list(data_cfg.crop_size)}")
        self.min_sizes = tuple(int(s) for s in data_cfg.min_size_train)
        self.sampling = data_cfg.min_size_train_sampling
        self.max_size = int(data_cfg.max_size_train)
        self.crop_size = (int(data_cfg.crop_size[0]), int(data_cfg.crop_size[1])) if data_cfg.crop_enabled else None
        self.single_category_max_area = float(data_cfg.single_category_max_area)
        self.color_aug = bool(data_cfg.color_aug_ssd)
        self.hflip = bool(data_cfg.hflip)
        self.size_divisibility = int(data_cfg.size_divisibility)
        self.ignore_value = int(data_cfg.ignore_value)

    def short_edge(self, rng: np.random.Generator) -> int:
        if self.sampling == "range":
            return int(rng.integers(self.min_sizes[0], self.min_sizes[1] + 1))
        return int(self.min_sizes[int(rng.integers(len(self.min_sizes)))])

    def augment(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Augmented:
        """Resize, crop, photometric distortion and flip (no padding), with the choices made."""
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and label {label.shape[:2]} sizes differ")
        h, w = image.shape[:2]
        size = shortest_edge_size(h, w, self.short_edge(rng), self.max_size)
        image = resize_image(image, size)
        crop = None
        if self.crop_size is None:
            label = resize_label_nearest(label, size)
        elif self.single_category_max_area >= 1.0:  # the window needs only the size: resize just that part
            crop = crop_window(size, self.crop_size, 1.0, rng, self.ignore_value)
            label = resize_label_nearest(label, size, crop)
        else:
            label = resize_label_nearest(label, size)
            crop = crop_window(label, self.crop_size, self.single_category_max_area, rng, self.ignore_value)
            label = label[crop[0]: crop[0] + crop[2], crop[1]: crop[1] + crop[3]]
        if crop is not None:
            y0, x0, ch, cw = crop
            image = image[y0: y0 + ch, x0: x0 + cw]
        photometric = None
        if self.color_aug:
            photometric = sample_photometric(rng)
            image = apply_photometric(np.ascontiguousarray(image), photometric)
        flip = bool(self.hflip and rng.uniform() < 0.5)
        if flip:
            image = image[:, ::-1]
            label = label[:, ::-1]
        return Augmented(np.ascontiguousarray(image), np.ascontiguousarray(label).astype(np.int64, copy=False),
                         AugmentParams(size, crop, photometric, flip))

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(image float32 (3, H, W) in 0..255, label int64 (H, W) with 255 = ignore)."""
        out = self.augment(image, label, rng)
        image, label = out.image, out.label
        if self.size_divisibility > 0:
            image, label = pad_to_multiple(image, label, self.size_divisibility, PAD_IMAGE_VALUE, self.ignore_value)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return image_t, torch.from_numpy(np.ascontiguousarray(label))
