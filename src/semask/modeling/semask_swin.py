"""SeMask Swin backbone: a Swin Transformer whose every stage ends in a semantic layer.

The semantic layer (SeMask) adds a per-token class map S = Linear(C->K)(x) that acts as the query of
an attention over tokens; its output, gated by a learned scalar gamma, is added back to the features.
The class maps of all stages feed the semantic head (a training signal); the features feed the
pixel decoder. Module and parameter names follow the released checkpoints.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.utils.checkpoint as torch_checkpoint
from torch import nn

from .layers import in_graph_capture
from .swin import (PatchEmbed, PatchMerging, SwinTransformerBlock, pad_to_multiple, shifted_window_mask,
                   window_partition, window_reverse)

WINDOWED = "windowed"
GLOBAL = "global"


def default_semantic_attention(num_classes: int, num_stages: int = 4) -> tuple[str, ...]:
    """The published rule: 150 classes -> stages 0-2 windowed and the last global; otherwise all windowed."""
    if num_classes == 150:
        return tuple(WINDOWED if i < 3 else GLOBAL for i in range(num_stages))
    return tuple(WINDOWED if i < 4 else GLOBAL for i in range(num_stages))


class SemanticAttention(nn.Module):
    """One SeMask semantic attention block over a set of tokens (B, N, C).

    Returns the class map S (B, N, K) and x + gamma * Linear(softmax(S keys^T) V).
    gamma and the output Linear start at zero so a fresh block is the identity on features.
    """

    def __init__(self, dim: int, num_classes: int, proj_drop: float = 0.1) -> None:
        super().__init__()
        self.mlp_cls_q = nn.Linear(dim, num_classes)
        self.mlp_cls_k = nn.Linear(dim, num_classes)
        self.mlp_v = nn.Linear(dim, dim)
        self.mlp_res = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal class/key/value maps; zero output projection and gamma."""
        for lin in (self.mlp_cls_q, self.mlp_cls_k, self.mlp_v):
            nn.init.kaiming_normal_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.mlp_res.weight)
        nn.init.zeros_(self.mlp_res.bias)
        nn.init.zeros_(self.gamma)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg_map = self.mlp_cls_q(x)
        keys = self.mlp_cls_k(x)
        values = self.mlp_v(x)
        # softmax(S keys^T) V written out: fused attention would take its slow generic path here, because
        # the query/key width (classes) differs from the value width (channels)
        feats = torch.matmul(torch.softmax(torch.matmul(seg_map, keys.transpose(-2, -1)), -1), values)
        feats = self.proj_drop(self.mlp_res(feats))
        return seg_map, self.gamma * feats + x


class SemanticLayer(nn.Module):
    """LayerNorm, then `num_sem_blocks` chained semantic attention blocks.

    mode "windowed": tokens are split into non-shifted windows of `window_size` (zero padding right and
    bottom, padded tokens take part as keys as in the original, cropped back); mode "global": all tokens.
    """

    def __init__(self, dim: int, num_classes: int, num_sem_blocks: int, window_size: int, mode: str) -> None:
        super().__init__()
        if mode not in (WINDOWED, GLOBAL):
            raise ValueError(f"semantic attention mode must be '{WINDOWED}' or '{GLOBAL}', got {mode!r}")
        self.mode = mode
        self.window_size = window_size
        self.num_classes = num_classes
        self.norm1 = nn.LayerNorm(dim)
        self.class_injection = nn.ModuleList(SemanticAttention(dim, num_classes) for _ in range(num_sem_blocks))

    def forward(self, x: torch.Tensor, h: int, w: int, with_map: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """x: (B, H*W, C) -> (semantic map (B, H*W, K) or None when not `with_map`, features (B, H*W, C))."""
        x = self.norm1(x)
        if self.mode == GLOBAL:
            for blk in self.class_injection:
                seg, x = blk(x)
            return seg if with_map else None, x
        b, _, c = x.shape
        ws = self.window_size
        xw, pad_b, pad_r = pad_to_multiple(x.view(b, h, w, c), ws)
        hp, wp = xw.shape[1], xw.shape[2]
        xw = window_partition(xw, ws)
        for blk in self.class_injection:
            seg, xw = blk(xw)
        x = window_reverse(xw, ws, hp, wp)
        if pad_b or pad_r:
            x = x[:, :h, :w]
        if not with_map:
            return None, x.reshape(b, h * w, c)
        seg = window_reverse(seg, ws, hp, wp)
        if pad_b or pad_r:
            seg = seg[:, :h, :w]
        return seg.reshape(b, h * w, self.num_classes), x.reshape(b, h * w, c)


class SeMaskStage(nn.Module):
    """One backbone stage: Swin blocks (shift 0 / window//2 alternating), semantic layer, patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, num_classes: int,
                 sem_window_size: int, num_sem_blocks: int, semantic_mode: str, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: Sequence[float] = (), downsample: bool = True,
                 use_checkpoint: bool = False, recompute: bool = False) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        dp = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, dp[i], recompute)
            for i in range(depth)
        )
        self.semantic_layer = (SemanticLayer(dim, num_classes, num_sem_blocks, sem_window_size, semantic_mode)
                               if num_sem_blocks > 0 else None)
        self.downsample = PatchMerging(dim) if downsample else None
        self._mask_cache: dict[tuple[int, int, str, bool], torch.Tensor] = {}
        self.cache_shift_mask = True  # off while exporting: the mask is then traced from the (symbolic) shape

    def shift_mask(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The shifted-window mask for a (h, w) map, cached by padded size and device."""
        ws = self.window_size
        if not self.cache_shift_mask or in_graph_capture():
            # traced sizes: no negative floor division (ONNX Div truncates); compiled graphs hold the mask
            return shifted_window_mask(h + (ws - h % ws) % ws, w + (ws - w % ws) % ws, ws, self.shift_size, device)
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        key = (hp, wp, str(device), torch.is_inference_mode_enabled())
        mask = self._mask_cache.get(key)
        if mask is None:
            mask = shifted_window_mask(hp, wp, ws, self.shift_size, device)
            if len(self._mask_cache) >= 16:
                self._mask_cache.pop(next(iter(self._mask_cache)))
            self._mask_cache[key] = mask
        return mask

    def forward(self, x: torch.Tensor, h: int, w: int, with_map: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int, int]:
        """Returns (stage output, semantic map (None when not `with_map`), input of the next stage, its h, w)."""
        mask = self.shift_mask(h, w, x.device) if len(self.blocks) > 1 else None
        for blk in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = torch_checkpoint.checkpoint(blk, x, h, w, mask, use_reentrant=False)
            else:
                x = blk(x, h, w, mask)
        seg = None
        if self.semantic_layer is not None:
            seg, x = self.semantic_layer(x, h, w, with_map)
        if self.downsample is None:
            return x, seg, x, h, w
        return x, seg, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class SeMaskSwinTransformer(nn.Module):
    """SeMask Swin backbone returning res2..res5 features (B, C_i, H/s, W/s) and their semantic maps (B, K, ...)."""

    def __init__(self, num_classes: int, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, sem_window_size: int = 7,
                 num_sem_blocks: int = 1, semantic_attention: Sequence[str] | None = None,
                 patch_size: int = 4, in_chans: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.3, patch_norm: bool = True, use_checkpoint: bool = False,
                 recompute_max_dim: int = 384) -> None:
        """`recompute_max_dim`: in stages of at most this many channels the blocks' lean training path
        recomputes the attention projection and the MLP hidden in backward instead of keeping them (the
        recomputation costs FLOPs in proportion to the channels per byte saved, so narrow stages pay least;
        SeMask-T at 512: stages 1-3)."""
        super().__init__()
        n = len(depths)
        if len(num_heads) != n:
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} must have the same length")
        modes = tuple(semantic_attention) if semantic_attention is not None else default_semantic_attention(
            num_classes, n)
        if len(modes) != n:
            raise ValueError(f"semantic_attention needs one entry per stage ({n}), got {list(modes)}")
        self.num_classes = num_classes
        self.num_features = [int(embed_dim * 2 ** i) for i in range(n)]
        self.semantic_attention = modes
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i in range(n):
            self.layers.append(SeMaskStage(
                dim=self.num_features[i], depth=depths[i], num_heads=num_heads[i], window_size=window_size,
                num_classes=num_classes, sem_window_size=sem_window_size, num_sem_blocks=num_sem_blocks,
                semantic_mode=modes[i], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < n - 1, use_checkpoint=use_checkpoint,
                recompute=self.num_features[i] <= recompute_max_dim,
            ))
        for i in range(n):
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.apply(_init_swin_weights)

    @property
    def out_strides(self) -> list[int]:
        return [4 * 2 ** i for i in range(len(self.layers))]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.layers:
            stage.use_checkpoint = enable

    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table", "absolute_pos_embed"}

    def forward(self, x: torch.Tensor, with_semantic_maps: bool = True
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Features res2..res5 and (unless `with_semantic_maps` is False: inference needs none) the semantic maps."""
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        features: dict[str, torch.Tensor] = {}
        sem_maps: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self.layers):
            out, seg, x, nh, nw = stage(x, h, w, with_semantic_maps)
            name = f"res{i + 2}"
            out = getattr(self, f"norm{i}")(out)
            features[name] = out.view(-1, h, w, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
            if seg is not None:
                sem_maps[name] = seg.view(-1, h, w, self.num_classes).permute(0, 3, 1, 2).contiguous()
            h, w = nh, nw
        return features, sem_maps


def _init_swin_weights(m: nn.Module) -> None:
    """Swin initialisation for training from scratch: truncated-normal Linear, unit LayerNorm.

    Semantic attention blocks are re-initialised afterwards with their own scheme.
    """
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, SemanticAttention):
        m.reset_parameters()
