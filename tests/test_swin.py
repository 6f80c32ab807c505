"""Swin building blocks against explicit computations written out in the test."""

from __future__ import annotations

import torch

from semask.modeling.swin import (PatchMerging, WindowAttention, relative_position_index, shifted_window_mask,
                                  window_partition, window_reverse)


def test_window_partition_round_trip():
    x = torch.randn(2, 14, 21, 5)
    w = window_partition(x, 7)
    assert w.shape == (2 * 2 * 3, 49, 5)
    assert torch.equal(w[1].view(7, 7, 5), x[0, 0:7, 7:14])
    assert torch.equal(window_reverse(w, 7, 14, 21), x)


def test_relative_position_index_brute_force():
    ws = 3
    idx = relative_position_index(ws)
    coords = [(i, j) for i in range(ws) for j in range(ws)]
    for a, (ia, ja) in enumerate(coords):
        for b, (ib, jb) in enumerate(coords):
            assert idx[a, b] == (ia - ib + ws - 1) * (2 * ws - 1) + (ja - jb + ws - 1)


def test_shifted_mask_separates_regions():
    hp = wp = 8
    ws, shift = 4, 2
    mask = shifted_window_mask(hp, wp, ws, shift, torch.device("cpu"))
    # region id of every pixel of the shifted map, then compare pairs inside each window
    region = torch.zeros(hp, wp)
    bounds = [(0, hp - ws), (hp - ws, hp - shift), (hp - shift, hp)]
    cnt = 0
    for h0, h1 in bounds:
        for w0, w1 in bounds:
            region[h0:h1, w0:w1] = cnt
            cnt += 1
    wins = window_partition(region[None, :, :, None], ws).squeeze(-1)
    expected = torch.where(wins[:, :, None] == wins[:, None, :], 0.0, -100.0)
    assert torch.equal(mask, expected)


def test_window_attention_equals_explicit_formula():
    torch.manual_seed(0)
    attn = WindowAttention(dim=12, window_size=3, num_heads=3).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2 * 4, 9, 12)
    mask = torch.where(torch.rand(4, 9, 9) > 0.7, -100.0, 0.0)
    for m in (None, mask):
        out = attn(x, m)
        qkv = attn.qkv(x).reshape(8, 9, 3, 3, 4).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * attn.scale, qkv[1], qkv[2]
        logits = q @ k.transpose(-2, -1) + attn.relative_position_bias().unsqueeze(0)
        if m is not None:
            logits = (logits.view(2, 4, 3, 9, 9) + m[None, :, None]).view(8, 3, 9, 9)
        ref = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(8, 9, 12))
        assert torch.allclose(out, ref, atol=1e-5)


def test_patch_merging_neighbour_order_and_odd_sizes():
    merge = PatchMerging(1)
    with torch.no_grad():
        merge.norm.weight.fill_(1)
        merge.norm.bias.zero_()
    x = torch.arange(15, dtype=torch.float32).view(1, 15, 1)  # 3 x 5 map, padded to 4 x 6
    y = merge(x, 3, 5)
    assert y.shape == (1, 2 * 3, 2)
    grid = torch.nn.functional.pad(x.view(1, 3, 5, 1), (0, 0, 0, 1, 0, 1))[0, :, :, 0]
    cat = torch.stack([grid[0::2, 0::2], grid[1::2, 0::2], grid[0::2, 1::2], grid[1::2, 1::2]], -1).view(-1, 4)
    ref = merge.reduction(torch.nn.functional.layer_norm(cat, (4,)))
    assert torch.allclose(y[0], ref, atol=1e-6)


def test_cached_attention_bias_equals_fresh_and_follows_the_table():
    torch.manual_seed(4)
    attn = WindowAttention(dim=8, window_size=3, num_heads=2).eval()
    mask = shifted_window_mask(6, 6, 3, 1, torch.device("cpu"))  # 4 windows
    x = torch.randn(2 * 4, 9, 8)  # batch 2
    with torch.no_grad():
        fresh = attn(x, mask)
        cached = attn(x, mask)  # second call uses the cache
        assert attn._bias_key is not None
        assert torch.equal(fresh, cached)
        attn.relative_position_bias_table.add_(1.0)  # an in-place update must invalidate the cache
        changed = attn(x, mask)
        attn.cache_bias = False
        uncached = attn(x, mask)
    assert not torch.equal(changed, fresh) and torch.equal(changed, uncached)
    # with gradients the bias is never cached, and the table gets a gradient
    out = attn.train()(x, mask)
    out.sum().backward()
    assert attn.relative_position_bias_table.grad is not None


def test_cached_bias_is_dropped_after_a_fused_optimizer_step():
    """A fused AdamW step changes the table without bumping its version counter: the next evaluation must
    still use the new table (train() / eval() drop the cache)."""
    torch.manual_seed(5)
    attn = WindowAttention(dim=8, window_size=3, num_heads=2)
    x = torch.randn(4, 9, 8)
    with torch.no_grad():
        attn.eval()(x)  # fills the cache
    attn.train()
    attn(x).square().sum().backward()
    torch.optim.AdamW(attn.parameters(), lr=0.1, fused=True).step()
    with torch.no_grad():
        after = attn.eval()(x)
        attn.cache_bias = False
        uncached = attn(x)
    assert torch.equal(after, uncached)
