"""Builders: a Config (or its model section) -> SeMaskMask2Former. The only place that reads configs;
the modules themselves take plain arguments."""

from __future__ import annotations

from ..config import Config, ModelConfig
from .lean_ffn import set_lean_ffn
from .pixel_decoder import MSDeformAttnPixelDecoder
from .segmentor import SeMaskMask2Former
from .semask_swin import SeMaskSwinTransformer
from .transformer_decoder import MultiScaleMaskedTransformerDecoder


def build_backbone(m: ModelConfig) -> SeMaskSwinTransformer:
    b = m.backbone
    return SeMaskSwinTransformer(
        num_classes=m.num_classes, embed_dim=b.embed_dim, depths=b.depths, num_heads=b.num_heads,
        window_size=b.window_size, sem_window_size=b.sem_window_size, num_sem_blocks=b.num_sem_blocks,
        semantic_attention=b.semantic_attention, patch_size=b.patch_size, mlp_ratio=b.mlp_ratio,
        qkv_bias=b.qkv_bias, qk_scale=b.qk_scale, drop_rate=b.drop_rate, attn_drop_rate=b.attn_drop_rate,
        drop_path_rate=b.drop_path_rate, patch_norm=b.patch_norm, use_checkpoint=b.use_checkpoint,
    )


def build_segmentor(m: ModelConfig) -> SeMaskMask2Former:
    backbone = build_backbone(m)
    p, d = m.pixel_decoder, m.decoder
    names = [f"res{i + 2}" for i in range(len(backbone.num_features))]
    pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels=backbone.num_features, in_strides=backbone.out_strides,
        transformer_in_indices=[names.index(f) for f in p.transformer_in_features],
        conv_dim=p.conv_dim, mask_dim=p.mask_dim, norm=p.norm, transformer_dropout=p.transformer_dropout,
        transformer_nheads=p.transformer_nheads, transformer_dim_feedforward=p.transformer_dim_feedforward,
        transformer_enc_layers=p.transformer_enc_layers, n_points=p.n_points, common_stride=p.common_stride,
    )
    predictor = MultiScaleMaskedTransformerDecoder(
        in_channels=p.conv_dim, num_classes=m.num_classes, hidden_dim=d.hidden_dim, num_queries=d.num_queries,
        nheads=d.nheads, dim_feedforward=d.dim_feedforward, dec_layers=d.dec_layers, mask_dim=p.mask_dim,
        enforce_input_project=d.enforce_input_proj, pre_norm=d.pre_norm,
    )
    model = SeMaskMask2Former(backbone, pixel_decoder, predictor, m.num_classes, m.pixel_mean, m.pixel_std,
                              m.size_divisibility)
    set_lean_ffn(model, m.lean_ffn)
    return model


def build_from_config(cfg: Config) -> SeMaskMask2Former:
    return build_segmentor(cfg.model)
