"""Small shared layers: MLPs, stochastic depth, convolution with a norm, sine positional encoding."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .lean_ffn import gelu_mlp, use_lean_ffn


def in_graph_capture() -> bool:
    """True while the forward is being traced into a graph (TorchScript, ONNX export, torch.compile): then
    shape-keyed caches and data-dependent fast paths must step aside and let the graph hold the values."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


class Mlp(nn.Module):
    """Linear -> GELU -> Dropout -> Linear -> Dropout (the transformer-block MLP of Swin).

    In training without dropout it runs `lean_ffn.gelu_mlp`: the same forward, but backward keeps only
    the input and fc1's output (`save_hidden=True`) or only the input (`save_hidden=False`, fc1 is
    recomputed in backward) instead of also GELU's output (and the preceding norm's output, when the
    norm is passed to `forward`).
    """

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, save_hidden: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)
        self.save_hidden = save_hidden
        self.lean_ffn = True  # `lean_ffn.set_lean_ffn` switches it

    def forward(self, x: torch.Tensor, norm: nn.LayerNorm | None = None) -> torch.Tensor:
        """mlp(x), or mlp(norm(x)) with a norm (then the lean path recomputes the norm's output too)."""
        if use_lean_ffn(self, self.drop.p, x):
            return gelu_mlp(x, self.fc1, self.fc2, self.save_hidden, norm)
        if norm is not None:
            x = norm(x)
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class MLP(nn.Module):
    """`num_layers` Linear layers with ReLU between them (the mask-embedding head of Mask2Former)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == last else F.relu(layer(x))
        return x


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `p` in training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvNorm(nn.Conv2d):
    """Conv2d followed by an optional norm and activation; the norm is the `norm` child (detectron2 layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True, norm: nn.Module | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2-style Xavier fill (kaiming uniform with a=1) used by Mask2Former for its convolutions."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.constant_(module.bias, 0)


def sine_position_encoding(batch: int, h: int, w: int, num_pos_feats: int, device: torch.device,
                           temperature: float = 10000.0, scale: float = 2 * math.pi) -> torch.Tensor:
    """Normalised 2-D sine positional encoding (B, 2 * num_pos_feats, H, W), DETR style, no padding mask."""
    ones = torch.ones((batch, h, w), device=device, dtype=torch.float32)
    y_embed = ones.cumsum(1)
    x_embed = ones.cumsum(2)
    eps = 1e-6
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class PositionEncodingCache:
    """Caches sine encodings by (h, w, device) so repeated forward passes at one size do not recompute them.

    The encoding does not depend on the batch: it is computed for one image and expanded.
    """

    def __init__(self, num_pos_feats: int, max_entries: int = 16) -> None:
        self.num_pos_feats = num_pos_feats
        self.max_entries = max_entries
        self._cache: dict[tuple[int, int, str, bool], torch.Tensor] = {}
        self.enabled = True  # off while exporting: the encoding is then traced from the (symbolic) shape

    def __call__(self, batch: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        if not self.enabled or in_graph_capture():  # exported / compiled graphs hold the encoding
            return sine_position_encoding(1, h, w, self.num_pos_feats, device).expand(batch, -1, -1, -1)
        # inference-mode tensors must not leak into autograd graphs, so they are cached apart
        key = (h, w, str(device), torch.is_inference_mode_enabled())
        pos = self._cache.get(key)
        if pos is None:
            pos = sine_position_encoding(1, h, w, self.num_pos_feats, device)
            if len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = pos
        return pos.expand(batch, -1, -1, -1)
