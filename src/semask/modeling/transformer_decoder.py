"""Mask2Former's masked-attention transformer decoder.

Learned queries go through layers of masked cross-attention (to one level of the multi-scale features,
coarsest first, round robin) -> self-attention -> FFN, all post-norm. Before every layer a prediction
head gives class logits and mask logits; the mask logits, resized to the next level, become that
layer's attention mask (sigmoid < 0.5 means "do not attend"; a query with an empty mask attends
everywhere). Every prediction is returned: the last is the output, the others feed deep supervision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, PositionEncodingCache, c2_xavier_fill


class MultiheadAttention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameter names, batch-first, on fused SDPA.

    attn_mask: bool (B or 1, 1, Lq, Lk), True where attention is allowed.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"hidden_dim {embed_dim} must be divisible by nheads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, lq, c = query.shape
        lk = key.shape[1]
        h = self.num_heads
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(b, lq, h, -1).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(b, lk, h, -1).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(b, lk, h, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, c))


class CrossAttentionLayer(nn.Module):
    """Masked cross-attention from queries to image features, residual, LayerNorm (post-norm)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, attn_mask: torch.Tensor | None,
                pos: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        tgt2 = self.multihead_attn(tgt + query_pos, memory + pos, memory, attn_mask)
        return self.norm(tgt + self.dropout(tgt2))


class SelfAttentionLayer(nn.Module):
    """Self-attention among queries, residual, LayerNorm (post-norm)."""

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = tgt + query_pos
        return self.norm(tgt + self.dropout(self.self_attn(q, q, tgt)))


class FFNLayer(nn.Module):
    """Linear -> ReLU -> Linear, residual, LayerNorm (post-norm)."""

    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        tgt2 = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm(tgt + self.dropout(tgt2))


class MultiScaleMaskedTransformerDecoder(nn.Module):
    """The Mask2Former decoder. `dec_layers` counts the prediction from the initial queries (the detectron2
    DEC_LAYERS convention), so it runs `dec_layers - 1` transformer layers and makes `dec_layers` predictions."""

    num_feature_levels = 3

    def __init__(self, in_channels: int, num_classes: int, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 10, mask_dim: int = 256,
                 enforce_input_project: bool = False, pre_norm: bool = False) -> None:
        super().__init__()
        if pre_norm:
            raise ValueError("pre_norm=True is not part of SeMask Mask2Former; only post-norm is implemented")
        if dec_layers < 1:
            raise ValueError(f"dec_layers must be >= 1, got {dec_layers}")
        self.num_heads = nheads
        self.num_layers = dec_layers - 1
        self.pe_layer = PositionEncodingCache(hidden_dim // 2)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(self.num_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(self.num_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward) for _ in range(self.num_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                c2_xavier_fill(conv)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, x: list[torch.Tensor], mask_features: torch.Tensor, with_aux: bool = True) -> dict:
        """x: three multi-scale features (coarsest first); mask_features: (B, mask_dim, H/4, W/4).

        Returns {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4), "aux_outputs": [...]}.
        with_aux=False (inference) skips what only deep supervision needs: the intermediate class logits
        and full-resolution masks; the attention masks are then computed from only the mask-feature
        pixels that their bilinear resize reads (same values, fewer dot products), and "aux_outputs" is [].
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        src, pos, sizes = [], [], []
        bs = x[0].shape[0]
        for i in range(self.num_feature_levels):
            h, w = x[i].shape[-2:]
            sizes.append((h, w))
            pos.append(self.pe_layer(bs, h, w, x[i].device).flatten(2).transpose(1, 2))
            src.append((self.input_proj[i](x[i]).flatten(2) + self.level_embed.weight[i][None, :, None]).transpose(1, 2))
        query_embed = self.query_embed.weight.unsqueeze(0).expand(bs, -1, -1)
        output = self.query_feat.weight.unsqueeze(0).expand(bs, -1, -1)
        classes, masks = [], []
        sampled = {} if not with_aux else None  # level -> mask features at the pixels its resize reads
        for i in range(self.num_layers + 1):
            if i > 0:
                level = (i - 1) % self.num_feature_levels
                output = self.transformer_cross_attention_layers[i - 1](output, src[level], attn_mask, pos[level],
                                                                        query_embed)
                output = self.transformer_self_attention_layers[i - 1](output, query_embed)
                output = self.transformer_ffn_layers[i - 1](output)
            last = i == self.num_layers
            target = sizes[i % self.num_feature_levels]
            if sampled is None or last:
                cls, mask, attn_mask = self.forward_prediction_heads(output, mask_features, target,
                                                                     need_attn_mask=not last)
                classes.append(cls)
                masks.append(mask)
            else:
                attn_mask = self.attention_mask_only(output, mask_features, target, sampled)
        return {
            "pred_logits": classes[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": a, "pred_masks": b} for a, b in zip(classes[:-1], masks[:-1])],
        }

    def forward_prediction_heads(self, output: torch.Tensor, mask_features: torch.Tensor,
                                 target_size: tuple[int, int], need_attn_mask: bool = True
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Class logits, mask logits and the boolean "may attend" mask (B, 1, Q, h*w) for the next layer."""
        decoder_output = self.decoder_norm(output)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        allowed = None
        if need_attn_mask:
            with torch.no_grad():
                allowed = self._allowed(outputs_mask.detach(), target_size)
        return outputs_class, outputs_mask, allowed

    def attention_mask_only(self, output: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int],
                            sampled: dict) -> torch.Tensor:
        """The next layer's attention mask without the full-resolution mask logits (inference).

        A bilinear (align_corners=False) resize by an even integer factor f reads, for output row i, the
        two input rows f*i + f/2 - 1 and f*i + f/2 with weights 1/2 each (likewise for columns). The mask
        logits are computed on those rows and columns only, and resized by 2: the same inputs and the
        same interpolation weights as resizing the full map. Other factors take the full path.
        """
        h4, w4 = mask_features.shape[-2:]
        th, tw = target_size
        fh, fw = h4 // max(th, 1), w4 // max(tw, 1)
        if th * fh != h4 or tw * fw != w4 or fh % 2 or fw % 2:
            return self.forward_prediction_heads(output, mask_features, target_size)[2]
        feats = sampled.get(target_size)
        if feats is None:
            feats = mask_features
            if fh > 2:
                rows = _resize_taps(th, fh, mask_features.device)
                feats = feats.index_select(2, rows)
            if fw > 2:
                cols = _resize_taps(tw, fw, mask_features.device)
                feats = feats.index_select(3, cols)
            sampled[target_size] = feats
        mask_embed = self.mask_embed(self.decoder_norm(output))
        with torch.no_grad():
            return self._allowed(torch.einsum("bqc,bchw->bqhw", mask_embed, feats), target_size)

    @staticmethod
    def _allowed(mask_logits: torch.Tensor, target_size: tuple[int, int]) -> torch.Tensor:
        """sigmoid(resized logits) >= 0.5, and everywhere for a query whose mask is empty: (B, 1, Q, h*w)."""
        attn = F.interpolate(mask_logits, size=target_size, mode="bilinear", align_corners=False)
        blocked = attn.sigmoid().flatten(2) < 0.5
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        return (~blocked).unsqueeze(1)


def _resize_taps(size: int, factor: int, device: torch.device) -> torch.Tensor:
    """Input indices read by an even-factor bilinear downsampling to `size`: f*i + f/2 - 1 and f*i + f/2."""
    first = torch.arange(size, device=device) * factor + factor // 2 - 1
    return torch.stack((first, first + 1), 1).flatten()
