"""Synthetic scenes: a small segmentation dataset written in the ADE20K layout, made from a seed.

Six classes that colour alone cannot separate: every colour is drawn from one shared palette for
every class, so a model has to use
  - texture:  "stripes" and "checker" backgrounds (the two regions above and below a wavy horizon,
              painted with the same two colours),
  - shape:    "disc", "box" and "triangle" objects,
  - context:  a "window" is a small square inside a box (a free-standing square is a "box").
Objects never overlap and have crisp edges, so the scenes stay easy to learn: a small SeMask model
trains on them in minutes on a CPU (the demo does). Labels are stored ADE20K-style (0 = other,
class k stored as k + 1) and ROOT/classes.txt names the classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("stripes", "checker", "disc", "box", "triangle", "window")
STRIPES, CHECKER, DISC, BOX, TRIANGLE, WINDOW = range(len(CLASSES))
COLOURS = np.array([(220, 60, 60), (60, 170, 75), (60, 90, 220), (235, 200, 40), (150, 70, 180), (60, 190, 200),
                    (235, 235, 235)], dtype=np.uint8)
SPLITS = (("training", 0), ("validation", 1))
FILE_PREFIX = "scene_"


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                               list[int]]:
    """Two textured regions split by a wavy horizon; (image, class map, the two colour indices)."""
    s = size / 128.0
    colours = [int(c) for c in rng.choice(len(COLOURS), size=2, replace=False)]
    horizon = (rng.uniform(0.35, 0.65) * size
               + rng.uniform(0.0, 0.08) * size * np.sin(2 * np.pi * xx / (rng.uniform(0.6, 1.5) * size)
                                                        + rng.uniform(0, 2 * np.pi)))
    top = yy < horizon
    top_class = STRIPES if rng.integers(2) else CHECKER
    period = max(4, int(round(rng.uniform(8, 14) * s)))
    direction = int(rng.integers(3))  # horizontal, vertical or diagonal stripes
    coord = (yy, xx, (xx + yy) / np.sqrt(2.0))[direction]
    stripes = (np.floor((coord + rng.uniform(0, period)) / (period / 2.0)) % 2).astype(np.int64)
    cell = max(3, int(round(rng.uniform(4, 7) * s)))
    ox, oy = rng.integers(cell, size=2)
    checker = ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2).astype(np.int64)
    is_stripes = top if top_class == STRIPES else ~top
    pattern = np.where(is_stripes, stripes, checker)
    image = COLOURS[np.asarray(colours)[pattern]]
    classes = np.where(is_stripes, STRIPES, CHECKER)
    return image, classes, colours


def _shape_mask(kind: int, box: tuple[float, float, float, float], yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Pixels (by their centres) inside a disc / square / upward triangle filling box (y0, x0, h, w)."""
    y0, x0, h, w = box
    cy, cx = yy + 0.5, xx + 0.5
    if kind == DISC:
        r = w / 2.0
        return (cy - (y0 + r)) ** 2 + (cx - (x0 + r)) ** 2 <= r * r
    inside = (cy >= y0) & (cy < y0 + h) & (cx >= x0) & (cx < x0 + w)
    if kind == TRIANGLE:
        t = (cy - y0) / h  # 0 at the apex, 1 at the base
        inside &= np.abs(cx - (x0 + w / 2.0)) <= t * w / 2.0
    return inside


def _place(rng: np.random.Generator, h: float, w: float, area: tuple[float, float, float, float],
           taken: list[tuple[float, float, float, float]], margin: float) -> tuple[float, float, float, float] | None:
    """A free spot for an h x w box inside `area` (y0, x0, H, W), at least `margin` away from `taken`."""
    ay, ax, ah, aw = area
    if h + 2 * margin > ah or w + 2 * margin > aw:
        return None
    for _ in range(40):
        y0 = ay + margin + rng.uniform(0, ah - h - 2 * margin)
        x0 = ax + margin + rng.uniform(0, aw - w - 2 * margin)
        if all(y0 + h + margin <= ty or ty + th + margin <= y0 or x0 + w + margin <= tx or tx + tw + margin <= x0
               for ty, tx, th, tw in taken):
            return (y0, x0, h, w)
    return None


def make_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint8 RGB image (S, S, 3), int64 class map (S, S) with values 0..5)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image, classes, bg_colours = _background(rng, size, yy, xx)
    free_colours = [c for c in range(len(COLOURS)) if c not in bg_colours]
    taken: list[tuple[float, float, float, float]] = []
    margin = max(2.0, size / 40.0)
    # 3-6 placement attempts of objects a quarter to a third of the scene wide (4.7 objects per scene on
    # average): larger and more objects teach the shapes in fewer iterations (docs/demo.md, measured)
    for _ in range(int(rng.integers(3, 7))):
        kind = int(rng.choice([DISC, BOX, TRIANGLE]))
        if kind == DISC:
            h = w = 2 * rng.uniform(0.11, 0.17) * size
        elif kind == BOX:
            h = w = rng.uniform(0.20, 0.34) * size
        else:
            w = rng.uniform(0.26, 0.38) * size
            h = 0.87 * w
        spot = _place(rng, h, w, (0.0, 0.0, float(size), float(size)), taken, margin)
        if spot is None:
            continue
        taken.append(spot)
        colour = int(rng.choice(free_colours))
        mask = _shape_mask(kind, spot, yy, xx)
        image[mask] = COLOURS[colour]
        classes[mask] = kind
        if kind == BOX and w >= 0.24 * size and rng.uniform() < 0.85:
            inner: list[tuple[float, float, float, float]] = []
            window_colour = int(rng.choice([c for c in free_colours if c != colour]))
            for _ in range(int(rng.integers(1, 3))):
                side = rng.uniform(0.07, 0.10) * size
                win = _place(rng, side, side, spot, inner, margin)
                if win is None:
                    continue
                inner.append(win)
                wmask = _shape_mask(BOX, win, yy, xx)
                image[wmask] = COLOURS[window_colour]
                classes[wmask] = WINDOW
    return image, classes


def make_synthetic_dataset(root: str | Path, num_train: int = 100, num_val: int = 20, size: int = 128,
                           seed: int = 0) -> Path:
    """Write ROOT/images/{training,validation}/scene_NNNNN.png, ROOT/annotations/... (stored label = class + 1)
    and ROOT/classes.txt. The same arguments always give the same bytes; earlier scenes there are replaced."""
    if num_train < 0 or num_val < 0:
        raise ValueError("the numbers of images must be >= 0")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    root = Path(root)
    for split, code in SPLITS:
        count = num_train if split == "training" else num_val
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for folder in (image_dir, label_dir):
            for old in folder.glob(f"{FILE_PREFIX}*.png"):
                old.unlink()
        for i in range(count):
            rng = np.random.default_rng([seed & ((1 << 64) - 1), code, i])
            image, classes = make_scene(rng, size)
            name = f"{FILE_PREFIX}{i:05d}.png"
            Image.fromarray(image).save(image_dir / name)
            Image.fromarray((classes + 1).astype(np.uint8), mode="L").save(label_dir / name)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES))
    return root
