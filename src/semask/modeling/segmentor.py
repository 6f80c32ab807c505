"""The whole SeMask Mask2Former model: normalise, pad, backbone, pixel decoder, transformer decoder,
semantic head (training), and semantic inference (per-class scores at the requested size).

Images enter as float RGB in 0..255, either a (B, 3, H, W) batch or a list of (3, H_i, W_i) tensors
of different sizes (padded together, as detectron2's ImageList does).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .pixel_decoder import MSDeformAttnPixelDecoder
from .semantic_head import SemanticHead
from .semask_swin import SeMaskSwinTransformer
from .transformer_decoder import MultiScaleMaskedTransformerDecoder


class MaskFormerHead(nn.Module):
    """Container for the pixel decoder and the transformer decoder (the checkpoint's `sem_seg_head.*`)."""

    def __init__(self, pixel_decoder: MSDeformAttnPixelDecoder, predictor: MultiScaleMaskedTransformerDecoder) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor


class SeMaskMask2Former(nn.Module):
    """SeMask Mask2Former for semantic segmentation.

    forward(images) returns the raw outputs (class logits, mask logits, auxiliary predictions and, in
    training or on request, the semantic head's logits: stride 4 in training, and also at full
    resolution on request). `predict` returns per-class scores.
    """

    def __init__(self, backbone: SeMaskSwinTransformer, pixel_decoder: MSDeformAttnPixelDecoder,
                 predictor: MultiScaleMaskedTransformerDecoder, num_classes: int,
                 pixel_mean: Sequence[float] = (123.675, 116.28, 103.53),
                 pixel_std: Sequence[float] = (58.395, 57.12, 57.375), size_divisibility: int = 32) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = MaskFormerHead(pixel_decoder, predictor)
        self.semantic_head = SemanticHead(backbone.out_strides)
        self.num_classes = num_classes
        self.size_divisibility = size_divisibility
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, images: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise each image, then zero-pad right/bottom to a common size divisible by `size_divisibility`."""
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given")
        for im in images:
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"expected RGB images shaped (3, H, W), got {tuple(im.shape)}")
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        mean, std = self.pixel_mean, self.pixel_std
        if isinstance(images, torch.Tensor):
            x = (images.to(self.device, torch.float32) - mean) / std
            max_h, max_w = x.shape[-2:]
        else:
            normed = [(im.to(self.device, torch.float32) - mean) / std for im in images]
            max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
        d = self.size_divisibility
        if d > 1:
            max_h, max_w = -(-max_h // d) * d, -(-max_w // d) * d
        if isinstance(images, torch.Tensor):
            pad_h, pad_w = max_h - x.shape[-2], max_w - x.shape[-1]
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
            return x, sizes
        x = normed[0].new_zeros((len(normed), 3, max_h, max_w))
        for i, im in enumerate(normed):
            x[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        return x, sizes

    def forward_features(self, x: torch.Tensor, with_semantic: bool, with_aux: bool = True,
                         full_semantic: bool = True) -> dict:
        """Network outputs for an already normalised and padded batch (B, 3, H, W).

        with_semantic: run the semantic head ("sem_seg_fused", stride 4); full_semantic: also its 4x
        upsampling ("sem_seg_logits"). with_aux=False skips the auxiliary predictions (deep supervision
        only; "aux_outputs" is then [])."""
        features, sem_maps = self.backbone(x, with_semantic_maps=with_semantic)
        names = sorted(features, key=lambda k: int(k[3:]))
        mask_features, multi_scale = self.sem_seg_head.pixel_decoder([features[k] for k in names])
        out = self.sem_seg_head.predictor(multi_scale, mask_features, with_aux=with_aux)
        if with_semantic and sem_maps:
            fused = self.semantic_head.fuse([sem_maps[k] for k in names])
            out["sem_seg_fused"] = fused
            if full_semantic:
                out["sem_seg_logits"] = self.semantic_head.upsample(fused)
        return out

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor], with_semantic: bool | None = None,
                with_aux: bool = True) -> dict:
        """Raw outputs for images in 0..255; adds "image_sizes" and "padded_size".

        The semantic head (the "cate" training signal) runs in training mode, or when `with_semantic`:
        "sem_seg_fused" (B, K, Hpad / 4, Wpad / 4) is its output before the final 4x bilinear upsampling
        (align_corners=True), and with `with_semantic=True` "sem_seg_logits" (B, K, Hpad, Wpad) is that
        upsampling. Training mode alone gives only "sem_seg_fused": the criterion upsamples it band by
        band, so the full-resolution map is never held. with_aux=False (inference) skips the auxiliary
        predictions.
        """
        x, sizes = self.preprocess(images)
        semantic = self.training if with_semantic is None else with_semantic
        out = self.forward_features(x, semantic, with_aux, full_semantic=bool(with_semantic))
        out["image_sizes"] = sizes
        out["padded_size"] = (int(x.shape[-2]), int(x.shape[-1]))
        return out

    @staticmethod
    def semantic_inference(mask_cls: torch.Tensor, mask_pred: torch.Tensor) -> torch.Tensor:
        """Per-class scores (K, H, W) = sum over queries of P(class | query) * sigmoid(mask)."""
        probs = F.softmax(mask_cls, dim=-1)[..., :-1]
        return torch.einsum("qc,qhw->chw", probs, mask_pred.sigmoid())

    def scores_from_outputs(self, out: dict, output_sizes: Sequence[tuple[int, int]] | None = None) -> list[torch.Tensor]:
        """Per-class scores for each image: masks upsampled to the padded size, combined, cropped to the
        image and resized (bilinear) to `output_sizes` (default: the image sizes).

        Without autograd the upsampled masks are never held whole: the score map is computed in bands of rows."""
        sizes, output_sizes = self._output_sizes(out, output_sizes)
        results = []
        for i, ((h, w), (oh, ow)) in enumerate(zip(sizes, output_sizes)):
            masks = out["pred_masks"][i]
            hp, wp = out["padded_size"]
            if torch.is_grad_enabled() and (masks.requires_grad or out["pred_logits"].requires_grad):
                full = F.interpolate(masks[None], size=(hp, wp), mode="bilinear", align_corners=False)[0]
                scores = self.semantic_inference(out["pred_logits"][i], full)[:, :h, :w]
            else:
                with torch.autocast(masks.device.type, enabled=False):  # (its CUDA mm would write bf16 to out)
                    probs, dtype = _class_probs(out["pred_logits"][i], masks)
                    scores = masks.new_empty((probs.shape[-1], hp, wp), dtype=dtype)
                    flat = scores.view(scores.shape[0], hp * wp)
                    for r0, r1, sig in _sigmoid_mask_bands(masks, hp, wp):
                        torch.mm(probs.t(), sig.view(sig.shape[0], -1).to(dtype), out=flat[:, r0 * wp:r1 * wp])
                scores = scores[:, :h, :w]
            if (oh, ow) != (h, w):
                scores = F.interpolate(scores[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
            results.append(scores)
        return results

    def labels_from_outputs(self, out: dict, output_sizes: Sequence[tuple[int, int]] | None = None
                            ) -> list[torch.Tensor]:
        """Label maps (argmax of the per-class scores) for each image, as int64 (H, W).

        At the image's own size the scores are never held whole: each band of rows is scored and reduced
        to labels at once. Other output sizes resize the full scores first (as `scores_from_outputs`)."""
        sizes, output_sizes = self._output_sizes(out, output_sizes)
        results = []
        for i, ((h, w), (oh, ow)) in enumerate(zip(sizes, output_sizes)):
            if (oh, ow) != (h, w):
                results.append(self.scores_from_outputs(
                    {**out, "image_sizes": [sizes[i]], "pred_logits": out["pred_logits"][i:i + 1],
                     "pred_masks": out["pred_masks"][i:i + 1]}, [(oh, ow)])[0].argmax(0))
                continue
            masks = out["pred_masks"][i]
            hp, wp = out["padded_size"]
            labels = torch.empty((h, w), dtype=torch.int64, device=masks.device)
            with torch.autocast(masks.device.type, enabled=False):  # the same scores as scores_from_outputs
                probs, dtype = _class_probs(out["pred_logits"][i], masks)
                for r0, r1, sig in _sigmoid_mask_bands(masks, hp, wp, stop=h):
                    scores = torch.mm(sig.view(sig.shape[0], -1).t().to(dtype), probs)  # (rows * Wp, K)
                    labels[r0:r1] = scores.view(r1 - r0, wp, -1)[:, :w].argmax(-1)
            results.append(labels)
        return results

    @staticmethod
    def _output_sizes(out: dict, output_sizes: Sequence[tuple[int, int]] | None
                      ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        sizes = list(out["image_sizes"])
        output_sizes = list(output_sizes) if output_sizes is not None else sizes
        if len(output_sizes) != len(sizes):
            raise ValueError(f"{len(output_sizes)} output sizes for {len(sizes)} images")
        return sizes, [(int(a), int(b)) for a, b in output_sizes]

    def predict(self, images: torch.Tensor | Sequence[torch.Tensor],
                output_sizes: Sequence[tuple[int, int]] | None = None) -> list[torch.Tensor]:
        """Per-class scores (K, H, W) for each image, at `output_sizes` or the images' own sizes."""
        return self.scores_from_outputs(self.forward(images, with_semantic=False, with_aux=False), output_sizes)

    def predict_labels(self, images: torch.Tensor | Sequence[torch.Tensor],
                       output_sizes: Sequence[tuple[int, int]] | None = None) -> list[torch.Tensor]:
        """Label maps (H, W) for each image: the argmax of `predict`, without holding the full scores."""
        return self.labels_from_outputs(self.forward(images, with_semantic=False, with_aux=False), output_sizes)


def _class_probs(logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    """P(class | query) without the no-object column, and the dtype the scores are computed in: at least
    float32, so that bf16 / fp16 model outputs give float32 scores."""
    dtype = torch.promote_types(masks.dtype, torch.float32)
    return F.softmax(logits.to(dtype), dim=-1)[..., :-1], dtype


def _sigmoid_mask_bands(masks: torch.Tensor, height: int, width: int, stop: int | None = None,
                        band_bytes: int = 1 << 22):
    """Yield (r0, r1, sigmoid of the masks bilinearly upsampled to (height, width), rows r0:r1).

    masks: (Q, h, w). With an integer scale factor s, rows r0:r1 of the upsampled map depend only on
    input rows r0/s - 1 .. r1/s (+1); each band is upsampled from its input rows with one row of margin,
    which gives the same values as upsampling the whole map (same source coordinates and weights).
    Otherwise the whole map is upsampled once and cut into bands."""
    q, h, w = masks.shape
    stop = height if stop is None else stop
    rows = max(1, band_bytes // max(1, q * width * masks.element_size()))
    s = height // h
    if s * h != height or s < 1:
        full = F.interpolate(masks[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        for r0 in range(0, stop, rows):
            yield r0, min(stop, r0 + rows), full[:, r0:min(stop, r0 + rows)].sigmoid()
        return
    rows = max(s, rows // s * s)
    for r0 in range(0, stop, rows):
        r1 = min(stop, r0 + rows)
        a0, a1 = max(0, r0 // s - 1), min(h, -(-r1 // s) + 1)
        band = F.interpolate(masks[None, :, a0:a1], size=((a1 - a0) * s, width), mode="bilinear",
                             align_corners=False)[0]
        yield r0, r1, band[:, r0 - a0 * s:r1 - a0 * s].sigmoid()
