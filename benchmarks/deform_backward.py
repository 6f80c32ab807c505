"""Time of one deformable-attention gather backward at SeMask-T's training size (CPU).

N 2, levels 64x64 / 32x32 / 16x16 (5376 queries), 8 heads of 32 channels, 4 points: the pixel decoder's
encoder layer at batch 2 and 512x512. Prints the backward seconds of each run (the first is a warm-up).
Run it on two commits to compare (the code under test is the checkout's).

    python benchmarks/deform_backward.py [--threads 2] [--runs 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from semask.modeling.ms_deform_attn import ms_deform_attn_gather


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, m, d, p_, shapes = 2, 8, 32, 4, [(64, 64), (32, 32), (16, 16)]
    s = sum(h * w for h, w in shapes)
    L = len(shapes)
    value = torch.randn(n, s, m, d, requires_grad=True)
    widths = torch.tensor([w for _, w in shapes], dtype=torch.float32).view(L, 1)
    heights = torch.tensor([h for h, _ in shapes], dtype=torch.float32).view(L, 1)
    x = (torch.rand(n, s, m, L, p_) * widths - 0.5).requires_grad_()
    y = (torch.rand(n, s, m, L, p_) * heights - 0.5).requires_grad_()
    a = torch.rand(n, s, m, L, p_).softmax(-1).requires_grad_()
    times = []
    for _ in range(args.runs):
        out = ms_deform_attn_gather(value, shapes, x, y, a)
        grad = torch.randn_like(out)
        t0 = time.perf_counter()
        out.backward(grad)
        times.append(round(time.perf_counter() - t0, 3))
        value.grad = x.grad = y.grad = a.grad = None
    print({"threads": args.threads, "backward_s": times, "median_after_warmup": sorted(times[1:])[len(times[1:]) // 2]})


if __name__ == "__main__":
    main()
