"""Swin Transformer building blocks: patch embedding, (shifted) window attention, Swin block, patch merging.

Parameter names and computation order follow the Swin code used by SeMask Mask2Former so that
released checkpoints load unchanged and outputs match to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import DropPath, Mlp, in_graph_capture
from .lean_attention import full_attention_bias, window_attention
from .lean_ffn import use_lean_ffn


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of `window` -> (B * nW, window * window, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // window) * (w // window))
    x = windows.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad a (B, H, W, C) map right/bottom to multiples of `multiple`; returns padded map and pads."""
    h, w = x.shape[1], x.shape[2]
    pad_b = (multiple - h % multiple) % multiple
    pad_r = (multiple - w % multiple) % multiple
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    return x, pad_b, pad_r


def relative_position_index(window: int) -> torch.Tensor:
    """Index into the (2w-1)^2 relative-position table for every pair of tokens in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


def shifted_window_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask (nW, N, N) with -100 between tokens from different regions after the cyclic shift."""
    img = torch.zeros((1, hp, wp, 1), device=device)
    cnt = 0
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in slices:
        for ws in slices:
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = window_partition(img, window).squeeze(-1)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside square windows with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 save_qkv: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.cache_bias = True  # inference caches the gathered bias (+ shift mask); off while exporting
        self.lean_ffn = True  # training keeps only x and qkv(x) for backward (lean_attention); set_lean_ffn
        self.save_qkv = save_qkv  # False: not even qkv(x), backward recomputes it
        self._bias_key: tuple | None = None
        self._bias: torch.Tensor | None = None

    def relative_position_bias(self) -> torch.Tensor:
        """(nH, N, N) bias gathered from the table."""
        n = self.window_size * self.window_size
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)

    def attention_bias(self, mask: torch.Tensor | None, num_windows: int, dtype: torch.dtype) -> torch.Tensor:
        """Additive bias for 4-D fused attention: (1, nH, N, N), or with a shift mask (nW, N, N) the sum
        for every window of the batch, (B * nW, nH, N, N).

        Without gradients (inference) the result is cached until the table changes (its version counter),
        so it is gathered and summed once per input size instead of in every call. Switching between train
        and eval mode drops the cache too: fused optimizer steps update parameters without bumping their
        version counters."""
        table = self.relative_position_bias_table
        cacheable = (self.cache_bias and not (torch.is_grad_enabled() and table.requires_grad)
                     and not in_graph_capture())
        key = None
        if cacheable:
            key = (table._version, table.data_ptr(), str(table.device), dtype, num_windows,
                   torch.is_inference_mode_enabled(),
                   None if mask is None else (mask.data_ptr(), tuple(mask.shape)))
            if self._bias_key == key:
                return self._bias
        bias = full_attention_bias(self.relative_position_bias(), mask, num_windows).to(dtype)
        if key is not None:
            self._bias_key, self._bias = key, bias
        return bias

    def train(self, mode: bool = True) -> "WindowAttention":
        self._bias_key, self._bias = None, None
        return super().train(mode)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) additive or None."""
        bw, n, c = x.shape
        if use_lean_ffn(self, self.attn_drop, x):  # training: keep x (and qkv(x)) for backward
            out = window_attention(x, self.qkv, self.relative_position_bias(), mask, self.num_heads, self.scale,
                                   self.save_qkv)
            return self.proj_drop(self.proj(out))
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # one stacked gradient in backward, not three zero-filled ones
        out = F.scaled_dot_product_attention(
            q * self.scale, k, v, attn_mask=self.attention_bias(mask, bw, q.dtype),
            dropout_p=self.attn_drop if self.training else 0.0, scale=1.0,
        )
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    """Pre-norm Swin block: (shifted) window attention then MLP, each with a residual and drop-path."""

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, recompute: bool = False
                 ) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        # recompute: the lean training path keeps only the inputs of the attention projection and the MLP
        # and recomputes qkv(x) and fc1(x) in backward (cheapest per byte saved where channels are few)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop,
                                    save_qkv=not recompute)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, save_hidden=not recompute)

    def forward(self, x: torch.Tensor, h: int, w: int, shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, H*W, C) -> (B, H*W, C). `shift_mask` is used only by shifted blocks."""
        b, L, c = x.shape
        shortcut = x
        x = self.norm1(x).view(b, h, w, c)
        x, pad_b, pad_r = pad_to_multiple(x, self.window_size)
        hp, wp = x.shape[1], x.shape[2]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = shift_mask
        else:
            mask = None
        windows = self.attn(window_partition(x, self.window_size), mask=mask)
        x = window_reverse(windows, self.window_size, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        if pad_b or pad_r:
            x = x[:, :h, :w, :]
        x = shortcut + self.drop_path(x.reshape(b, L, c))
        return x + self.drop_path(self.mlp(x, norm=self.norm2))  # = mlp(norm2(x))


class PatchEmbed(nn.Module):
    """Split the image into patches: right/bottom zero padding to the patch size, conv, LayerNorm."""

    def __init__(self, patch_size: int = 4, in_chans: int = 3, embed_dim: int = 96, patch_norm: bool = True) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H/p), ceil(W/p))."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if w % p or h % p:
            x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(x)
        if self.norm is not None:
            hh, ww = x.shape[-2:]
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(-1, self.embed_dim, hh, ww)
        return x


class PatchMerging(nn.Module):
    """2x downsampling: concatenate 2x2 neighbours (order (0,0),(1,0),(0,1),(1,1)), LayerNorm, Linear 4C->2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))
