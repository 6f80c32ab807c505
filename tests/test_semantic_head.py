"""SemanticHead: fuse at stride 4, then a 4x align_corners upsampling; the golden head output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semask.modeling.semantic_head import SemanticHead


def test_forward_is_fuse_then_4x_upsample():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 5, 16 // s, 24 // s, generator=g) for s in (1, 2, 4, 8)]
    head = SemanticHead()
    fused = head.fuse(maps)
    assert fused.shape == (2, 5, 16, 24)
    expected = maps[0].clone()
    for i, x in enumerate(maps[1:], start=1):
        for _ in range(i):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        expected = expected + x
    assert torch.allclose(fused, expected, atol=1e-6)
    out = head(maps)
    assert out.shape == (2, 5, 64, 96)
    assert torch.equal(out, F.interpolate(fused, size=(64, 96), mode="bilinear", align_corners=True))


def test_golden_semantic_head(golden):
    e = golden.expected
    maps = [e["cls_features"][k] for k in ("res2", "res3", "res4", "res5")]
    out = SemanticHead()(maps)
    assert (out - e["sem_head_pred"]).abs().max() < 1e-5
