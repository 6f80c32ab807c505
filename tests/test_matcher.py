"""Hungarian matcher: cost matrices against a per-pair brute force, assignment against enumerating every
assignment, and the reference matching of the original implementation (loss_mini_ade golden)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import require_reference
from semask.modeling.matcher import HungarianMatcher, dice_cost, sigmoid_ce_cost
from semask.modeling.point_sampling import RecordedPointSampler, point_sample


def _bce(x: float, y: float) -> float:
    p = 1 / (1 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def brute_costs(logits, masks_pts, labels, tgt_pts, w_class, w_mask, w_dice):
    """Cost matrix from per-pair python loops."""
    q, n, p = logits.shape[0], len(labels), masks_pts.shape[1]
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    out = [[0.0] * n for _ in range(q)]
    for i in range(q):
        for j in range(n):
            xs, ts = masks_pts[i].tolist(), tgt_pts[j].tolist()
            ce = sum(_bce(x, t) for x, t in zip(xs, ts)) / p
            sig = [1 / (1 + math.exp(-x)) for x in xs]
            dice = 1 - (2 * sum(s * t for s, t in zip(sig, ts)) + 1) / (sum(sig) + sum(ts) + 1)
            out[i][j] = w_class * -probs[i][int(labels[j])] + w_mask * ce + w_dice * dice
    return torch.tensor(out)


def brute_assignment(cost: torch.Tensor) -> tuple[list[int], list[int]]:
    """Cheapest injective map targets -> queries by enumeration; rows returned ascending."""
    q, n = cost.shape
    best, best_rows = None, None
    for rows in itertools.permutations(range(q), n):
        total = sum(float(cost[r, j]) for j, r in enumerate(rows))
        if best is None or total < best:
            best, best_rows = total, rows
    pairs = sorted((r, j) for j, r in enumerate(best_rows))
    return [r for r, _ in pairs], [j for _, j in pairs]


def test_cost_terms_match_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 30, generator=g) * 2
    t = (torch.rand(3, 30, generator=g) > 0.5).float() * torch.rand(3, 30, generator=g)  # fractional labels
    ce = sigmoid_ce_cost(x, t)
    dice = dice_cost(x, t)
    for i in range(4):
        for j in range(3):
            xs, ts = x[i].tolist(), t[j].tolist()
            ref_ce = sum(_bce(a, b) for a, b in zip(xs, ts)) / 30
            sig = [1 / (1 + math.exp(-a)) for a in xs]
            ref_dice = 1 - (2 * sum(s * b for s, b in zip(sig, ts)) + 1) / (sum(sig) + sum(ts) + 1)
            assert float(ce[i, j]) == pytest.approx(ref_ce, rel=1e-5)
            assert float(dice[i, j]) == pytest.approx(ref_dice, rel=1e-5, abs=1e-6)


def test_matcher_against_brute_force():
    g = torch.Generator().manual_seed(5)
    bs, q, k, h, w, num_points = 2, 6, 4, 8, 10, 40
    logits = torch.randn(bs, q, k + 1, generator=g) * 2
    pred_masks = torch.randn(bs, q, h // 2, w // 2, generator=g) * 3
    targets = []
    for n in (3, 2):
        labels = torch.randperm(k, generator=g)[:n].sort().values
        masks = torch.rand(n, h, w, generator=g) > 0.6
        targets.append({"labels": labels, "masks": masks})
    points = {f"matcher/final/{b}": torch.rand(1, num_points, 2, generator=g) for b in range(bs)}
    matcher = HungarianMatcher(2.0, 5.0, 5.0, num_points, RecordedPointSampler(points))
    costs = matcher.cost_matrices(logits, pred_masks, targets)
    indices = matcher({"pred_logits": logits, "pred_masks": pred_masks}, targets)
    for b in range(bs):
        c = points[f"matcher/final/{b}"][0]
        pred_pts = point_sample(pred_masks[b][:, None], c.expand(q, -1, -1))[:, 0]
        tgt_pts = point_sample(targets[b]["masks"].float()[:, None], c.expand(len(targets[b]["labels"]), -1, -1))[:, 0]
        ref = brute_costs(logits[b], pred_pts, targets[b]["labels"], tgt_pts, 2.0, 5.0, 5.0)
        torch.testing.assert_close(costs[b], ref, rtol=1e-5, atol=1e-5)
        rows, cols = brute_assignment(ref)
        assert indices[b][0].tolist() == rows
        assert indices[b][1].tolist() == cols
        assert indices[b][0].dtype == torch.int64


def test_matcher_weights_change_the_choice():
    # query 0 has the right class but the wrong mask, query 1 the right mask but a wrong class
    logits = torch.tensor([[[5.0, -5.0, 0.0], [-5.0, 5.0, 0.0]]])
    masks_pred = torch.stack([-torch.ones(4, 4) * 8, torch.ones(4, 4) * 8])[None]
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 4, 4, dtype=torch.bool)}]
    pts = {"matcher/final/0": torch.rand(1, 16, 2)}
    by_class = HungarianMatcher(10.0, 0.01, 0.01, 16, RecordedPointSampler(pts))
    by_mask = HungarianMatcher(0.01, 5.0, 5.0, 16, RecordedPointSampler(pts))
    out = {"pred_logits": logits, "pred_masks": masks_pred}
    assert by_class(out, targets)[0][0].tolist() == [0]
    assert by_mask(out, targets)[0][0].tolist() == [1]


def test_matcher_survives_non_finite_outputs():
    logits = torch.randn(1, 3, 4)
    logits[0, 1, 0] = float("nan")
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 4, 4) > 0.5}]
    m = HungarianMatcher(num_points=8)
    idx = m({"pred_logits": logits, "pred_masks": torch.randn(1, 3, 2, 2)}, targets)
    assert len(idx[0][0]) == 2


def test_matcher_reproduces_reference_indices():
    ref = require_reference("loss_mini_ade")
    expected = torch.load(ref / "expected.pt", weights_only=True)
    inputs = torch.load(ref / "inputs.pt", weights_only=True)
    points = torch.load(ref / "points.pt", weights_only=True)["dict"]
    matcher = HungarianMatcher(2.0, 5.0, 5.0, int(expected["num_points"]), RecordedPointSampler(points))
    preds = {"final": (expected["pred_logits"], expected["pred_masks"])}
    for i, (lg, mk) in enumerate(zip(expected["aux_pred_logits"], expected["aux_pred_masks"])):
        preds[str(i)] = (lg, mk)
    for key, (lg, mk) in preds.items():
        got = matcher({"pred_logits": lg, "pred_masks": mk}, inputs["targets"], key)
        for (gr, gc), (er, ec) in zip(got, expected["indices"][key]):
            assert torch.equal(gr, er) and torch.equal(gc, ec), key
