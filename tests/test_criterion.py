"""Criterion: every term against a brute-force computation written here (small sizes), key names and
weights, and the training-loss reference of the original implementation (loss_mini_ade)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import require_reference
from semask.config import load_config
from semask.engine.targets import targets_from_label_maps
from semask.modeling.criterion import SetCriterion, build_criterion
from semask.modeling.matcher import HungarianMatcher
from semask.modeling.point_sampling import RecordedPointSampler
from semask.modeling.semantic_head import SemanticHead


def bilinear(img: list[list[float]], x: float, y: float) -> float:
    h, w = len(img), len(img[0])
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            if 0 <= xi < w and 0 <= yi < h:
                total += (1 - abs(px - xi)) * (1 - abs(py - yi)) * img[yi][xi]
    return total


def log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    z = math.log(sum(math.exp(v - m) for v in row)) + m
    return [v - z for v in row]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def bce(x: float, y: float) -> float:
    return -(y * math.log(sigmoid(x)) + (1 - y) * math.log(1 - sigmoid(x)))


def brute_ce(logits: torch.Tensor, indices, targets, num_classes: int, eos: float) -> float:
    num, den = 0.0, 0.0
    for b in range(logits.shape[0]):
        matched = {int(q): int(targets[b]["labels"][int(t)]) for q, t in zip(*indices[b])}
        for q in range(logits.shape[1]):
            cls = matched.get(q, num_classes)
            w = eos if cls == num_classes else 1.0
            num += -w * log_softmax(logits[b, q].tolist())[cls]
            den += w
    return num / den


def brute_mask_dice(pred_masks, targets, indices, over, extra, num_points, importance, num_masks):
    """Importance sampling and both losses by explicit loops over masks and points."""
    k = int(importance * num_points)
    ce_sum, dice_sum, m = 0.0, 0.0, 0
    for b, (qs, ts) in enumerate(indices):
        for q, t in zip(qs.tolist(), ts.tolist()):
            pimg = pred_masks[b, q].tolist()
            timg = targets[b]["masks"][t].float().tolist()
            cands = over[m].tolist()
            unc = [-abs(bilinear(pimg, x, y)) for x, y in cands]
            best = sorted(range(len(cands)), key=lambda i: unc[i], reverse=True)[:k]
            pts = [cands[i] for i in best] + extra[m].tolist()
            xs = [bilinear(pimg, x, y) for x, y in pts]
            ys = [bilinear(timg, x, y) for x, y in pts]
            ce_sum += sum(bce(a, c) for a, c in zip(xs, ys)) / len(pts)
            sig = [sigmoid(a) for a in xs]
            dice_sum += 1 - (2 * sum(s * c for s, c in zip(sig, ys)) + 1) / (sum(sig) + sum(ys) + 1)
            m += 1
    return ce_sum / num_masks, dice_sum / num_masks


def brute_cate(logits: torch.Tensor, labels: torch.Tensor, ignore: int = 255) -> float:
    total, n = 0.0, 0
    b, k, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                c = int(labels[i, y, x])
                if c == ignore:
                    continue
                total += -log_softmax(logits[i, :, y, x].tolist())[c]
                n += 1
    return total / n


def _synthetic(seed: int = 0, bs: int = 2, q: int = 5, k: int = 4, h: int = 8, w: int = 12, num_aux: int = 2):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (bs, h, w), generator=g)
    labels[0, :2, :3] = 255
    labels[1, 5:, 7:] = 255

    def pred():
        return {"pred_logits": torch.randn(bs, q, k + 1, generator=g) * 2,
                "pred_masks": torch.randn(bs, q, h // 2, w // 2, generator=g) * 3}

    out = pred()
    out["aux_outputs"] = [pred() for _ in range(num_aux)]
    out["sem_seg_logits"] = torch.randn(bs, k, h, w, generator=g)
    return out, labels, g


def _points(targets, keys, num_points, oversample, importance, g):
    m = sum(len(t["labels"]) for t in targets)
    pts = {}
    for key in keys:
        for b in range(len(targets)):
            pts[f"matcher/{key}/{b}"] = torch.rand(1, num_points, 2, generator=g)
        pts[f"criterion_oversample/{key}"] = torch.rand(m, int(num_points * oversample), 2, generator=g)
        pts[f"criterion_random/{key}"] = torch.rand(m, num_points - int(importance * num_points), 2, generator=g)
    return pts


def test_every_term_matches_brute_force():
    k, num_points, oversample, importance, eos = 4, 12, 3.0, 0.75, 0.1
    out, labels, g = _synthetic(k=k)
    targets = targets_from_label_maps(labels, k)
    num_masks = sum(len(t["labels"]) for t in targets)
    keys = ["final", "0", "1"]
    pts = _points(targets, keys, num_points, oversample, importance, g)
    sampler = RecordedPointSampler(pts)
    crit = SetCriterion(k, HungarianMatcher(2.0, 5.0, 5.0, num_points, sampler), 2.0, 5.0, 5.0, 0.4, eos,
                        num_points, oversample, importance, True, 255, sampler)
    indices: dict = {}
    raw = crit.unweighted(out, targets, labels, indices_out=indices)
    assert list(raw) == ["loss_ce", "loss_cate", "loss_mask", "loss_dice", "loss_ce_0", "loss_cate_0", "loss_mask_0",
                         "loss_dice_0", "loss_ce_1", "loss_cate_1", "loss_mask_1", "loss_dice_1"]
    preds = {"final": out, "0": out["aux_outputs"][0], "1": out["aux_outputs"][1]}
    for key, pred in preds.items():
        sfx = "" if key == "final" else f"_{key}"
        ce = brute_ce(pred["pred_logits"], indices[key], targets, k, eos)
        assert float(raw["loss_ce" + sfx]) == pytest.approx(ce, rel=1e-5)
        mask, dice = brute_mask_dice(pred["pred_masks"], targets, indices[key], pts[f"criterion_oversample/{key}"],
                                     pts[f"criterion_random/{key}"], num_points, importance, num_masks)
        assert float(raw["loss_mask" + sfx]) == pytest.approx(mask, rel=1e-5)
        assert float(raw["loss_dice" + sfx]) == pytest.approx(dice, rel=1e-5)
    assert float(raw["loss_cate"]) == pytest.approx(brute_cate(out["sem_seg_logits"], labels), rel=1e-5)
    for sfx in ("_0", "_1"):  # the cate term exists only for the final prediction
        assert raw["loss_cate" + sfx].shape == (1,) and float(raw["loss_cate" + sfx]) == 0.0

    weighted = crit(out, targets, labels)
    w = {"loss_ce": 2.0, "loss_cate": 0.4, "loss_mask": 5.0, "loss_dice": 5.0}
    for name, value in weighted.items():
        assert float(value.sum()) == pytest.approx(w[name.rsplit("_", 1)[0] if name[-1].isdigit() else name]
                                                   * float(raw[name].sum()), rel=1e-6)


def test_no_targets_gives_zero_mask_losses_with_gradient():
    out, labels, _ = _synthetic(k=3, num_aux=1)
    out["pred_masks"].requires_grad_(True)
    labels[:] = 255
    targets = targets_from_label_maps(labels, 3)
    crit = build_criterion(tiny_loss_cfg(num_points=16), num_classes=3)
    losses = crit(out, targets, labels)
    assert float(losses["loss_mask"].detach()) == 0.0 and float(losses["loss_dice"].detach()) == 0.0
    assert float(losses["loss_cate"]) == 0.0  # every pixel ignored
    sum(v.sum() for v in losses.values()).backward()
    assert out["pred_masks"].grad is not None


def tiny_loss_cfg(**loss):
    cfg = load_config("semask-tiny-ade20k", {f"loss.{k}": v for k, v in loss.items()})
    return cfg


def test_weight_dict_and_config_values():
    cfg = load_config("semask-tiny-ade20k", {"loss.class_weight": 3.0, "loss.cate_weight": 0.7,
                                             "loss.no_object_weight": 0.2, "loss.num_points": 64,
                                             "loss.oversample_ratio": 2.0, "loss.importance_sample_ratio": 0.5})
    crit = build_criterion(cfg)
    assert crit.num_classes == 150 and crit.num_points == 64 and crit.matcher.num_points == 64
    assert crit.matcher.cost_class == 3.0
    assert float(crit.empty_weight[-1]) == pytest.approx(0.2) and float(crit.empty_weight[:-1].min()) == 1.0
    wd = crit.weight_dict(2)
    assert wd["loss_ce"] == 3.0 and wd["loss_cate_1"] == 0.7 and wd["loss_mask_0"] == 5.0
    assert sorted(wd) == sorted(f"{n}{s}" for n in ("loss_ce", "loss_cate", "loss_mask", "loss_dice")
                                for s in ("", "_0", "_1"))
    no_ds = build_criterion(load_config("semask-tiny-ade20k", {"loss.deep_supervision": False}), num_classes=3)
    out, labels, _ = _synthetic(k=3, num_aux=2)
    keys = list(no_ds(out, targets_from_label_maps(labels, 3), labels))
    assert keys == ["loss_ce", "loss_cate", "loss_mask", "loss_dice"]


def test_label_maps_are_padded_to_the_logits():
    out, labels, _ = _synthetic(k=3, num_aux=0)
    crit = build_criterion(tiny_loss_cfg(num_points=16), num_classes=3)
    targets = targets_from_label_maps(labels, 3)
    a = crit.unweighted(out, targets, labels)["loss_cate"]
    out2 = dict(out)
    out2["sem_seg_logits"] = torch.cat([out["sem_seg_logits"], torch.randn(2, 3, 4, 12)], dim=2)
    b = crit.unweighted(out2, targets, labels)["loss_cate"]  # labels padded with ignore: same loss
    assert float(a) == pytest.approx(float(b), rel=1e-6)
    with pytest.raises(ValueError, match="larger"):
        crit.unweighted(out, targets, torch.cat([labels, labels], dim=1))


# ---------------------------------------------------------------------------- reference (original code)


def _reference():
    ref = require_reference("loss_mini_ade")
    load = lambda name: torch.load(ref / name, weights_only=True)  # noqa: E731
    return load("expected.pt"), load("inputs.pt"), load("points.pt")["dict"]


def _check_against_reference(outputs: dict, expected: dict, inputs: dict, points: dict, cfg) -> None:
    crit = build_criterion(cfg, point_sampler=RecordedPointSampler(points))
    targets = targets_from_label_maps(inputs["label_maps"], cfg.model.num_classes)
    for ours, theirs in zip(targets, inputs["targets"]):
        assert torch.equal(ours["labels"], theirs["labels"]) and torch.equal(ours["masks"], theirs["masks"])
    indices: dict = {}
    raw = crit.unweighted(outputs, targets, inputs["label_maps"], indices_out=indices)
    for key in expected["indices_order"]:
        for (qr, tr), (qe, te) in zip(indices[key], expected["indices"][key]):
            assert torch.equal(qr, qe) and torch.equal(tr, te), key
    weights = crit.weight_dict(len(outputs["aux_outputs"]))
    assert weights == expected["weight_dict"]
    weighted = {k: v * weights[k] for k, v in raw.items()}
    assert list(weighted) == expected["loss_keys_order"]
    for k, v in weighted.items():
        assert v.shape == expected["losses_tensors"][k].shape, k
        assert float(v.sum()) == pytest.approx(expected["losses"][k], rel=1e-5, abs=1e-7), k
        assert float(raw[k].sum()) == pytest.approx(expected["unweighted_losses"][k], rel=1e-5, abs=1e-7), k
    total = sum(weighted.values())
    assert float(total.sum()) == pytest.approx(expected["total"], rel=1e-5)


def test_reference_losses_from_saved_outputs(golden_ade):
    expected, inputs, points = _reference()
    sem = SemanticHead()([expected["cls_features"][k] for k in ("res2", "res3", "res4", "res5")])
    outputs = {"pred_logits": expected["pred_logits"], "pred_masks": expected["pred_masks"],
               "aux_outputs": [{"pred_logits": a, "pred_masks": b}
                               for a, b in zip(expected["aux_pred_logits"], expected["aux_pred_masks"])],
               "sem_seg_logits": sem}
    assert float(expected["num_masks"]) == 9.0
    _check_against_reference(outputs, expected, inputs, points, load_config(golden_ade.config))


def test_reference_losses_from_the_golden_model(golden_ade):
    expected, inputs, points = _reference()
    model = golden_ade.model()
    with torch.no_grad():
        outputs = model(inputs["images"], with_semantic=True)
    _check_against_reference(outputs, expected, inputs, points, model.config)


def test_cate_from_stride4_logits_equals_full_resolution():
    """The model's training output ("sem_seg_fused", upsampled in bands by the criterion) gives the same
    cate loss and gradient as the full-resolution logits, with ignored and padded label pixels."""
    out, labels, g = _synthetic(k=3, num_aux=0, h=24, w=36)
    labels = labels[:, :22, :31]  # smaller than the padded logits: padded with the ignore value
    targets = targets_from_label_maps(labels, 3)
    crit = build_criterion(tiny_loss_cfg(num_points=16), num_classes=3)
    fused = torch.randn(2, 3, 6, 9, generator=g, requires_grad=True)
    full = SemanticHead.upsample(fused)
    plain = dict(out, sem_seg_logits=full)
    banded = dict(out, sem_seg_fused=fused)
    both = dict(out, sem_seg_fused=fused, sem_seg_logits=full.detach() * 0)  # the stride-4 map is used
    a = crit.unweighted(plain, targets, labels)["loss_cate"]
    (ga,) = torch.autograd.grad(a, fused)
    b = crit.unweighted(banded, targets, labels)["loss_cate"]
    (gb,) = torch.autograd.grad(b, fused)
    c = crit.unweighted(both, targets, labels)["loss_cate"]
    a, b, c = float(a.detach()), float(b.detach()), float(c.detach())
    assert a > 0 and b == pytest.approx(a, rel=1e-6) and c == b
    assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-7)
