"""point_sample against a hand-written bilinear interpolation; importance sampling against a brute-force
selection; keyed samplers (recorded replay, per-image seeds)."""

from __future__ import annotations

import math

import pytest
import torch

from semask.modeling.point_sampling import (PointSampler, RecordedPointSampler, point_sample,
                                            uncertain_point_coords)


def bilinear_brute(img: list[list[float]], x: float, y: float) -> float:
    """Value at normalised (x, y) with pixel centres at (i + 0.5) / size and zeros outside."""
    h, w = len(img), len(img[0])
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            wx = 1 - abs(px - xi)
            wy = 1 - abs(py - yi)
            if 0 <= xi < w and 0 <= yi < h:
                total += wx * wy * img[yi][xi]
    return total


def test_point_sample_matches_bilinear_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g)
    coords = torch.rand(2, 11, 2, generator=g) * 1.2 - 0.1  # some points outside [0, 1]: zero padding
    coords[0, 0] = torch.tensor([0.0, 0.0])
    coords[0, 1] = torch.tensor([1.0, 1.0])
    out = point_sample(x, coords)
    assert out.shape == (2, 3, 11)
    for n in range(2):
        for c in range(3):
            img = x[n, c].tolist()
            for p in range(11):
                ref = bilinear_brute(img, float(coords[n, p, 0]), float(coords[n, p, 1]))
                assert abs(float(out[n, c, p]) - ref) < 1e-5, (n, c, p)


def test_point_sample_x_is_width():
    x = torch.zeros(1, 1, 4, 8)
    x[0, 0, :, 6] = 1.0   # a column near the right
    # pixel centre of column 6 at x = 6.5 / 8, any y
    out = point_sample(x, torch.tensor([[[6.5 / 8, 0.3], [0.3, 6.5 / 8]]]))
    assert float(out[0, 0, 0]) == pytest.approx(1.0)
    assert float(out[0, 0, 1]) == pytest.approx(0.0)


def test_uncertain_point_coords_brute_force():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 1, 6, 9, generator=g) * 3
    num_points, oversample, importance = 20, 3.0, 0.75
    over = torch.rand(3, 60, 2, generator=g)
    extra = torch.rand(3, 5, 2, generator=g)
    sampler = RecordedPointSampler({"criterion_oversample/k": over, "criterion_random/k": extra})
    coords = uncertain_point_coords(logits, num_points, oversample, importance, sampler, "k", [2, 1])
    assert coords.shape == (3, 20, 2)
    for m in range(3):
        img = logits[m, 0].tolist()
        unc = [-abs(bilinear_brute(img, float(cx), float(cy))) for cx, cy in over[m].tolist()]
        order = sorted(range(60), key=lambda i: unc[i], reverse=True)[:15]
        chosen = {tuple(round(v, 6) for v in over[m, i].tolist()) for i in order}
        got = {tuple(round(v, 6) for v in c) for c in coords[m, :15].tolist()}
        assert got == chosen
        assert torch.equal(coords[m, 15:], extra[m])


def test_uncertain_point_coords_all_importance_draws_no_random_tail():
    sampler = RecordedPointSampler({"criterion_oversample/x": torch.rand(1, 8, 2)})
    coords = uncertain_point_coords(torch.randn(1, 1, 4, 4), 4, 2.0, 1.0, sampler, "x", [1])
    assert coords.shape == (1, 4, 2)


def test_recorded_sampler_checks_keys_and_shapes():
    sampler = RecordedPointSampler({"a": torch.zeros(2, 5, 2)})
    assert sampler.draw("a", [1, 1], 5, "cpu").shape == (2, 5, 2)
    with pytest.raises(KeyError):
        sampler.draw("b", [1], 5, "cpu")
    with pytest.raises(ValueError, match="shape"):
        sampler.draw("a", [3], 5, "cpu")


def test_default_sampler_uses_generator():
    a = PointSampler(torch.Generator().manual_seed(3)).draw("k", [2, 1], 7, "cpu")
    b = PointSampler(torch.Generator().manual_seed(3)).draw("other", [3], 7, "cpu")
    assert a.shape == (3, 7, 2) and torch.equal(a, b)  # one draw from the generator, key irrelevant
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0


def test_per_image_seeds_make_draws_independent_of_the_batch():
    s = PointSampler()
    s.set_image_seeds([11, 22])
    both = s.draw("matcher/final", [2, 3], 9, "cpu")
    s.set_image_seeds([22])
    alone = s.draw("matcher/final", [3], 9, "cpu")
    assert torch.equal(both[2:], alone)
    other_key = s.draw("criterion_random/final", [3], 9, "cpu")
    assert not torch.equal(alone, other_key)
    s.set_image_seeds([23])
    assert not torch.equal(alone, s.draw("matcher/final", [3], 9, "cpu"))
    with pytest.raises(ValueError, match="image seeds"):
        s.draw("k", [1, 1], 3, "cpu")
    s.set_image_seeds([5, 22])
    single = s.draw("matcher/final", [3], 9, "cpu", image=1)  # one image of the batch: its own seed
    assert torch.equal(single, alone)


def test_recorded_sampler_per_image_keys():
    pts = {"matcher/final/1": torch.rand(1, 4, 2)}
    assert torch.equal(RecordedPointSampler(pts).draw("matcher/final", [1], 4, "cpu", image=1), pts["matcher/final/1"])
