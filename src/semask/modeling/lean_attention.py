"""Window attention that keeps only its input (and optionally its q/k/v projection) for backward.

Swin's window attention softmax(q k^T * scale + bias [+ shift mask]) v has a learned bias, so autograd
takes PyTorch's generic attention path in training: it keeps contiguous copies of q, k and v and the
attention probabilities (B*nW, heads, N, N), the largest of them (in SeMask-T's first stage at 512x512,
batch 2: 20 MB per block for the probabilities, 39 MB for the copies). `window_attention` computes the
projection qkv(x) and the attention with the fused kernel and keeps x and the small bias, plus qkv(x)
when `save_qkv` (else backward recomputes it, one matmul); backward recomputes the probabilities (one
batched matmul and a softmax per block) and writes the q/k/v gradients into one packed gradient.

`lean_ffn.use_lean_ffn` says when a module may use it, as for the lean feed-forward blocks: training,
grad enabled, no attention dropout, no autocast, not inside torch.compile (whose partitioner makes its
own choices), the module's `lean_ffn` switch on (one switch for every lean backward of a model,
`lean_ffn.set_lean_ffn`). Gradients equal
plain autograd's to float32 rounding (tests/test_lean_attention.py). Double backward
(`create_graph=True`) through it is not supported, as for the lean feed-forward blocks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _split(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(BW, N, 3C) -> q, k, v views of shape (BW, heads, N, C / heads)."""
    bw, n, c3 = qkv.shape
    return qkv.view(bw, n, 3, num_heads, c3 // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)


def full_attention_bias(bias: torch.Tensor, mask: torch.Tensor | None, num_windows: int) -> torch.Tensor:
    """The additive bias of 4-D fused attention from the relative position bias (heads, N, N) and an
    optional shift mask (nW, N, N): (1, heads, N, N), or with the mask (num_windows, heads, N, N), the mask
    repeated for every image of the batch."""
    full = bias.unsqueeze(0)
    if mask is not None:
        full = full + mask.unsqueeze(1).to(full.dtype)
        if num_windows != mask.shape[0]:
            full = full.repeat(num_windows // mask.shape[0], 1, 1, 1)
    return full


class _WindowAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias + mask) v with (q, k, v) = linear(x, weight, qkv_bias), keeping x (and,
    when `save_qkv`, the projection) plus the small bias and mask for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, qkv_bias: torch.Tensor | None,
                bias: torch.Tensor, mask: torch.Tensor | None, num_heads: int, scale: float,
                save_qkv: bool) -> torch.Tensor:
        ctx.set_materialize_grads(False)
        bw, n, c = x.shape
        qkv = F.linear(x, weight, qkv_bias)
        q, k, v = _split(qkv, num_heads)
        out = F.scaled_dot_product_attention(q * scale, k, v, attn_mask=full_attention_bias(bias, mask, bw),
                                             scale=1.0)
        ctx.num_heads, ctx.scale = num_heads, scale
        ctx.save_for_backward(x, weight, qkv_bias, bias, mask, qkv if save_qkv else None)
        return out.transpose(1, 2).reshape(bw, n, c)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        x, weight, qkv_bias, bias, mask, qkv = ctx.saved_tensors
        need_x, need_w, need_b, need_bias = ctx.needs_input_grad[:4]
        if grad_out is None:
            return (None,) * 8
        bw, n, c = x.shape
        heads, scale = ctx.num_heads, ctx.scale
        if qkv is None:  # recompute the projection
            qkv = F.linear(x, weight, qkv_bias)
        d = c // heads
        # q (scaled), k, v head-major and contiguous: one copy instead of one per matmul operand
        qkv = qkv.view(bw, n, 3, heads, d).permute(2, 0, 3, 1, 4).contiguous()
        q, k, v = qkv.unbind(0)
        q.mul_(scale)
        go = grad_out.view(bw, n, heads, d).transpose(1, 2).contiguous()  # BW, heads, N, d
        # the probabilities again, as in forward
        logits = torch.matmul(q, k.transpose(-2, -1))
        nw = 1 if mask is None else mask.shape[0]  # the bias of one image, broadcast over the batch
        logits.view(bw // nw, nw, heads, n, n).add_(full_attention_bias(bias, mask, nw))
        probs = torch.softmax(logits, -1)
        del logits
        grads = torch.empty_like(qkv)  # gq, gk, gv head-major
        torch.matmul(probs.transpose(-2, -1), go, out=grads[2])
        grad_logits = torch.ops.aten._softmax_backward_data(torch.matmul(go, v.transpose(-2, -1)), probs, -1,
                                                            probs.dtype)
        del probs, go
        grad_bias = grad_logits.sum(0) if need_bias else None
        torch.matmul(grad_logits, k, out=grads[0]).mul_(scale)
        torch.matmul(grad_logits.transpose(-2, -1), q, out=grads[1])
        del grad_logits, q, k, v, qkv
        grad_qkv = grads.permute(1, 3, 0, 2, 4).reshape(bw, n, 3 * c)  # back to the projection's layout
        del grads
        g = grad_qkv.view(bw * n, 3 * c)
        grad_x = g.mm(weight).view(bw, n, c) if need_x else None
        grad_w = g.t().mm(x.reshape(bw * n, c)) if need_w else None
        grad_b = g.sum(0) if need_b and qkv_bias is not None else None
        return grad_x, grad_w, grad_b, grad_bias, None, None, None, None


def window_attention(x: torch.Tensor, qkv: nn.Linear, bias: torch.Tensor, mask: torch.Tensor | None,
                     num_heads: int, scale: float, save_qkv: bool = False) -> torch.Tensor:
    """Multi-head attention inside windows: (q, k, v) = `qkv`(x) for x (BW, N, C), additive `bias`
    (heads, N, N) and optional shift `mask` (nW, N, N); returns (BW, N, C), heads concatenated. The same
    result as `F.scaled_dot_product_attention` on the split projection; backward keeps only x (whose
    projection it recomputes, one matmul) or, with `save_qkv`, the projection too."""
    return _WindowAttention.apply(x, qkv.weight, qkv.bias, bias, mask, num_heads, scale, save_qkv)
