"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch.

Each query attends to `n_points` bilinearly sampled locations per head and per level around its
reference point. Bilinear sampling follows the compiled CUDA kernel of the original code (pixel centres
at +0.5, zeros outside), so no compiled extension is needed and autograd, CPU, GPU, fp16 and bf16 work.

Two samplers compute the same result:
  "gather"        every bilinear tap is read straight from the projected value in its (N, S, M, D)
                  layout by one `embedding_bag` call whose per-tap weight is attention weight x bilinear
                  weight; nothing per level is transposed or stacked. About 10x faster than grid_sample
                  on CPU, with a dedicated backward (sorted scatter-add and a sampled matmul).
  "grid_sample"   one `F.grid_sample` per level (the textbook pure-PyTorch formulation); used on GPU and
                  while tracing for export, where grid_sample is a native kernel / ONNX op.
`MSDeformAttn.sampler = "auto"` picks "gather" on CPU and "grid_sample" elsewhere.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .layers import in_graph_capture

SAMPLERS = ("auto", "gather", "grid_sample")


def ms_deform_attn_sample(value: torch.Tensor, spatial_shapes: list[tuple[int, int]],
                          sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Core of deformable attention with one grid_sample per level.

    value: (N, S, M, D) with S = sum(H_l * W_l); sampling_locations: (N, Lq, M, L, P, 2) in [0, 1] as (x, y);
    attention_weights: (N, Lq, M, L, P). Returns (N, Lq, M * D).
    """
    n, _, m, d = value.shape
    _, lq, _, L, p, _ = sampling_locations.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        # (N, HW, M, D) -> (N*M, D, H, W)
        v = values[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, D, Lq, L*P) weighted by (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, L * p)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights.to(value.dtype)).sum(-1)
    return out.view(n, m * d, lq).transpose(1, 2)


class _Geometry:
    """Per-call constants of the gather sampler: table layout and per (level, point) bounds and strides,
    each contiguous so that it broadcasts over (N, Lq, M) only (broadcasts over small inner dimensions
    are slow on CPU)."""

    def __init__(self, n: int, m: int, hs: list[int], ws: list[int], p: int, starts: list[int], size: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        L = len(hs)
        self.m = m
        self.n, self.size, self.starts, self.hs, self.ws = n, size, starts, hs, ws
        self.index = torch.int32 if n * size * m < 2 ** 31 else torch.int64

        def per_lp(vals: list, dt: torch.dtype) -> torch.Tensor:
            return torch.tensor(vals, dtype=dt, device=device)[:, None].expand(L, p).contiguous()

        self.w_lp, self.h_lp = per_lp(ws, dtype), per_lp(hs, dtype)
        self.row_stride = per_lp([(w + 2) * m for w in ws], self.index)  # table rows from one pixel row to the next
        first = torch.tensor([(st + w + 3) * m for st, w in zip(starts, ws)], dtype=self.index, device=device)
        base = first[None, :, None] + torch.arange(m, dtype=self.index, device=device)[:, None, None]  # (M, L, 1)
        base = base + (torch.arange(n, dtype=self.index, device=device) * (size * m))[:, None, None, None]
        self.base = base.expand(n, m, L, p).contiguous().view(n, 1, m, L, p)  # row of pixel (0, 0), per head

    def taps(self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Table rows and weights of the 4 bilinear taps of every sample, (N, Lq, M, 2, 2, L, P) each,
        taps ordered (y0|y1) x (x0|x1); also the fractional positions fx, fy (N, Lq, M, L, P)."""
        x = torch.minimum(x, self.w_lp).clamp_min_(-1.0)
        y = torch.minimum(y, self.h_lp).clamp_min_(-1.0)
        x0, y0 = x.floor(), y.floor()
        fx, fy = x.sub_(x0), y.sub_(y0)
        rx = x0.to(self.index).mul_(self.m).add_(self.base)
        ry = y0.to(self.index).mul_(self.row_stride)
        rx = torch.stack((rx, rx + self.m), 3)                 # (N, Lq, M, 2, L, P)
        ry = torch.stack((ry, ry + self.row_stride), 3)
        rows = ry[:, :, :, :, None] + rx[:, :, :, None]
        ay1 = fy * a
        wy = torch.stack((a - ay1, ay1), 3)
        wx = torch.stack((1 - fx, fx), 3)
        return rows, wy[:, :, :, :, None] * wx[:, :, :, None], fx, fy


class _BilinearGather(torch.autograd.Function):
    """out[n, q, m] = sum over levels, points and the 4 bilinear taps of weight x table[row]: one
    embedding_bag call. Saves only its inputs; the backward recomputes rows and weights and has a
    closed form: the table gradient is one embedding_bag over the output gradient with the taps sorted
    by table row, the tap gradients are one sampled matmul, and the position / attention-weight
    gradients follow from the bilinear weights."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
                geo: _Geometry) -> torch.Tensor:
        rows, w, _, _ = geo.taps(x, y, a)
        n, lq, m = x.shape[:3]
        k = w[0, 0, 0].numel()
        ctx.save_for_backward(table, x, y, a)
        ctx.geo = geo
        out = F.embedding_bag(rows.view(-1, k), table, per_sample_weights=w.view(-1, k).to(table.dtype), mode="sum")
        return out.view(n, lq, m * table.shape[1])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        table, x, y, a = ctx.saved_tensors
        geo = ctx.geo
        rows, w, fx, fy = geo.taps(x, y, a)
        shape = rows.shape
        k = rows[0, 0, 0].numel()
        flat = rows.reshape(-1)
        bags = flat.numel() // k
        g = grad_out.reshape(bags, -1).to(table.dtype)
        grad_table = grad_x = grad_y = grad_a = None
        if ctx.needs_input_grad[0]:
            grad_table = _scatter_taps(rows, w, g, geo, table.shape[0])
        if any(ctx.needs_input_grad[1:4]):
            gt = _tap_dot_products(table, flat, g, bags, k).view(shape).to(x.dtype)  # dL/d(tap weight)
            g00, g01, g10, g11 = gt[:, :, :, 0, 0], gt[:, :, :, 0, 1], gt[:, :, :, 1, 0], gt[:, :, :, 1, 1]
            gx0, gx1 = fy.mul(g10 - g00).add_(g00), fy.mul(g11 - g01).add_(g01)  # sum over y taps of wy' * g
            if ctx.needs_input_grad[3]:
                grad_a = fx.mul(gx1 - gx0).add_(gx0)
            if ctx.needs_input_grad[1]:
                grad_x = (gx1 - gx0).mul_(a).mul_((x >= -1) & (x <= geo.w_lp))
            if ctx.needs_input_grad[2]:
                gy0, gy1 = fx.mul(g01 - g00).add_(g00), fx.mul(g11 - g10).add_(g10)
                grad_y = (gy1 - gy0).mul_(a).mul_((y >= -1) & (y <= geo.h_lp))
        return grad_table, grad_x, grad_y, grad_a, None


def _scatter_taps(rows: torch.Tensor, w: torch.Tensor, g: torch.Tensor, geo: _Geometry, num_rows: int
                  ) -> torch.Tensor:
    """Table gradient: table_grad[r] = sum of w[tap] * g[bag of tap] over the taps reading row r.

    The four taps of a sample read rows base, base + 1 pixel, base + 1 pixel row, base + both of its
    (y0, x0) tap, with shifts that are constant within a level. So only the base rows are sorted (a
    quarter of the keys): one embedding_bag per tap gathers the weighted gradients by base row, and each
    result is added to the table gradient shifted by its tap's offset, level by level. A shifted sum
    that leaves its level (bottom border row + 1) comes only from taps of weight zero."""
    per_bag = rows[0, 0, 0, 0, 0].numel()  # L x P samples per (n, q, head)
    base = rows[:, :, :, 0, 0].reshape(-1)
    order = torch.sort(base, stable=True)[1]
    counts = torch.bincount(base, minlength=num_rows)
    offsets = counts.cumsum(0) - counts
    bag = torch.div(order, per_bag, rounding_mode="floor")
    n, size, width = geo.n, geo.size, geo.m * g.shape[1]
    grad = None
    for ty in (0, 1):
        for tx in (0, 1):
            part = F.embedding_bag(bag, g, offsets, mode="sum",
                                   per_sample_weights=w[:, :, :, ty, tx].reshape(-1)[order].to(g.dtype))
            if grad is None:  # the (y0, x0) tap: no shift
                grad = part
                continue
            src, dst = part.view(n, size, width), grad.view(n, size, width)
            for start, h, wl in zip(geo.starts, geo.hs, geo.ws):
                shift, span = ty * (wl + 2) + tx, (h + 2) * (wl + 2)
                dst[:, start + shift:start + shift + span] += src[:, start:start + span]
    return grad


def _tap_dot_products(table: torch.Tensor, flat_rows: torch.Tensor, g: torch.Tensor, b: int, k: int) -> torch.Tensor:
    """(B, K) dot products <g[b], table[rows[b, k]]>: a sampled matmul where supported, else chunked."""
    if table.device.type == "cpu" and table.dtype in (torch.float32, torch.float64):
        crow = torch.arange(0, b * k + 1, k, dtype=flat_rows.dtype, device=flat_rows.device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(crow, flat_rows, torch.zeros(b * k, dtype=table.dtype),
                                              (b, table.shape[0]), check_invariants=False)
            return torch.sparse.sampled_addmm(pattern, g, table.t(), beta=0.0).values().view(b, k)
    out = torch.empty(b, k, dtype=table.dtype, device=table.device)
    step = max(1, (1 << 22) // max(1, k * table.shape[1]))
    rows = flat_rows.view(b, k)
    for s in range(0, b, step):
        taps = table.index_select(0, rows[s:s + step].reshape(-1)).view(-1, k, table.shape[1])
        out[s:s + step] = torch.bmm(taps, g[s:s + step, :, None]).squeeze(-1)
    return out


def ms_deform_attn_gather(value: torch.Tensor, spatial_shapes: list[tuple[int, int]], x: torch.Tensor,
                          y: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Core of deformable attention as one weighted gather.

    value: (N, S, M, D); x, y: (N, Lq, M, L, P) sampling positions in pixels of each level (pixel centre
    j at j, i.e. normalised * size - 0.5); attention_weights: (N, Lq, M, L, P). Returns (N, Lq, M * D).

    Every level gets a one-pixel zero border in the gather table, and positions are clamped to
    [-1, size]: a tap outside the level then reads zeros, exactly as zero padding does, with no
    bounds test per tap.
    """
    n, s, m, d = value.shape
    p = x.shape[-1]
    hs = [int(h) for h, _ in spatial_shapes]
    ws = [int(w) for _, w in spatial_shapes]
    parts, starts, size = [], [], 0
    for h, w, v in zip(hs, ws, value.split([h * w for h, w in zip(hs, ws)], 1)):
        parts.append(F.pad(v.reshape(n, h, w, m * d), (0, 0, 1, 1, 1, 1)).view(n, (h + 2) * (w + 2), m * d))
        starts.append(size)
        size += (h + 2) * (w + 2)
    guard = max(ws) + 3  # rows a zero-weight tap past the last level's border may point at
    parts.append(value.new_zeros(n, guard, m * d))
    size += guard
    table = torch.cat(parts, 1).view(n * size * m, d)
    geo = _Geometry(n, m, hs, ws, p, starts, size, x.dtype, value.device)
    return _BilinearGather.apply(table, x, y, attention_weights.to(x.dtype), geo)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (parameter names of the released checkpoints).

    `sampler`: "auto" (gather on CPU, grid_sample elsewhere and while tracing), "gather" or "grid_sample".
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 sampler: str = "auto") -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be divisible by n_heads {n_heads}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampler = sampler
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR initialisation: offsets start on a ring around the reference point."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.n_heads, 1, 1, 2)
        grid = grid.repeat(1, self.n_levels, self.n_points, 1)
        for i in range(self.n_points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def uses_gather(self, device: torch.device) -> bool:
        """Whether forward takes the gather sampler on `device`."""
        if self.sampler == "auto":
            return device.type == "cpu" and not in_graph_capture()  # graphs take grid_sample, as on GPUs
        return self.sampler == "gather"

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], offset_normalizer: torch.Tensor | None = None) -> torch.Tensor:
        """query: (N, Lq, C); reference_points: (N or 1, Lq, L, 2) normalised (x, y); input_flatten: (N, S, C);
        offset_normalizer: (L, 2), default (W_l, H_l) as in Deformable DETR. Returns (N, Lq, C)."""
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        m, L, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten).view(n, s, m, self.d_model // m)
        weights = self.attention_weights(query).view(n, lq, m, L * p)
        weights = F.softmax(weights, -1).view(n, lq, m, L, p)
        if self.uses_gather(query.device):
            x, y = self._pixel_positions(query, reference_points, spatial_shapes, offset_normalizer)
            out = ms_deform_attn_gather(value, spatial_shapes, x, y, weights)
        else:
            if offset_normalizer is None:
                offset_normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype,
                                                 device=query.device)
            offsets = self.sampling_offsets(query).view(n, lq, m, L, p, 2)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / offset_normalizer[None, None, None, :, None, :])
            out = ms_deform_attn_sample(value, spatial_shapes, locations, weights)
        return self.output_proj(out)

    def _pixel_positions(self, query: torch.Tensor, reference_points: torch.Tensor,
                         spatial_shapes: list[tuple[int, int]], offset_normalizer: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampling positions in pixels, x and y each (N, Lq, M, L, P) contiguous.

        The offset projection's rows are reordered (a 192 x C copy) so that it writes all x offsets,
        then all y offsets, instead of interleaving them; with the default normaliser an offset is
        already in pixels: position = reference * size - 0.5 + offset.
        """
        n, lq, _ = query.shape
        m, L, p = self.n_heads, self.n_levels, self.n_points
        c = query.shape[-1]
        weight = self.sampling_offsets.weight.view(m, L, p, 2, c).permute(3, 0, 1, 2, 4).reshape(-1, c)
        bias = self.sampling_offsets.bias.view(m, L, p, 2).permute(3, 0, 1, 2).reshape(-1)
        offsets = F.linear(query, weight, bias).view(n, lq, 2, m, L, p)
        size = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=torch.float32, device=query.device)
        if offset_normalizer is not None and not torch.equal(offset_normalizer.to(size), size):
            scale = (size / offset_normalizer.to(size.dtype)).t()[:, None, :, None]  # (2, 1, L, 1)
            offsets = offsets * scale.to(offsets.dtype)
        ref = (reference_points.to(torch.float32) * size - 0.5).permute(3, 0, 1, 2)  # (2, N', Lq, L)
        ref = ref[:, :, :, None, :, None].expand(2, -1, lq, 1, L, p).contiguous()
        x = offsets[:, :, 0].float() + ref[0]
        y = offsets[:, :, 1].float() + ref[1]
        return x, y
