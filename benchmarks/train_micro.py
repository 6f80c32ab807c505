"""CPU time of single training-step pieces, old and new way alternating in one process (1 thread).

    taskset -c 1 python benchmarks/train_micro.py

cate: the semantic loss at 2 x 150 x 128 x 128 -> 512 x 512, forward + backward, plain (full-resolution
upsample + one cross-entropy) vs banded (`upsampled_cross_entropy`). ffn: one pixel-decoder FFN
(2 x 5376 x 256 -> 1024 -> 256) forward + backward, ReLU out of place vs in place. conv1x1: 256 -> 256 at
2 x 128 x 128 forward + backward, conv2d vs baddbmm. adamw / clip: one step over SeMask-T's parameters.
Prints (min, median) milliseconds.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F


def timed(fn, n: int = 5) -> tuple[float, float]:
    fn()
    runs = []
    for _ in range(n):
        t0 = time.process_time()
        fn()
        runs.append(time.process_time() - t0)
    runs.sort()
    return round(runs[0] * 1e3, 1), round(runs[len(runs) // 2] * 1e3, 1)


def main() -> None:
    torch.set_num_threads(1)
    from semask import build_model
    from semask.modeling.upsampled_cross_entropy import upsampled_cross_entropy

    g = torch.Generator().manual_seed(0)
    fused = torch.randn(2, 150, 128, 128, generator=g).requires_grad_()
    labels = torch.randint(0, 150, (2, 512, 512), generator=g)

    def cate_plain():
        full = F.interpolate(fused, size=(512, 512), mode="bilinear", align_corners=True)
        F.cross_entropy(full, labels, ignore_index=255, reduction="sum").backward()
        fused.grad = None

    def cate_banded():
        upsampled_cross_entropy(fused, labels, 255).backward()
        fused.grad = None

    lin1, lin2 = torch.nn.Linear(256, 1024), torch.nn.Linear(1024, 256)
    x = torch.randn(2, 5376, 256, requires_grad=True)

    def ffn(inplace: bool):
        return lambda: lin2(F.relu(lin1(x), inplace=inplace)).sum().backward()

    conv = torch.nn.Conv2d(256, 256, 1)
    xi = torch.randn(2, 256, 128, 128, requires_grad=True)

    def conv2d():
        conv(xi).sum().backward()

    def baddbmm():
        y = torch.baddbmm(conv.bias.view(1, -1, 1), conv.weight.view(1, 256, 256).expand(2, -1, -1), xi.flatten(2))
        y.view(2, 256, 128, 128).sum().backward()

    for rep in range(3):
        print(f"round {rep}: cate plain {timed(cate_plain, 3)} banded {timed(cate_banded, 3)} | "
              f"ffn relu {timed(ffn(False))} relu_ {timed(ffn(True))} | "
              f"conv1x1 conv2d {timed(conv2d)} baddbmm {timed(baddbmm)}", flush=True)

    params = list(build_model("semask-tiny-ade20k").parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    for kw in ({}, {"foreach": True}, {"fused": True}):
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, **kw)
        print("adamw", kw or "loop", timed(opt.step, 3), flush=True)
    for kw in ({}, {"foreach": True}):
        print("clip_grad_norm_", kw or "default", timed(lambda: torch.nn.utils.clip_grad_norm_(params, 0.01, 2.0, **kw), 3))


if __name__ == "__main__":
    main()
