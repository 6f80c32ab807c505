"""Pictures people can look at: palette label PNGs, colour overlays with a legend, image grids."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def default_palette(num_classes: int) -> np.ndarray:
    """A distinct, deterministic colour per class (bit-interleaved colour map), uint8 (K, 3)."""
    pal = np.zeros((max(num_classes, 1), 3), dtype=np.uint8)
    for i in range(num_classes):
        c, r, g, b = i + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def palette_for(num_classes: int, palette: np.ndarray | Sequence | None = None) -> np.ndarray:
    if palette is None:
        return default_palette(num_classes)
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    if len(pal) < num_classes:
        pal = np.concatenate([pal, default_palette(num_classes)[len(pal):]])
    return pal


def colorize(label: np.ndarray, palette: np.ndarray, ignore_value: int = 255) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) colours; ignored / out-of-range pixels are black."""
    lut = np.zeros((max(int(label.max(initial=0)) + 1, len(palette), 256), 3), dtype=np.uint8)
    lut[: len(palette)] = palette
    if ignore_value < len(lut):
        lut[ignore_value] = 0
    return lut[np.clip(label, 0, len(lut) - 1)]


def save_label_png(label: np.ndarray, path: str | Path, palette: np.ndarray) -> None:
    """Write the label map as an 8-bit palette PNG: pixel values are class indices, colours for viewing.
    More than 256 classes cannot be a palette PNG; they are written as 16-bit grey PNG instead."""
    if label.max(initial=0) > 255:
        Image.fromarray(label.astype(np.uint16)).save(path)
        return
    im = Image.fromarray(label.astype(np.uint8), mode="P")
    flat = np.zeros((256, 3), dtype=np.uint8)
    flat[: min(len(palette), 256)] = palette[:256]
    im.putpalette(flat.reshape(-1).tolist())
    im.save(path)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def legend(classes: Sequence[int], names: Sequence[str] | None, palette: np.ndarray, height: int,
           width: int = 220, title: str | None = None) -> Image.Image:
    """A white panel with a colour swatch and a name per class, as many as fit in `height`."""
    panel = Image.new("RGB", (width, max(height, 40)), "white")
    draw = ImageDraw.Draw(panel)
    row = 18
    size = 13
    font = _font(size)
    y = 6
    if title:
        draw.text((8, y), title, fill="black", font=font)
        y += row
    shown = 0
    for c in classes:
        if y + row > panel.height - (row if shown < len(classes) - 1 else 0):
            draw.text((8, y), f"... {len(classes) - shown} more", fill="black", font=font)
            break
        color = tuple(int(v) for v in palette[c]) if c < len(palette) else (0, 0, 0)
        draw.rectangle([8, y + 2, 22, y + 14], fill=color, outline="black")
        name = names[c] if names is not None and c < len(names) else f"class {c}"
        draw.text((28, y), f"{c}: {name}"[:30], fill="black", font=font)
        y += row
        shown += 1
    return panel


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, names: Sequence[str] | None = None,
            opacity: float = 0.5, ignore_value: int = 255, with_legend: bool = True) -> Image.Image:
    """Blend the colour label map over the image; a legend lists the classes present, largest first."""
    color = colorize(label, palette, ignore_value)
    blend = image.astype(np.float32) * (1 - opacity) + color.astype(np.float32) * opacity
    valid = (label != ignore_value)[..., None]
    out = np.where(valid, blend, image.astype(np.float32))
    picture = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    if not with_legend:
        return picture
    ids, counts = np.unique(label[label != ignore_value], return_counts=True)
    order = [int(i) for i in ids[np.argsort(-counts)]]
    panel = legend(order, names, palette, picture.height)
    canvas = Image.new("RGB", (picture.width + panel.width, max(picture.height, panel.height)), "white")
    canvas.paste(picture, (0, 0))
    canvas.paste(panel, (picture.width, 0))
    return canvas
