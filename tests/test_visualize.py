"""Palette PNGs, colour maps, overlays and legends."""

from __future__ import annotations

import numpy as np
from PIL import Image

from semask.visualize import colorize, default_palette, legend, overlay, palette_for, save_label_png


def test_default_palette_is_distinct_and_deterministic():
    pal = default_palette(150)
    assert pal.shape == (150, 3) and pal.dtype == np.uint8
    assert len({tuple(c) for c in pal}) == 150
    assert (pal.sum(1) > 0).all()  # no class is black (black marks ignored pixels)
    np.testing.assert_array_equal(pal, default_palette(150))
    short = palette_for(5, [[1, 2, 3], [4, 5, 6]])
    assert short.shape == (5, 3) and short[1].tolist() == [4, 5, 6]
    np.testing.assert_array_equal(short[2:], default_palette(5)[2:])


def test_colorize_and_ignore():
    pal = np.array([[10, 20, 30], [40, 50, 60]], np.uint8)
    out = colorize(np.array([[0, 1, 255]]), pal)
    assert out.tolist() == [[[10, 20, 30], [40, 50, 60], [0, 0, 0]]]


def test_palette_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 150, (17, 23))
    pal = default_palette(150)
    save_label_png(label, tmp_path / "l.png", pal)
    im = Image.open(tmp_path / "l.png")
    assert im.mode == "P" and im.size == (23, 17)
    np.testing.assert_array_equal(np.asarray(im), label)
    colours = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(colours, pal[label])
    big = label + 200  # more than 256 classes: 16-bit grey, still the class index per pixel
    save_label_png(big, tmp_path / "b.png", pal)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "b.png")).astype(np.int64), big)


def test_overlay_blend_and_legend():
    image = np.full((60, 80, 3), 200, np.uint8)
    label = np.zeros((60, 80), np.int64)
    label[:, 40:] = 2
    label[:10, :10] = 255
    pal = default_palette(3)
    plain = np.asarray(overlay(image, label, pal, opacity=0.25, with_legend=False))
    expected = np.clip(0.75 * 200 + 0.25 * pal[2].astype(np.float64) + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(plain[30, 60], expected)
    np.testing.assert_array_equal(plain[0, 0], [200, 200, 200])  # ignored pixels keep the image
    full = overlay(image, label, pal, names=["road", "sky", "car"], opacity=0.25)
    assert full.size == (80 + 220, 60)
    np.testing.assert_array_equal(np.asarray(full)[:, :80], plain)


def test_legend_swatches_follow_the_given_order():
    pal = default_palette(6)
    panel = np.asarray(legend([4, 1], ["a", "b", "c", "d", "e", "f"], pal, height=100))
    # swatch rows start at y=6 and are 18 px apart; the swatch spans x 8..22
    np.testing.assert_array_equal(panel[6 + 8, 15], pal[4])
    np.testing.assert_array_equal(panel[6 + 18 + 8, 15], pal[1])
    assert (panel[6 + 36 + 8, 15] == 255).all()  # nothing after the two classes
    many = np.asarray(legend(list(range(6)), None, pal, height=60))
    assert many.shape == (60, 220, 3)  # classes that do not fit are summarised, not drawn past the edge
