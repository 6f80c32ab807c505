"""The masked-attention decoder's inference shortcut (with_aux=False) against the full computation."""

from __future__ import annotations

import pytest
import torch

import semask
from semask.modeling.transformer_decoder import _resize_taps

from conftest import tiny_config


@pytest.mark.parametrize("hw", [(64, 96), (96, 64)])
def test_without_aux_final_prediction_is_identical(hw):
    torch.manual_seed(0)
    model = semask.build_model(tiny_config(num_classes=7)).eval()
    x = torch.rand(1, 3, *hw) * 255
    with torch.no_grad():
        full = model(x)
        fast = model(x, with_aux=False)
    assert fast["aux_outputs"] == [] and len(full["aux_outputs"]) == 3
    assert torch.equal(fast["pred_logits"], full["pred_logits"])
    assert torch.equal(fast["pred_masks"], full["pred_masks"])


def test_attention_mask_from_sampled_pixels_equals_resized_full_mask():
    torch.manual_seed(1)
    dec = semask.build_model(tiny_config()).sem_seg_head.predictor.eval()
    output = torch.randn(2, dec.num_queries, 32)
    mask_features = torch.randn(2, 32, 16, 24)
    with torch.no_grad():
        for target in [(2, 3), (4, 6), (8, 12)]:
            _, _, full = dec.forward_prediction_heads(output, mask_features, target)
            fast = dec.attention_mask_only(output, mask_features, target, {})
            assert torch.equal(fast, full)
        # a factor that is not an even integer takes the full path and still agrees
        _, _, full = dec.forward_prediction_heads(output, mask_features, (5, 7))
        assert torch.equal(dec.attention_mask_only(output, mask_features, (5, 7), {}), full)


def test_resize_taps_are_the_rows_bilinear_downsampling_reads():
    # downsampling by 4 with align_corners=False reads input rows 4i+1 and 4i+2 with weight 1/2 each
    assert _resize_taps(3, 4, torch.device("cpu")).tolist() == [1, 2, 5, 6, 9, 10]
    x = torch.randn(1, 1, 12, 1)
    down = torch.nn.functional.interpolate(x, size=(3, 1), mode="bilinear", align_corners=False)
    taps = x[0, 0, _resize_taps(3, 4, torch.device("cpu")), 0].view(3, 2).mean(1)
    assert torch.allclose(down.flatten(), taps)
