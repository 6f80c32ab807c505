"""One parametrised test over every preset at capped sizes (timm style): forward in train and eval mode,
no NaN, every parameter gets a gradient, and activation checkpointing changes nothing."""

from __future__ import annotations

import pytest
import torch

import semask
from semask.config import preset_names
from semask.modeling.ms_deform_attn import MSDeformAttn

CAP = {
    "model.backbone.depths": [2, 2, 2, 2],
    "model.pixel_decoder.transformer_enc_layers": 1,
    "model.decoder.dec_layers": 3,
    "model.decoder.num_queries": 6,
    "model.backbone.drop_path_rate": 0.0,
}


def _capped(name: str, keep_width: bool = False):
    """The preset with capped depth and, unless keep_width, a width of 8 channels per head (same heads,
    windows, semantic windows, semantic attention modes and classes)."""
    torch.manual_seed(0)
    cap = dict(CAP)
    if not keep_width:
        heads = semask.load_config(name).model.backbone.num_heads
        cap["model.backbone.embed_dim"] = 8 * heads[0]
    model = semask.build_model(name, cap)
    # Fresh semantic layers start as the identity (gamma = 0 and a zero output projection, as published),
    # which also means their residual branch gets no gradient until gamma moves. Open the gates so that
    # gradient flow through every parameter is tested.
    with torch.no_grad():
        for stage in model.backbone.layers:
            for blk in stage.semantic_layer.class_injection:
                blk.gamma.fill_(0.5)
                blk.mlp_res.weight.normal_(0, 0.02)
        # Deformable attention likewise starts with zero offset/weight projections (queries, hence the
        # level embedding, only matter once they move).
        for m in model.modules():
            if isinstance(m, MSDeformAttn):
                m.sampling_offsets.weight.normal_(0, 0.01)
                m.attention_weights.weight.normal_(0, 0.01)
    return model


def _loss(out: dict) -> torch.Tensor:
    total = out["pred_logits"].float().logsumexp(-1).mean() + out["pred_masks"].float().sigmoid().mean()
    for aux in out["aux_outputs"]:
        total = total + aux["pred_logits"].float().logsumexp(-1).mean() + aux["pred_masks"].float().sigmoid().mean()
    return total + out["sem_seg_fused"].float().logsumexp(1).mean()


@pytest.mark.parametrize("name", preset_names())
def test_preset_forward_backward(name):
    model = _capped(name).train()
    x = torch.rand(2, 3, 64, 64) * 255
    out = model(x)
    k = model.num_classes
    assert out["pred_logits"].shape == (2, 6, k + 1)
    assert out["pred_masks"].shape == (2, 6, 16, 16)
    assert len(out["aux_outputs"]) == 2
    assert out["sem_seg_fused"].shape == (2, k, 16, 16)
    loss = _loss(out)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not no_grad, no_grad[:10]
    model.eval()
    with torch.no_grad():
        scores = model.predict([torch.rand(3, 50, 70) * 255])[0]
    assert scores.shape == (k, 50, 70) and torch.isfinite(scores).all()


def test_activation_checkpointing_gives_the_same_outputs_and_gradients():
    results = []
    for ckpt in (False, True):
        model = _capped("semask-tiny-ade20k", keep_width=True).train()
        model.backbone.set_grad_checkpointing(ckpt)
        torch.manual_seed(1)
        out = model(torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(2)) * 255)
        loss = _loss(out)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((out["pred_masks"].detach(), grads))
    (m0, g0), (m1, g1) = results
    assert torch.allclose(m0, m1, atol=1e-6)
    for n in g0:
        assert torch.allclose(g0[n], g1[n], atol=1e-5, rtol=1e-4), n


def test_fresh_semantic_layers_are_the_identity_on_features():
    """Published initialisation: gamma = 0 and mlp_res = 0, so the semantic layer only normalises."""
    model = semask.build_model("semask-tiny-ade20k", CAP).eval()
    stage = model.backbone.layers[0]
    x = torch.randn(1, 16 * 16, 96)
    seg, y = stage.semantic_layer(x, 16, 16)
    assert torch.allclose(y, stage.semantic_layer.norm1(x))
    assert seg.shape == (1, 256, 150)
