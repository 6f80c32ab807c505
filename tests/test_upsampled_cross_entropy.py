"""The banded cate loss equals the plain upsample + cross-entropy, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semask.modeling.upsampled_cross_entropy import source_rows, upsampled_cross_entropy


def _plain(logits: torch.Tensor, labels: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    full = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    return F.cross_entropy(full, labels, ignore_index=ignore, reduction="sum")


def _case(b: int, k: int, h: int, w: int, out_h: int, out_w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k, h, w, generator=g) * 3).requires_grad_(True)
    labels = torch.randint(0, k, (b, out_h, out_w), generator=g)
    labels[0, : out_h // 3, : out_w // 2] = 255                     # an ignored block
    labels[-1, out_h - 3:, :] = 255                                  # bottom padding rows
    labels[-1, :, out_w - 5:] = 255                                  # right padding columns
    labels[torch.rand(labels.shape, generator=g) < 0.05] = 255       # scattered ignored pixels
    return logits, labels


@pytest.mark.parametrize("b,k,h,w,scale,band", [
    (2, 7, 8, 12, 4, 1 << 21),     # one band
    (2, 7, 8, 12, 4, 7 * 2 * 48),  # one output row per band
    (1, 5, 7, 9, 4, 5 * 36 * 5),   # odd sizes, five rows per band
    (3, 4, 5, 3, 4, 4 * 3 * 12 * 3),
    (2, 3, 6, 11, 3, 3 * 2 * 33 * 4),  # other scale factor
    (1, 4, 1, 6, 4, 4 * 24),       # a single input row
])
def test_equals_plain_upsample_and_cross_entropy(b, k, h, w, scale, band):
    logits, labels = _case(b, k, h, w, h * scale, w * scale)
    upstream = 0.37
    ref = _plain(logits, labels)
    (ref * upstream).backward()
    ref_grad = logits.grad.clone()
    logits.grad = None
    ours = upsampled_cross_entropy(logits, labels, 255, band_elements=band)
    (ours * upstream).backward()
    assert ours.shape == ref.shape == ()
    assert torch.allclose(ours, ref, rtol=2e-6, atol=1e-5), (float(ours), float(ref))
    assert torch.allclose(logits.grad, ref_grad, rtol=1e-5, atol=2e-6), (logits.grad - ref_grad).abs().max()


def test_source_rows_match_torch_interpolation():
    for n_in, n_out in ((8, 32), (7, 28), (5, 17), (1, 4), (13, 52)):
        lower, upper, weight = source_rows(n_in, n_out)
        x = torch.randn(1, 1, n_in, 1, generator=torch.Generator().manual_seed(n_out))
        mine = x[0, 0, lower, 0] * (1 - weight) + x[0, 0, upper, 0] * weight
        ref = F.interpolate(x, size=(n_out, 1), mode="bilinear", align_corners=True)[0, 0, :, 0]
        assert torch.allclose(mine, ref, rtol=1e-6, atol=1e-6), (n_in, n_out)
        assert int(upper.max()) <= n_in - 1 and float(weight.min()) >= 0 and float(weight.max()) < 1


def test_all_ignored_gives_zero_with_zero_gradient():
    logits, labels = _case(2, 4, 4, 4, 16, 16)
    labels[:] = 255
    loss = upsampled_cross_entropy(logits, labels, 255)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(logits.grad.abs().sum()) == 0.0


def test_no_gradient_work_without_autograd():
    logits, labels = _case(1, 3, 4, 4, 16, 16)
    with torch.no_grad():
        loss = upsampled_cross_entropy(logits, labels, 255)
    assert not loss.requires_grad
    assert torch.allclose(loss, _plain(logits.detach(), labels), rtol=2e-6)


def test_bad_shapes_are_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        upsampled_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 16, 16, dtype=torch.int64))
