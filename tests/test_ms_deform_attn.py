"""Deformable attention against a per-point bilinear computation written out in the test."""

from __future__ import annotations

import math

import torch

from semask.modeling.ms_deform_attn import MSDeformAttn, ms_deform_attn_sample


def _bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """img (D, H, W); (x, y) normalised in [0, 1], pixel centres at +0.5, zeros outside."""
    d, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=img.dtype)
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            wgt = (1 - abs(px - xx)) * (1 - abs(py - yy))
            if 0 <= xx < w and 0 <= yy < h:
                out += wgt * img[:, yy, xx]
    return out


def test_sampling_matches_explicit_bilinear():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (2, 2)]
    n, m, d, lq, L, p = 2, 2, 3, 5, 2, 3
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, m, L, p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2  # some fall outside
    wts = torch.rand(n, lq, m, L, p, generator=g, dtype=torch.float64)
    out = ms_deform_attn_sample(value, shapes, loc, wts)
    assert out.shape == (n, lq, m * d)
    starts = [0, shapes[0][0] * shapes[0][1]]
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                acc = torch.zeros(d, dtype=torch.float64)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[b, starts[lvl]: starts[lvl] + h * w, head].T.reshape(d, h, w)
                    for pt in range(p):
                        x, y = loc[b, q, head, lvl, pt].tolist()
                        acc += wts[b, q, head, lvl, pt] * _bilinear(img, x, y)
                assert torch.allclose(out[b, q, head * d:(head + 1) * d], acc, atol=1e-10)


def test_gradients_flow_to_value_locations_and_weights():
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 3), (2, 2)]
    value = torch.randn(1, 13, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    loc = (torch.rand(1, 4, 2, 2, 2, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    wts = torch.rand(1, 4, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, lo, w: ms_deform_attn_sample(v, shapes, lo, w), (value, loc, wts))


def test_module_runs_in_half_precisions():
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    shapes = [(4, 4), (2, 2)]
    q = torch.randn(1, 20, 32)
    ref_pts = torch.rand(1, 20, 2, 2)
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    full = attn(q, ref_pts, q, shapes, norm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = attn(q, ref_pts, q, shapes, norm)
    assert half.shape == full.shape and torch.isfinite(half.float()).all()
    assert (half.float() - full).abs().max() < 0.1


def test_gather_sampler_equals_grid_sample_with_gradients():
    """The gather sampler (CPU default) against grid_sample: same values and gradients, points outside too."""
    from semask.modeling.ms_deform_attn import ms_deform_attn_gather

    g = torch.Generator().manual_seed(2)
    shapes = [(3, 4), (2, 2)]
    n, m, d, lq, L, p = 2, 2, 3, 5, 2, 3
    value = torch.randn(n, 16, m, d, generator=g, dtype=torch.float64, requires_grad=True)
    loc = torch.rand(n, lq, m, L, p, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    wts = torch.rand(n, lq, m, L, p, generator=g, dtype=torch.float64, requires_grad=True)
    size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64)
    x = (loc[..., 0] * size[:, 0, None] - 0.5).requires_grad_()
    y = (loc[..., 1] * size[:, 1, None] - 0.5).requires_grad_()
    loc = loc.requires_grad_()
    ref = ms_deform_attn_sample(value, shapes, loc, wts)
    out = ms_deform_attn_gather(value, shapes, x, y, wts)
    assert torch.allclose(out, ref, atol=1e-12)
    grad = torch.randn_like(ref)
    gv, gl, gw = torch.autograd.grad(ref, (value, loc, wts), grad)
    hv, hx, hy, hw = torch.autograd.grad(out, (value, x, y, wts), grad)
    assert torch.allclose(hv, gv, atol=1e-10) and torch.allclose(hw, gw, atol=1e-10)
    # d/dloc = d/dpixel * size
    assert torch.allclose(hx * size[:, 0, None], gl[..., 0], atol=1e-8)
    assert torch.allclose(hy * size[:, 1, None], gl[..., 1], atol=1e-8)
    assert torch.autograd.gradcheck(lambda v, a, b, w: ms_deform_attn_gather(v, shapes, a, b, w), (value, x, y, wts))


def test_module_samplers_agree():
    torch.manual_seed(3)
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.5)
    shapes = [(4, 5), (2, 3)]
    q = torch.randn(2, 26, 32, requires_grad=True)
    ref_pts = torch.rand(1, 26, 2, 2)
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    outs, grads = [], []
    for sampler in ("grid_sample", "gather"):
        attn.sampler = sampler
        assert attn.uses_gather(q.device) == (sampler == "gather")
        out = attn(q, ref_pts, q, shapes, norm)
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [q] + list(attn.parameters())))
    assert (outs[0] - outs[1]).abs().max() < 1e-5
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-4 * max(1.0, a.abs().max().item())
    attn.sampler = "auto"
    assert attn.uses_gather(torch.device("cpu")) and not attn.uses_gather(torch.device("meta"))
