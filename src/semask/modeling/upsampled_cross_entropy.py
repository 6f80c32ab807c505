"""Cross-entropy of bilinearly upsampled logits, computed band by band.

SeMask's "cate" loss is the cross-entropy of the semantic head's stride-4 logits after a 4x bilinear
upsampling (align_corners=True). Done plainly, the full-resolution logits, their log-softmax (saved
for backward) and the gradients of both are held at once: four (B, K, H, W) float32 maps, 300 MiB each
for ADE20K's 150 classes at 2 x 512 x 512. Here the output rows are processed in bands: each band's
logits are interpolated from the few input rows it reads, its loss summed and its gradient with
respect to those input rows taken at once. Only the low-resolution gradient is kept for backward
(the loss is a scalar, so backward just scales it); one band lives at a time.

Columns are interpolated by `F.interpolate` itself, on the band's input rows only; each output row is
then a lerp of two of those, with the source coordinates and weights of `F.interpolate(...,
align_corners=True)` (src = (in - 1) / (out - 1) * dst in float32). Values and gradients equal the
plain computation to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BAND_ELEMENTS = 1 << 21  # logits per band (8 MiB of float32)


def source_rows(in_size: int, out_size: int, device: torch.device | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output row of an align_corners=True linear resize: (lower input row, upper input row,
    weight of the upper row), computed in float32 as torch's CPU and CUDA kernels do."""
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    if out_size > 1:
        scale = torch.tensor(float(in_size - 1), dtype=torch.float32) / float(out_size - 1)
    else:
        scale = torch.tensor(0.0)
    src = dst * scale.to(device)
    lower = src.to(torch.int64).clamp_(max=in_size - 1)
    weight = src - lower.to(torch.float32)
    upper = torch.where(lower < in_size - 1, lower + 1, lower)
    return lower, upper, weight


def _band_logits(rows: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, weight: torch.Tensor,
                 width: int) -> torch.Tensor:
    """Output rows of the upsampled map from the input rows `rows` (B, K, n, w); indices relative to them.
    Columns first (on the n input rows only), then each output row as a lerp of two of them."""
    wide = F.interpolate(rows, size=(rows.shape[2], width), mode="bilinear", align_corners=True)
    return torch.lerp(wide.index_select(2, lower), wide.index_select(2, upper), weight.view(1, 1, -1, 1))


class _UpsampledCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropies of the upsampled logits; the gradient is taken during forward."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, band_rows: int,
                need_grad: bool) -> torch.Tensor:
        b, k, h, w = logits.shape
        out_h, out_w = labels.shape[-2:]
        lower, upper, weight = source_rows(h, out_h, logits.device)
        grad = torch.zeros_like(logits, dtype=torch.float32) if need_grad else None
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        with torch.autocast(logits.device.type, enabled=False):
            for r0 in range(0, out_h, band_rows):
                r1 = min(out_h, r0 + band_rows)
                a0, a1 = int(lower[r0]), int(upper[r1 - 1]) + 1
                rows = logits[:, :, a0:a1].detach().float()
                with torch.enable_grad():
                    rows.requires_grad_(need_grad)
                    band = _band_logits(rows, lower[r0:r1] - a0, upper[r0:r1] - a0, weight[r0:r1], out_w)
                    loss = F.cross_entropy(band, labels[:, r0:r1], ignore_index=ignore_index, reduction="sum")
                if need_grad:
                    grad[:, :, a0:a1] += torch.autograd.grad(loss, rows)[0]
                total += loss.detach()
        ctx.save_for_backward(grad if need_grad else None)
        ctx.logits_dtype = logits.dtype
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_output).to(ctx.logits_dtype), None, None, None, None


def upsampled_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                            band_elements: int = BAND_ELEMENTS) -> torch.Tensor:
    """Summed cross-entropy of `logits` (B, K, h, w) bilinearly resized (align_corners=True) to the
    labels' size (B, H, W) against `labels` (int64; `ignore_index` pixels excluded), computed in bands
    of about `band_elements` logits. Equals
    `F.cross_entropy(F.interpolate(logits, (H, W), mode="bilinear", align_corners=True), labels,
    ignore_index=ignore_index, reduction="sum")` to float32 rounding, values and gradients."""
    if logits.dim() != 4 or labels.dim() != 3 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"expected logits (B, K, h, w) and labels (B, H, W), got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    b, k, _, _ = logits.shape
    band_rows = max(1, band_elements // max(1, b * k * labels.shape[-1]))
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    return _UpsampledCrossEntropy.apply(logits, labels.long(), ignore_index, band_rows, need_grad)
