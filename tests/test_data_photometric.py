"""SSD photometric distortion: OpenCV-compatible 8-bit HSV conversions (checked against scalar
re-implementations of OpenCV's formulas) and the distortion steps."""

from __future__ import annotations

import colorsys

import numpy as np

from semask.data.photometric import (HUE_DELTA, PhotometricParams, apply_photometric, hsv_to_rgb, rgb_to_hsv,
                                     sample_photometric)


def opencv_rgb2hsv_scalar(r: int, g: int, b: int) -> tuple[int, int, int]:
    """OpenCV's 8-bit RGB2HSV for one pixel (fixed point, shift 12, tables rounded from doubles)."""
    shift = 12
    v = max(r, g, b)
    diff = v - min(r, g, b)
    sdiv = round((255 << shift) / v) if v else 0
    hdiv = round((180 << shift) / (6 * diff)) if diff else 0
    s = (diff * sdiv + (1 << (shift - 1))) >> shift
    if v == r:
        h = g - b
    elif v == g:
        h = b - r + 2 * diff
    else:
        h = r - g + 4 * diff
    h = (h * hdiv + (1 << (shift - 1))) >> shift
    if h < 0:
        h += 180
    return h, s, v


def test_rgb_to_hsv_matches_the_opencv_formula() -> None:
    rng = np.random.default_rng(0)
    pixels = np.concatenate([rng.integers(0, 256, (3000, 3)),
                             [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [7, 7, 7],
                              [255, 255, 0], [0, 255, 255], [255, 0, 255], [200, 200, 10], [10, 200, 200]]])
    pixels = pixels.astype(np.uint8)
    ours = rgb_to_hsv(pixels.reshape(-1, 1, 3)).reshape(-1, 3)
    ref = np.array([opencv_rgb2hsv_scalar(*map(int, p)) for p in pixels])
    assert np.array_equal(ours, ref)


def test_hsv_to_rgb_agrees_with_colorsys() -> None:
    hsv = np.stack(np.meshgrid(np.arange(0, 180, 3), np.arange(0, 256, 5), np.arange(0, 256, 5), indexing="ij"),
                   -1).reshape(-1, 3).astype(np.uint8)
    ours = hsv_to_rgb(hsv.reshape(-1, 1, 3)).reshape(-1, 3).astype(np.float64)
    ref = np.array([colorsys.hsv_to_rgb(h / 180.0, s / 255.0, v / 255.0) for h, s, v in hsv.astype(float)]) * 255
    assert np.abs(ours - ref).max() <= 0.5 + 1e-3  # correctly rounded up to float32 noise
    assert np.array_equal(hsv_to_rgb(np.array([[[17, 0, 93]]], np.uint8)), [[[93, 93, 93]]])  # greys stay grey


def test_round_trip_is_close() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    back = hsv_to_rgb(rgb_to_hsv(image))
    assert np.abs(back.astype(int) - image).max() <= 6  # 180 hue steps lose a little
    assert np.array_equal(back.max(-1), image.max(-1))   # V is exact


def test_identity_when_no_step_is_drawn() -> None:
    image = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    none = PhotometricParams(None, True, None, None, None)
    assert np.array_equal(apply_photometric(image, none), image)


def test_brightness_and_contrast_truncate_like_the_original() -> None:
    image = np.array([[[10, 100, 250]]], np.uint8)
    out = apply_photometric(image, PhotometricParams(10.7, True, None, None, None))
    assert out.tolist() == [[[20, 110, 255]]]  # float32 add, clip, truncate
    out = apply_photometric(image, PhotometricParams(None, True, 1.5, None, None))
    assert out.tolist() == [[[15, 150, 255]]]


def test_hue_and_saturation_steps() -> None:
    image = np.array([[[200, 50, 50]]], np.uint8)  # red, hue 0
    out = apply_photometric(image, PhotometricParams(None, False, None, None, 60))  # +120 degrees -> green
    h, s, v = rgb_to_hsv(out)[0, 0]
    assert h == 60 and v == 200 and out[0, 0, 1] == 200
    grey = apply_photometric(image, PhotometricParams(None, False, None, 0.0, None))
    assert (grey == grey[..., :1]).all()  # saturation 0 -> grey


def test_sampling_is_deterministic_and_covers_every_step() -> None:
    draws = [sample_photometric(np.random.default_rng(s)) for s in range(200)]
    assert draws[:10] == [sample_photometric(np.random.default_rng(s)) for s in range(10)]
    for field in ("brightness", "contrast", "saturation", "hue"):
        applied = sum(getattr(d, field) is not None for d in draws)
        assert 60 < applied < 140, field  # each step with probability 1/2
    assert all(-HUE_DELTA <= d.hue <= HUE_DELTA for d in draws if d.hue is not None)
    assert all(-32 <= d.brightness <= 32 for d in draws if d.brightness is not None)
    assert all(0.5 <= d.contrast <= 1.5 for d in draws if d.contrast is not None)
    assert {d.contrast_first for d in draws} == {True, False}
