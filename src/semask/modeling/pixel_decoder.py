"""Mask2Former's MSDeformAttn pixel decoder.

res5, res4, res3 (coarsest first) are projected to `conv_dim` (1x1 conv + GroupNorm(32)), given a sine
positional encoding plus a learned level embedding, and refined by deformable-attention encoder layers.
An FPN step then builds the stride-4 map from res2, and a 1x1 conv gives `mask_features`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvNorm, PositionEncodingCache, c2_xavier_fill
from .lean_ffn import norm_relu_ffn, use_lean_ffn
from .ms_deform_attn import MSDeformAttn


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN.

    In training without dropout norm1 and the FFN run as `lean_ffn.norm_relu_ffn` (same forward; backward
    keeps only norm1's input and recomputes norm1's output and the FFN's hidden ReLU output).
    """

    def __init__(self, d_model: int = 256, d_ffn: int = 1024, dropout: float = 0.0, n_levels: int = 3,
                 n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.lean_ffn = True  # `lean_ffn.set_lean_ffn` switches it

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], offset_normalizer: torch.Tensor) -> torch.Tensor:
        src2 = self.self_attn(src + pos, reference_points, src, spatial_shapes, offset_normalizer)
        src = src + self.dropout1(src2)
        if use_lean_ffn(self, self.dropout2.p, src):  # same forward, keeps only norm1's input for backward
            src, src2 = norm_relu_ffn(src, self.norm1, self.linear1, self.linear2)
        else:
            src = self.norm1(src)
            src2 = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(src2))


class MSDeformAttnEncoder(nn.Module):
    """A stack of encoder layers sharing reference points (pixel centres of every level)."""

    def __init__(self, layers: list[MSDeformAttnEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """(1, S, L, 2): the normalised (x, y) centre of every token, repeated for every level."""
        refs = []
        for h, w in spatial_shapes:
            ref_y, ref_x = torch.meshgrid(  # arange + 0.5 == linspace(0.5, n - 0.5, n), and traces for export
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5, indexing="ij")
            refs.append(torch.stack((ref_x.reshape(-1)[None] / w, ref_y.reshape(-1)[None] / h), -1))
        ref = torch.cat(refs, 1)
        return ref[:, :, None].expand(-1, -1, len(spatial_shapes), -1)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, spatial_shapes: list[tuple[int, int]]) -> torch.Tensor:
        ref = self.reference_points(spatial_shapes, src.device)
        if torch.jit.is_tracing():  # ONNX export: sizes are traced values, torch.tensor would freeze them
            normalizer = torch.stack([torch.stack([w, h]) for h, w in spatial_shapes]).to(src.dtype)
        else:
            normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=src.dtype, device=src.device)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes, normalizer)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Holds the learned level embedding and the encoder (checkpoint layout: `transformer.*`)."""

    def __init__(self, d_model: int, nhead: int, num_encoder_layers: int, dim_feedforward: int,
                 dropout: float, num_feature_levels: int, enc_n_points: int) -> None:
        super().__init__()
        self.encoder = MSDeformAttnEncoder([
            MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
            for _ in range(num_encoder_layers)
        ])
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]
                ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        shapes = [(s.shape[2], s.shape[3]) for s in srcs]
        src_flat = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos_flat = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[i].view(1, 1, -1)
                              for i, p in enumerate(pos_embeds)], 1)
        return self.encoder(src_flat, pos_flat, shapes), shapes


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder producing `mask_features` (stride 4) and three multi-scale features (coarsest first)."""

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], transformer_in_indices: Sequence[int],
                 conv_dim: int = 256, mask_dim: int = 256, norm: str = "GN", transformer_dropout: float = 0.0,
                 transformer_nheads: int = 8, transformer_dim_feedforward: int = 1024,
                 transformer_enc_layers: int = 6, n_points: int = 4, common_stride: int = 4) -> None:
        super().__init__()
        if norm not in ("GN", ""):
            raise ValueError(f"pixel decoder norm must be 'GN' or '' (none), got {norm!r}")
        self.in_channels = list(in_channels)
        self.transformer_in_indices = list(transformer_in_indices)
        t_channels = [in_channels[i] for i in self.transformer_in_indices]
        t_strides = [in_strides[i] for i in self.transformer_in_indices]
        self.num_levels = len(t_channels)
        # from low to high resolution
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for c in t_channels[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)
        self.transformer = MSDeformAttnTransformerEncoderOnly(
            conv_dim, transformer_nheads, transformer_enc_layers, transformer_dim_feedforward,
            transformer_dropout, self.num_levels, n_points)
        self.pe_layer = PositionEncodingCache(conv_dim // 2)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=1)
        c2_xavier_fill(self.mask_features)
        self.maskformer_num_feature_levels = 3
        stride = min(t_strides)
        self.num_fpn_levels = max(0, (stride // common_stride).bit_length() - 1)
        use_bias = norm == ""
        self.fpn_indices = list(range(self.num_fpn_levels))
        for idx in self.fpn_indices:
            lateral = ConvNorm(in_channels[idx], conv_dim, 1, bias=use_bias,
                               norm=nn.GroupNorm(32, conv_dim) if norm else None)
            output = ConvNorm(conv_dim, conv_dim, 3, padding=1, bias=use_bias,
                              norm=nn.GroupNorm(32, conv_dim) if norm else None, activation=F.relu)
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """features: res2..res5 (fine to coarse). Returns (mask_features, multi-scale features coarsest first)."""
        srcs, pos = [], []
        for idx, fi in enumerate(self.transformer_in_indices[::-1]):
            x = features[fi].float()
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x.shape[0], x.shape[2], x.shape[3], x.device))
        y, shapes = self.transformer(srcs, pos)
        bs = y.shape[0]
        out = [z.transpose(1, 2).reshape(bs, -1, h, w)
               for z, (h, w) in zip(y.split([h * w for h, w in shapes], dim=1), shapes)]
        for idx in self.fpn_indices[::-1]:
            x = features[idx].float()
            cur = getattr(self, f"adapter_{idx + 1}")(x)
            y = cur + F.interpolate(out[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
            out.append(getattr(self, f"layer_{idx + 1}")(y))
        return self.mask_features(out[-1]), out[:self.maskformer_num_feature_levels]
