"""Lean window attention: same forward, same gradients as plain autograd, less kept for backward."""

from __future__ import annotations

import pytest
import torch

from semask.modeling.lean_ffn import use_lean_ffn
from semask.modeling.semask_swin import SeMaskSwinTransformer
from semask.modeling.swin import WindowAttention, shifted_window_mask

from test_lean_ffn import assert_grads_close, saved_bytes


def attention_and_input(dim: int = 48, heads: int = 3, windows: int = 4, batch: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    attn = WindowAttention(dim, 7, heads).train()
    with torch.no_grad():  # a non-zero bias table, so that its gradient path matters
        attn.relative_position_bias_table.normal_(0, 1.0)
    x = torch.randn(batch * windows, 49, dim, requires_grad=True)
    return attn, x


def shift_mask(windows: int) -> torch.Tensor:
    side = int(windows ** 0.5) * 7
    mask = shifted_window_mask(side, side, 7, 3, torch.device("cpu"))
    assert mask.shape[0] == windows
    return mask


def run(attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None, lean: bool, save_qkv: bool,
        grad_out: torch.Tensor):
    attn.lean_ffn, attn.save_qkv = lean, save_qkv
    params = [attn.qkv.weight, attn.qkv.bias, attn.relative_position_bias_table, attn.proj.weight]
    out, kept = saved_bytes(lambda: attn(x, mask), attn)
    grads = torch.autograd.grad(out, [x, *params], grad_out)
    return out.detach(), grads, kept, out.grad_fn


def graph_names(fn) -> set[str]:
    names, todo, seen = set(), [fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        todo.extend(f for f, _ in node.next_functions)
    return names


@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("save_qkv", [True, False])
def test_lean_window_attention_matches_plain_autograd(shifted: bool, save_qkv: bool) -> None:
    attn, x = attention_and_input()
    mask = shift_mask(4) if shifted else None
    grad_out = torch.randn(8, 49, 48)
    want, want_grads, plain_kept, plain_fn = run(attn, x, mask, lean=False, save_qkv=True, grad_out=grad_out)
    got, got_grads, lean_kept, lean_fn = run(attn, x, mask, lean=True, save_qkv=save_qkv, grad_out=grad_out)
    assert "_WindowAttentionBackward" in graph_names(lean_fn)
    assert "_WindowAttentionBackward" not in graph_names(plain_fn)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert_grads_close(g, w)
    assert lean_kept < plain_kept
    # qkv(x) is three times x: keeping x only must be much smaller than keeping both
    if not save_qkv:
        assert lean_kept < 0.5 * plain_kept


def test_lean_attention_keeps_only_x_and_small_tensors() -> None:
    attn, x = attention_and_input(dim=96, heads=3, windows=16)
    attn.lean_ffn, attn.save_qkv = True, False
    _, kept = saved_bytes(lambda: attn(x, shift_mask(16)), attn)
    x_bytes = x.numel() * x.element_size()
    # x (for qkv) and the attention output (for proj), plus bias (3 x 49 x 49), mask (16 x 49 x 49) and
    # the bias table's int64 index (49 x 49, for the gather's backward)
    small = (3 + 16) * 49 * 49 * 4 + 49 * 49 * 8
    assert kept <= 2 * x_bytes + small + 1024


def test_lean_attention_only_where_exact() -> None:
    attn, x = attention_and_input()
    assert use_lean_ffn(attn, 0.0, x)
    assert not use_lean_ffn(attn, 0.1, x)  # attention dropout
    attn.eval()
    assert not use_lean_ffn(attn, 0.0, x)
    attn.train()
    with torch.no_grad():
        assert not use_lean_ffn(attn, 0.0, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_lean_ffn(attn, 0.0, x)
    attn.lean_ffn = False
    assert not use_lean_ffn(attn, 0.0, x)


def test_lean_attention_gradient_of_first_input_only() -> None:
    """Weights frozen (fine-tuning a part): only x gets a gradient, and it is still right."""
    attn, x = attention_and_input()
    grad_out = torch.randn(8, 49, 48)
    for p in attn.parameters():
        p.requires_grad_(False)
    attn.lean_ffn = False
    want = torch.autograd.grad(attn(x), x, grad_out)[0]
    attn.lean_ffn, attn.save_qkv = True, False
    got = torch.autograd.grad(attn(x), x, grad_out)[0]
    assert_grads_close(got, want)


def test_backbone_recomputes_only_in_narrow_stages() -> None:
    backbone = SeMaskSwinTransformer(num_classes=5, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                                     recompute_max_dim=64)
    for stage, dim in zip(backbone.layers, backbone.num_features):
        for block in stage.blocks:
            assert block.attn.save_qkv == (dim > 64)
            assert block.mlp.save_hidden == (dim > 64)
