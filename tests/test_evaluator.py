"""Dataset evaluation on small ADE20K-layout trees built here (images/validation/*.jpg,
annotations/validation/*.png with stored 0 = other -> ignore, k -> class k-1)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import semask
from semask.config import load_config
from semask.data import DataError, build_dataset
from semask.engine.evaluator import evaluate
from semask.io import image_to_tensor, read_image, read_label
from semask.preprocess import resize_image, shortest_edge_size


pytestmark = pytest.mark.usefixtures("one_thread")


def write_pair(root: Path, stem: str, image: np.ndarray, stored_label: np.ndarray, split: str = "validation") -> Path:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    path = root / "images" / split / f"{stem}.jpg"
    Image.fromarray(image).save(path, quality=95)
    Image.fromarray(stored_label.astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")
    return path


def predict_label(model, image: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """The single-scale test pipeline written out: resize the shorter side, predict, back to full size."""
    h, w = image.shape[:2]
    x = image_to_tensor(resize_image(image, shortest_edge_size(h, w, short_edge, max_size)))
    with torch.no_grad():
        return model.predict([x], output_sizes=[(h, w)])[0].argmax(0).numpy()


def brute_miou(preds, gts, k) -> tuple[float, float]:
    """(mIoU, pACC) in percent from pixel counts, classes present in the ground truth only."""
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([g.ravel() for g in gts])
    lab = gt != 255
    ious = []
    for c in range(k):
        n_gt = np.sum(gt == c)
        if n_gt:
            tp = np.sum((gt == c) & (pred == c))
            ious.append(tp / (n_gt + np.sum((pred == c) & lab) - tp))
    return 100 * float(np.mean(ious)), 100 * float(np.sum((pred == gt) & lab) / np.sum(lab))


def test_ground_truth_from_the_models_own_prediction_gives_miou_100(golden_ade, tmp_path):
    model = golden_ade.model()
    image = read_image(golden_ade.image)  # 90 x 123
    root = tmp_path / "ade"
    preds = []
    for stem, im in (("a", image), ("b", np.ascontiguousarray(image[:, ::-1]))):
        path = write_pair(root, stem, im, np.zeros(im.shape[:2]))
        decoded = read_image(path)  # what the dataset will read (JPEG is lossy)
        pred = predict_label(model, decoded, 90, 2560)
        stored = pred + 1
        if stem == "b":
            stored[:20, :30] = 0  # "other": ignored
        Image.fromarray(stored.astype(np.uint8)).save(root / "annotations" / "validation" / f"{stem}.png")
        preds.append(pred)
    assert len(np.unique(np.concatenate([p.ravel() for p in preds]))) > 3  # a real multi-class map
    cfg = load_config(golden_ade.config, ["data.min_size_test=90"])
    dataset = build_dataset(cfg, "val", root)
    result = evaluate(model, dataset, cfg)
    assert result["num_images"] == 2
    assert result["mIoU"] == 100.0 and result["pACC"] == 100.0 and result["mACC"] == 100.0
    assert result["fwIoU"] == pytest.approx(100.0)
    present = [n for n, v in result["per_class"].items() if not math.isnan(v["IoU"])]
    assert len(present) == result["num_classes_present"] == len(np.unique(np.concatenate([p.ravel() for p in preds])))
    assert len(result["per_class"]) == 150 and "wall" in result["per_class"]

    # change part of one annotation: the numbers follow a pixel count done here
    gt_a = read_label(root / "annotations" / "validation" / "a.png").astype(np.int64) - 1
    gt_a[40:70, 50:100] = (gt_a[40:70, 50:100] + 7) % 150
    Image.fromarray((gt_a + 1).astype(np.uint8)).save(root / "annotations" / "validation" / "a.png")
    gt_b = read_label(root / "annotations" / "validation" / "b.png").astype(np.int64) - 1
    gt_b[gt_b < 0] = 255
    result = evaluate(model, build_dataset(cfg, "val", root), cfg)
    miou, pacc = brute_miou(preds, [gt_a, gt_b], 150)
    assert result["mIoU"] == pytest.approx(miou, rel=1e-9)
    assert result["pACC"] == pytest.approx(pacc, rel=1e-9)
    assert result["mIoU"] < 100.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model (5 classes) and a 3-image tree with classes.txt."""
    from conftest import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(num_classes=5, **{"data.min_size_test": 64, "data.max_size_test": 256})
    model = semask.build_model(cfg).eval()
    root = tmp_path_factory.mktemp("tiny_ade")
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(70, 96), (96, 80), (64, 64)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        write_pair(root, f"img{i}", image, rng.integers(0, 6, (h, w)))
    (root / "classes.txt").write_text("sky\nroad\ntree\ncar\nperson\n")
    return model, cfg, root


def test_single_scale_pipeline_saved_predictions_and_mode(tiny, tmp_path):
    model, cfg, root = tiny
    dataset = build_dataset(cfg, "val", root)
    model.train()
    result = evaluate(model, dataset, cfg, save_dir=tmp_path / "pred")
    assert model.training  # left as found
    model.eval()
    evaluate(model, dataset, cfg)
    assert not model.training
    preds, gts = [], []
    for i in range(len(dataset)):
        sample = dataset.load(i)
        expected = predict_label(model, sample.image, 64, 256)
        saved = Image.open(tmp_path / "pred" / f"{sample.path.stem}.png")
        assert saved.mode == "P" and saved.size == (sample.image.shape[1], sample.image.shape[0])
        np.testing.assert_array_equal(np.asarray(saved), expected)
        preds.append(expected)
        gts.append(sample.label)
    miou, pacc = brute_miou(preds, gts, 5)
    assert result["mIoU"] == pytest.approx(miou, rel=1e-9) and result["pACC"] == pytest.approx(pacc, rel=1e-9)
    assert set(result["per_class"]) == {"sky", "road", "tree", "car", "person"}
    assert result["num_images"] == 3 and result["skipped"] == 0 and result["tta"] is False
    with_workers = evaluate(model, dataset, cfg, num_workers=1)  # images read in a DataLoader worker
    assert with_workers["per_class"] == result["per_class"] and with_workers["num_images"] == 3


def test_tta_with_one_scale_and_no_flip_equals_single_scale(tiny):
    model, cfg, root = tiny
    dataset = build_dataset(cfg, "val", root)
    single = evaluate(model, dataset, cfg)
    one = load_config(cfg, {"test.aug_min_sizes": [64], "test.aug_flip": False})
    assert evaluate(model, dataset, one, tta=True)["per_class"] == single["per_class"]
    ms = evaluate(model, dataset, load_config(cfg, {"test.aug_min_sizes": [64], "test.aug_flip": True}), tta=True)
    assert ms["tta"] is True and ms["num_images"] == 3


def test_bad_pairs(tiny, tmp_path):
    model, cfg, root = tiny
    bad = tmp_path / "bad"
    rng = np.random.default_rng(2)
    for i in range(2):
        write_pair(bad, f"ok{i}", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 6, (64, 64)))
    (bad / "classes.txt").write_text((root / "classes.txt").read_text())
    (bad / "images" / "validation" / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(bad / "annotations" / "validation" / "broken.png")
    with pytest.raises(DataError, match="broken.jpg"):
        evaluate(model, build_dataset(cfg, "val", bad), cfg)
    skip = load_config(cfg, {"data.on_error": "skip"})
    result = evaluate(model, build_dataset(skip, "val", bad), skip)
    assert result["num_images"] == 2 and result["skipped"] == 1



def test_class_count_must_match_the_model(tiny):
    model, cfg, _ = tiny

    class FourClasses:
        num_classes = 4

        def __len__(self):
            return 1

    with pytest.raises(DataError, match="model.num_classes"):
        evaluate(model, FourClasses(), cfg)
