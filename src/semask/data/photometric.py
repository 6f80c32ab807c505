"""SSD-style photometric distortion (detectron2's ColorAugSSDTransform, used by Mask2Former).

Random brightness, then contrast / saturation / hue in one of two orders, each applied with
probability 1/2. Saturation and hue work in OpenCV's 8-bit HSV space (H in 0..179); the conversion
is written here in numpy with OpenCV's integer arithmetic, so no OpenCV is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18

_HSV_SHIFT = 12


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's fixed-point reciprocal tables: sdiv[i] = round(255 * 2^12 / i), hdiv[i] = round(180 * 2^12 / 6i)."""
    i = np.arange(1, 256, dtype=np.float64)
    sdiv = np.zeros(256, dtype=np.int32)
    hdiv = np.zeros(256, dtype=np.int32)
    sdiv[1:] = np.rint((255 << _HSV_SHIFT) / i)
    hdiv[1:] = np.rint((180 << _HSV_SHIFT) / (6.0 * i))
    return sdiv, hdiv


_SDIV, _HDIV = _tables()
_HALF = 1 << (_HSV_SHIFT - 1)
# (r, g, b) <- entries of (v, p, q, t) per hue sector, OpenCV's sector table in RGB order
_SECTOR_RGB = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]], dtype=np.int64)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> uint8 HSV with H in 0..179 (OpenCV's 8-bit RGB2HSV, integer arithmetic)."""
    r = image[..., 0].astype(np.int32)
    g = image[..., 1].astype(np.int32)
    b = image[..., 2].astype(np.int32)
    v = np.maximum(np.maximum(r, g), b)
    diff = v - np.minimum(np.minimum(r, g), b)
    s = _SDIV[v] * diff
    s += _HALF
    s >>= _HSV_SHIFT
    h = r - g + 4 * diff                      # blue is the maximum
    m = v == g
    h[m] = (b - r + 2 * diff)[m]              # green is the maximum
    m = v == r
    h[m] = (g - b)[m]                         # red is the maximum (wins ties, as in OpenCV)
    h *= _HDIV[diff]
    h += _HALF
    h >>= _HSV_SHIFT
    h[h < 0] += 180
    out = np.empty(image.shape, dtype=np.uint8)
    out[..., 0], out[..., 1], out[..., 2] = h, s, v
    return out


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV (H in 0..179) -> uint8 RGB, as OpenCV's 8-bit HSV2RGB (float32 maths, rounded)."""
    shape = hsv.shape
    f = hsv.reshape(-1, 3).astype(np.float32)
    n = len(f)
    h = np.mod(f[:, 0] * np.float32(6.0 / 180.0), np.float32(6.0))
    s = f[:, 1] * np.float32(1.0 / 255.0)
    v = f[:, 2] * np.float32(1.0 / 255.0)
    sector = h.astype(np.int64)
    sector[sector > 5] = 0
    frac = h - sector.astype(np.float32)
    one = np.float32(1.0)
    tab = np.empty((4, n), dtype=np.float32)   # v, p, q, t
    tab[0] = v
    np.multiply(v, one - s, out=tab[1])
    np.multiply(v, one - s * frac, out=tab[2])
    np.multiply(v, one - s * (one - frac), out=tab[3])
    tab *= np.float32(255.0)
    np.rint(tab, out=tab)
    np.clip(tab, 0, 255, out=tab)
    flat = _SECTOR_RGB[sector] * n + np.arange(n)[:, None]
    return tab.astype(np.uint8).reshape(-1)[flat].reshape(shape)


def _convert(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """x * alpha + beta in float32, clipped to 0..255, truncated to uint8 (as the original)."""
    out = channel.astype(np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of the distortion; None = that step is not applied."""
    brightness: float | None
    contrast_first: bool
    contrast: float | None
    saturation: float | None
    hue: int | None


def sample_photometric(rng: np.random.Generator) -> PhotometricParams:
    """Draw the random choices in the original's order (each step with probability 1/2)."""
    brightness = float(rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)) if rng.integers(2) else None
    contrast_first = bool(rng.integers(2))

    def maybe_uniform(lo: float, hi: float) -> float | None:
        return float(rng.uniform(lo, hi)) if rng.integers(2) else None

    if contrast_first:
        contrast = maybe_uniform(*CONTRAST_RANGE)
        saturation = maybe_uniform(*SATURATION_RANGE)
        hue = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1)) if rng.integers(2) else None
    else:
        saturation = maybe_uniform(*SATURATION_RANGE)
        hue = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1)) if rng.integers(2) else None
        contrast = maybe_uniform(*CONTRAST_RANGE)
    return PhotometricParams(brightness, contrast_first, contrast, saturation, hue)


def _saturation(image: np.ndarray, alpha: float) -> np.ndarray:
    hsv = rgb_to_hsv(image)
    hsv[..., 1] = _convert(hsv[..., 1], alpha=alpha)
    return hsv_to_rgb(hsv)


def _hue(image: np.ndarray, delta: int) -> np.ndarray:
    hsv = rgb_to_hsv(image)
    hsv[..., 0] = (hsv[..., 0].astype(np.int64) + delta) % 180
    return hsv_to_rgb(hsv)


def apply_photometric(image: np.ndarray, p: PhotometricParams) -> np.ndarray:
    """Apply one draw to a uint8 RGB image."""
    out = image
    if p.brightness is not None:
        out = _convert(out, beta=p.brightness)
    steps = ["contrast", "saturation", "hue"] if p.contrast_first else ["saturation", "hue", "contrast"]
    for step in steps:
        if step == "contrast" and p.contrast is not None:
            out = _convert(out, alpha=p.contrast)
        elif step == "saturation" and p.saturation is not None:
            out = _saturation(out, p.saturation)
        elif step == "hue" and p.hue is not None:
            out = _hue(out, p.hue)
    return out
