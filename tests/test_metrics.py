"""Metrics against a brute-force computation written independently here (pixel loops per class)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from semask.metrics import ConfusionMatrix, format_table, json_safe, segmentation_metrics, unique_class_names

IGNORE = 255


def brute_force(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> dict:
    """Per-class counts straight from the pixels, then detectron2's formulas, in percent."""
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([g.ravel() for g in gts])
    labelled = gt != IGNORE
    iou, acc, gt_count = [], [], []
    for c in range(k):
        tp = int(np.sum((gt == c) & (pred == c)))
        n_gt = int(np.sum(gt == c))
        n_pred = int(np.sum((pred == c) & labelled))
        gt_count.append(n_gt)
        if n_gt == 0:
            iou.append(math.nan)
            acc.append(math.nan)
        else:
            iou.append(tp / (n_gt + n_pred - tp))
            acc.append(tp / n_gt)
    present = [c for c in range(k) if gt_count[c] > 0]
    total = sum(gt_count)
    correct = int(np.sum((gt == pred) & labelled))
    return {
        "IoU": [100 * v for v in iou], "ACC": [100 * v for v in acc],
        "mIoU": 100 * sum(iou[c] for c in present) / len(present),
        "mACC": 100 * sum(acc[c] for c in present) / len(present),
        "fwIoU": 100 * sum(iou[c] * gt_count[c] / total for c in present),
        "pACC": 100 * correct / total,
        "present": len(present), "total": total,
    }


def random_dataset(seed: int, k: int, absent: set[int]):
    """Images of varied sizes: GT drawn from the classes not in `absent`, plus ignore; predictions from
    all classes (so absent classes are still predicted sometimes), biased towards the truth; one
    image is entirely ignore."""
    rng = np.random.default_rng(seed)
    allowed = np.array([c for c in range(k) if c not in absent])
    preds, gts = [], []
    for i in range(6):
        h, w = rng.integers(5, 40, size=2)
        gt = rng.choice(allowed, size=(h, w))
        gt[rng.random((h, w)) < 0.15] = IGNORE
        if i == 3:
            gt[:] = IGNORE
        pred = rng.integers(0, k, size=(h, w))
        keep = (rng.random((h, w)) < 0.6) & (gt != IGNORE)
        pred[keep] = gt[keep]
        preds.append(pred)
        gts.append(gt)
    return preds, gts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_metrics_match_brute_force(seed):
    k = 9
    absent = {2, 7}
    preds, gts = random_dataset(seed, k, absent)
    conf = ConfusionMatrix(k, IGNORE)
    for p, g in zip(preds, gts):
        conf.update(torch.from_numpy(p), torch.from_numpy(g))
    got = conf.compute([f"c{i}" for i in range(k)])
    ref = brute_force(preds, gts, k)
    for key in ("mIoU", "mACC", "fwIoU", "pACC"):
        assert got[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key
    for c in range(k):
        name = f"c{c}"
        if c in absent:
            assert math.isnan(got["per_class"][name]["IoU"]) and math.isnan(got["per_class"][name]["ACC"])
            assert math.isnan(ref["IoU"][c])
        else:
            assert got["per_class"][name]["IoU"] == pytest.approx(ref["IoU"][c], rel=1e-12)
            assert got["per_class"][name]["ACC"] == pytest.approx(ref["ACC"][c], rel=1e-12)
    assert got["num_classes_present"] == ref["present"] == k - len(absent)
    assert got["num_pixels"] == ref["total"]


def test_confusion_matrix_counts_every_labelled_pixel_once():
    preds, gts = random_dataset(5, 6, {4})
    conf = ConfusionMatrix(6)
    for p, g in zip(preds, gts):
        conf.update(p, g)  # numpy inputs are accepted too
    expected = np.zeros((6, 6), dtype=np.int64)
    for p, g in zip(preds, gts):
        for gv, pv in zip(g.ravel(), p.ravel()):
            if gv != IGNORE:
                expected[gv, pv] += 1
    np.testing.assert_array_equal(conf.matrix.numpy(), expected)
    assert conf.matrix.dtype == torch.int64


def test_small_example_by_hand():
    gt = np.array([[0, 0, 1, 1], [255, 255, 2, 255]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 2, 0]])
    m = segmentation_metrics(_matrix(pred, gt, 3), ["a", "b", "c"])
    # a: tp 1, gt 2, pred 1 -> IoU 1/2; b: tp 2, gt 2, pred 3 -> 2/3; c: tp 1, gt 1, pred 1 -> 1
    assert m["per_class"]["a"]["IoU"] == pytest.approx(50.0)
    assert m["per_class"]["b"]["IoU"] == pytest.approx(200 / 3)
    assert m["per_class"]["c"]["IoU"] == pytest.approx(100.0)
    assert m["mIoU"] == pytest.approx((50 + 200 / 3 + 100) / 3)
    assert m["pACC"] == pytest.approx(80.0)
    assert m["mACC"] == pytest.approx((50 + 100 + 100) / 3)
    assert m["fwIoU"] == pytest.approx(0.4 * 50 + 0.4 * 200 / 3 + 0.2 * 100)


def _matrix(pred, gt, k):
    conf = ConfusionMatrix(k)
    conf.update(pred, gt)
    return conf.matrix


def test_predicting_an_absent_class_costs_the_present_ones():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])  # class 2 never in the ground truth
    m = segmentation_metrics(_matrix(pred, gt, 3))
    assert math.isnan(m["per_class"]["class_2"]["IoU"])
    assert m["per_class"]["class_0"]["IoU"] == pytest.approx(50.0)
    assert m["mIoU"] == pytest.approx(75.0)  # mean over the two present classes only


def test_perfect_prediction_is_100_and_all_ignore_is_nan():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (10, 12))
    gt[0] = IGNORE
    pred = np.where(gt == IGNORE, 3, gt)
    m = segmentation_metrics(_matrix(pred, gt, 5))
    assert m["mIoU"] == m["mACC"] == m["pACC"] == m["fwIoU"] == pytest.approx(100.0)

    conf = ConfusionMatrix(5)
    conf.update(np.zeros((4, 4), int), np.full((4, 4), IGNORE))
    assert int(conf.matrix.sum()) == 0
    empty = conf.compute()
    assert all(math.isnan(empty[k]) for k in ("mIoU", "fwIoU", "mACC", "pACC"))
    assert empty["num_pixels"] == 0 and empty["num_classes_present"] == 0


def test_bad_values_and_shapes_are_refused():
    conf = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="outside 0..2"):
        conf.update(np.zeros((2, 2), int), np.array([[0, 1], [7, 255]]))
    with pytest.raises(ValueError, match="shape"):
        conf.update(np.zeros((2, 3), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="predicted"):
        conf.update(np.full((2, 2), 3), np.zeros((2, 2), int))
    assert int(conf.matrix.sum()) == 0  # nothing counted from refused inputs


def test_reset_and_other_ignore_value():
    conf = ConfusionMatrix(2, ignore_value=-1)
    conf.update(np.array([0, 1, 1]), np.array([0, -1, 1]))
    assert conf.matrix.tolist() == [[1, 0], [0, 1]]
    conf.reset()
    assert int(conf.matrix.sum()) == 0


def test_names_table_and_json():
    assert unique_class_names(["a", "b", "a"], 3) == ["a", "b", "a_2"]
    assert unique_class_names(None, 2) == ["class_0", "class_1"]
    with pytest.raises(ValueError):
        unique_class_names(["a"], 2)
    m = segmentation_metrics(_matrix(np.array([0, 1, 1, 1]), np.array([0, 1, 0, 1]), 3), ["wall", "sky", "tree"])
    table = format_table(m)
    lines = table.splitlines()
    assert lines[0].split() == ["class", "IoU", "ACC"]
    tree = next(line for line in lines if line.startswith("tree"))
    assert tree.split() == ["tree", "-", "-"]
    sky = next(line for line in lines if line.startswith("sky"))
    assert sky.split() == ["sky", "66.67", "100.00"]
    assert f"mIoU {m['mIoU']:.2f}" in lines[-1]
    by_iou = format_table(m, sort_by="IoU").splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["wall", "sky", "tree"]
    assert [line.split()[0] for line in by_iou[2:5]] == ["sky", "wall", "tree"]
    text = json.dumps(json_safe(m), allow_nan=False)
    assert json.loads(text)["per_class"]["tree"]["IoU"] is None
