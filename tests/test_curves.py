"""Training-curves PNG drawn with PIL: panels, lines where the data is, empty panels labelled."""

from __future__ import annotations

import numpy as np
from PIL import Image

from semask.engine.curves import PANEL_H, draw_training_curves


def test_curves_png(tmp_path):
    records = [{"iteration": i, "total_loss": 50.0 / i, "lr": 1e-4 * (1 - i / 100)} for i in range(1, 100)]
    records += [{"iteration": 50, "eval": {"mIoU": 30.0, "pACC": 70.0}}, {"iteration": 99, "eval": {"mIoU": 45.0}}]
    path = draw_training_curves(records, tmp_path / "curves.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] == 3 * PANEL_H
    blue = (img[..., 2] > 150) & (img[..., 0] < 80)
    red = (img[..., 0] > 180) & (img[..., 1] < 80)
    for panel in range(3):
        assert blue[panel * PANEL_H:(panel + 1) * PANEL_H].sum() > 30, panel  # a line in every panel
    assert red[2 * PANEL_H:].sum() > 5                                          # the pACC point
    empty = draw_training_curves([{"iteration": 1, "total_loss": 3.0}], tmp_path / "one.png")
    assert Image.open(empty).size == (img.shape[1], img.shape[0])
