"""Training curves as a PNG, drawn with PIL only: total loss, learning rate and evaluation mIoU.

Each panel is a line plot against the iteration with min/max labels on both axes. Redrawn from
metrics.jsonl at every evaluation (and at the end of training).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from .metrics_log import series

PANEL_W, PANEL_H = 520, 260
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 70, 20, 30, 36
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2e}"
    return f"{v:.3g}"


def draw_panel(title: str, lines: Sequence[tuple[str, list[tuple[int, float]]]]) -> Image.Image:
    """One plot: several (label, points) lines sharing axes."""
    img = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((MARGIN_L, 8), title, fill="black", font=font)
    x0, y0, x1, y1 = MARGIN_L, MARGIN_T, PANEL_W - MARGIN_R, PANEL_H - MARGIN_B
    d.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    pts = [p for _, ps in lines for p in ps]
    if not pts:
        d.text((x0 + 10, (y0 + y1) // 2), "no data yet", fill=(120, 120, 120), font=font)
        return img
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymin, ymax = ymin - 0.5 * (abs(ymin) or 1), ymax + 0.5 * (abs(ymax) or 1)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x0 + (x - xmin) / (xmax - xmin) * (x1 - x0), y1 - (y - ymin) / (ymax - ymin) * (y1 - y0))

    for frac in (0.25, 0.5, 0.75):
        y = y0 + frac * (y1 - y0)
        d.line([x0, y, x1, y], fill=(230, 230, 230))
    d.text((4, y0 - 5), _fmt(ymax), fill="black", font=font)
    d.text((4, y1 - 5), _fmt(ymin), fill="black", font=font)
    d.text((x0, y1 + 6), str(xmin), fill="black", font=font)
    d.text((x1 - 6 * len(str(xmax)), y1 + 6), str(xmax), fill="black", font=font)
    d.text(((x0 + x1) // 2 - 24, y1 + 20), "iteration", fill=(90, 90, 90), font=font)
    for i, (label, ps) in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        px = [to_px(x, y) for x, y in sorted(ps)]
        if len(px) == 1:
            cx, cy = px[0]
            d.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        elif px:
            d.line(px, fill=colour, width=2)
            if len(px) <= 30:  # few points (evaluations): mark each
                for cx, cy in px:
                    d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
        if len(lines) > 1:
            d.text((x1 - 120, y0 + 6 + 12 * i), label, fill=colour, font=font)
    return img


def draw_training_curves(records: list[dict], path: str | os.PathLike) -> Path:
    """Write the curves PNG (loss, lr, eval mIoU) for metrics records; returns the path."""
    panels = [
        draw_panel("total loss", [("total_loss", series(records, "total_loss"))]),
        draw_panel("learning rate", [("lr", series(records, "lr"))]),
        draw_panel("evaluation (%)", [("mIoU", series(records, "eval/mIoU")), ("pACC", series(records, "eval/pACC"))]),
    ]
    out = Image.new("RGB", (PANEL_W, PANEL_H * len(panels)), "white")
    for i, p in enumerate(panels):
        out.paste(p, (0, i * PANEL_H))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    out.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
