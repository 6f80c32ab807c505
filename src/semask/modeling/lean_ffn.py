"""Feed-forward blocks that keep less for backward.

The transformer feed-forward block `fc2(act(fc1(x)))` is the largest activation of a training step: its
hidden tensor has 4x the channels of its input. Plain autograd keeps the hidden tensor twice (the
activation's input for its own backward and the activation's output as fc2's input). The functions here
compute the same forward with the same ops in the same order (bitwise the same result) but keep only
the block's input (and, for GELU, optionally fc1's output) and recompute the rest in backward:

- `gelu_mlp(x, fc1, fc2, save_hidden=True)`: keeps x and h = fc1(x), recomputes g = gelu(h) (elementwise).
  With `save_hidden=False` it keeps x only and recomputes h as well (one more matmul). With
  `norm=` a LayerNorm, it computes fc2(gelu(fc1(norm(x)))) and keeps x instead of norm(x) (the norm's
  input is kept by the norm anyway; its output is recomputed, elementwise).
- `relu_ffn(x, linear1, linear2)`: keeps x only and recomputes relu(linear1(x)) (one more matmul).
- `norm_relu_ffn(a, norm, linear1, linear2)`: x = norm(a) and relu_ffn(x) of a post-norm layer, keeping
  only a (and the norm's statistics).

They are exact only without dropout between the layers; `use_lean_ffn` says when a module may use them
(grad enabled, dropout off, no autocast, the module's `lean_ffn` attribute on; `set_lean_ffn` switches it
for a whole model, the `model.lean_ffn` config key at build time). Gradients equal plain autograd's to float32 rounding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def use_lean_ffn(module: nn.Module, dropout_p: float, x: torch.Tensor) -> bool:
    """True when `module` (in training, its `lean_ffn` attribute on) may run a lean FFN (or the lean window
    attention, `lean_attention`) on `x`: grad on, no dropout, no autocast, not inside torch.compile (whose
    partitioner chooses what to recompute)."""
    return (module.training and getattr(module, "lean_ffn", True) and torch.is_grad_enabled()
            and dropout_p == 0.0 and not torch.is_autocast_enabled(x.device.type)
            and not torch.compiler.is_compiling())


def set_lean_ffn(model: nn.Module, enable: bool = True) -> int:
    """Switch the lean path of every feed-forward block in `model` on or off (their `lean_ffn`
    attribute); returns the number of blocks. Off, training keeps plain autograd's activations: for
    small models (narrow widths, small images) memory is no concern and the custom backward's extra
    work costs more than it saves (the `demo` preset trains 9-30 % slower with it, docs/performance.md)."""
    blocks = [m for m in model.modules() if hasattr(m, "lean_ffn")]
    for m in blocks:
        m.lean_ffn = bool(enable)
    return len(blocks)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _linear_grads(grad_out: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, need_x: bool, need_w: bool,
                  need_b: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of `F.linear(inp, weight, bias)` for input, weight and bias (None where not needed).

    `grad_out` and `inp` are 2-D (tokens, features).
    """
    gx = grad_out.mm(weight) if need_x else None
    gw = grad_out.t().mm(inp) if need_w else None
    gb = grad_out.sum(0) if need_b else None
    return gx, gw, gb


class _Ffn(torch.autograd.Function):
    """linear2(act(linear1(x))), x = norm(a) when a LayerNorm is given, keeping for backward only a (the
    norm's mean and 1/std too) and, when `save_hidden`, h = linear1(x). Returns (x, out) with a norm, out
    without one."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, nw: torch.Tensor | None, nb: torch.Tensor | None, w1: torch.Tensor,
                b1: torch.Tensor | None, w2: torch.Tensor, b2: torch.Tensor | None, act: str, save_hidden: bool,
                norm_shape: tuple[int, ...] | None, eps: float) -> Any:
        ctx.set_materialize_grads(False)
        mean = rstd = None
        x = a
        if norm_shape is not None:
            x, mean, rstd = torch.native_layer_norm(a, norm_shape, nw, nb, eps)
        h = F.linear(x, w1, b1)
        if act == "gelu":
            g = F.gelu(h)
        else:
            g = F.relu(h) if save_hidden else h.relu_()
        out = F.linear(g, w2, b2)
        ctx.act, ctx.save_hidden, ctx.norm_shape, ctx.eps = act, save_hidden, norm_shape, eps
        ctx.save_for_backward(a, nw, nb, mean, rstd, w1, b1, w2, h if save_hidden else None)
        return out if norm_shape is None else (x, out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        a, nw, nb, mean, rstd, w1, b1, w2, h = ctx.saved_tensors
        need_a, need_nw, need_nb, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:7]
        norm = ctx.norm_shape is not None
        grad_x, grad_out = grads if norm else (None, grads[0])
        nones = (None,) * 11
        if grad_out is None and grad_x is None:
            return nones
        gx = gw1 = gb1 = gw2 = gb2 = None
        if grad_out is not None:
            x = torch.native_layer_norm(a, ctx.norm_shape, nw, nb, ctx.eps)[0] if norm else a
            x2 = _flat(x)
            gy = _flat(grad_out)
            if ctx.save_hidden:
                h2 = _flat(h)
                g = F.gelu(h2) if ctx.act == "gelu" else F.relu(h2)
            else:
                h2 = F.linear(x2, w1, b1)
                g = F.gelu(h2) if ctx.act == "gelu" else h2.relu_()
            gg, gw2, gb2 = _linear_grads(gy, g, w2, True, need_w2, need_b2)
            if ctx.act == "gelu":
                gh = torch.ops.aten.gelu_backward(gg, h2)
            else:
                gh = torch.ops.aten.threshold_backward(gg, g, 0)
            del g, gg, h2
            gx, gw1, gb1 = _linear_grads(gh, x2, w1, need_a or (norm and (need_nw or need_nb)), need_w1, need_b1)
            del gh, x2
            if gx is not None:
                gx = gx.view(a.shape)
        if grad_x is not None:
            gx = grad_x if gx is None else gx.add_(grad_x)
        if not norm:
            return gx, None, None, gw1, gb1, gw2, gb2, None, None, None, None
        ga = gnw = gnb = None
        if gx is not None:
            ga, gnw, gnb = torch.ops.aten.native_layer_norm_backward(
                gx, a, ctx.norm_shape, mean, rstd, nw, nb, [need_a, need_nw and nw is not None,
                                                            need_nb and nb is not None])
        return ga, gnw, gnb, gw1, gb1, gw2, gb2, None, None, None, None


def _norm_args(norm: nn.LayerNorm | None) -> tuple[Any, Any, Any, float]:
    if norm is None:
        return None, None, None, 0.0
    return norm.weight, norm.bias, tuple(norm.normalized_shape), norm.eps


def gelu_mlp(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear, save_hidden: bool = True,
             norm: nn.LayerNorm | None = None) -> torch.Tensor:
    """fc2(gelu(fc1(x))) (exact GELU), or fc2(gelu(fc1(norm(x)))) with a norm, keeping x (and fc1's output
    when `save_hidden`) for backward; the norm's output is recomputed."""
    nw, nb, shape, eps = _norm_args(norm)
    out = _Ffn.apply(x, nw, nb, fc1.weight, fc1.bias, fc2.weight, fc2.bias, "gelu", save_hidden, shape, eps)
    return out if norm is None else out[1]


def relu_ffn(x: torch.Tensor, linear1: nn.Linear, linear2: nn.Linear) -> torch.Tensor:
    """linear2(relu(linear1(x))) that keeps only x for backward (relu(linear1(x)) is recomputed)."""
    return _Ffn.apply(x, None, None, linear1.weight, linear1.bias, linear2.weight, linear2.bias, "relu", False,
                      None, 0.0)


def norm_relu_ffn(a: torch.Tensor, norm: nn.LayerNorm, linear1: nn.Linear,
                  linear2: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, linear2(relu(linear1(x)))) with x = norm(a), keeping only a (and the norm's statistics) for
    backward: x and the hidden ReLU output are recomputed."""
    nw, nb, shape, eps = _norm_args(norm)
    return _Ffn.apply(a, nw, nb, linear1.weight, linear1.bias, linear2.weight, linear2.bias, "relu", False,
                      shape, eps)
