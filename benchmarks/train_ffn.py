"""Memory and CPU time of the lean feed-forward blocks (`semask.modeling.lean_ffn`) against the plain ones.

    taskset -c 1 python benchmarks/train_ffn.py step --ffn plain      # peak RSS + step CPU time, plain FFNs
    taskset -c 1 python benchmarks/train_ffn.py step --ffn hidden     # the default: Mlp keeps x and fc1(x)
    taskset -c 1 python benchmarks/train_ffn.py step --ffn input      # Mlp keeps x only (recomputes fc1)
    taskset -c 1 python benchmarks/train_ffn.py step --norm apart     # the norm before each FFN as a module
    taskset -c 1 python benchmarks/train_ffn.py blocks                # forward+backward of each FFN shape

`step` runs SeMask-T training steps (loss, backward, fused AdamW) at batch 2, 512x512, and prints one JSON
line: peak RSS (ru_maxrss, includes building the model), CPU seconds of every step and the loss.
`--only mlp|encoder` makes only the backbone MLPs or only the pixel-decoder encoder FFNs lean. Run each
setting in its own process. `blocks` times forward + backward of one FFN of every shape SeMask-T has
at that size, plain and lean alternating, and prints the minimum CPU ms of each.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import torch.nn.functional as F
from torch import nn


def set_ffn(mode: str, only: str, norm: str) -> None:
    """Switch the model's FFNs: plain modules, or lean keeping fc1's output ('hidden') or its input only;
    norm 'apart' runs the LayerNorm before a lean FFN as a module (its output is then kept for backward)."""
    from semask.modeling import layers, lean_ffn, pixel_decoder

    def off(*args) -> bool:
        return False

    layers.use_lean_ffn = off if mode == "plain" or only == "encoder" else lean_ffn.use_lean_ffn
    pixel_decoder.use_lean_ffn = off if mode == "plain" or only == "mlp" else lean_ffn.use_lean_ffn
    if norm == "apart":
        def gelu_mlp(x, fc1, fc2, save_hidden=True, norm=None):
            return lean_ffn.gelu_mlp(x if norm is None else norm(x), fc1, fc2, save_hidden)

        def norm_relu_ffn(a, norm, linear1, linear2):
            x = norm(a)
            return x, lean_ffn.relu_ffn(x, linear1, linear2)

        layers.gelu_mlp = gelu_mlp
        pixel_decoder.norm_relu_ffn = norm_relu_ffn


def step_run(a: argparse.Namespace) -> None:
    set_ffn(a.ffn, a.only, a.norm)
    from semask import build_model
    from semask.benchmark import synthetic_training_batch
    from semask.modeling import layers
    from semask.modeling.criterion import build_criterion

    torch.manual_seed(0)
    model = build_model(a.config).train()
    for m in model.modules():
        if isinstance(m, layers.Mlp):
            m.save_hidden = a.ffn != "input"
    cfg = model.config
    images, labels, targets = synthetic_training_batch(cfg, a.batch, a.size)
    criterion = build_criterion(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.solver.base_lr, weight_decay=cfg.solver.weight_decay,
                                  fused=True)
    def step() -> float:  # nothing of the step outlives it (a kept loss would keep its graph's nodes)
        loss = sum(criterion(model(images), targets, labels).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    cpu, losses = [], []
    for _ in range(a.steps):
        t = time.process_time()
        losses.append(round(step(), 5))
        cpu.append(round(time.process_time() - t, 2))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"ffn": a.ffn, "only": a.only, "norm": a.norm, "peak_rss_mib": peak, "step_cpu_s": cpu,
                      "loss": losses}))


def blocks_run(a: argparse.Namespace) -> None:
    from semask.modeling.lean_ffn import gelu_mlp, norm_relu_ffn, relu_ffn

    b, s = a.batch, a.size
    # (name, tokens, channels, blocks of that shape in SeMask-T); every variant includes the LayerNorm before
    shapes = [("mlp stage 1", (s // 4) ** 2, 96, 2), ("mlp stage 2", (s // 8) ** 2, 192, 2),
              ("mlp stage 3", (s // 16) ** 2, 384, 6), ("mlp stage 4", (s // 32) ** 2, 768, 2),
              ("encoder ffn", (s // 8) ** 2 + (s // 16) ** 2 + (s // 32) ** 2, 256, 6)]
    for name, n, c, count in shapes:
        torch.manual_seed(0)
        ln, f1, f2 = nn.LayerNorm(c), nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        x = torch.randn(b, n, c, requires_grad=True)
        gy = torch.randn(b, n, c)
        if name.startswith("mlp"):
            variants = {"plain": lambda: f2(F.gelu(f1(ln(x)))),
                        "hidden": lambda: gelu_mlp(ln(x), f1, f2, True),
                        "input": lambda: gelu_mlp(ln(x), f1, f2, False),
                        "hidden+norm": lambda: gelu_mlp(x, f1, f2, True, norm=ln),
                        "input+norm": lambda: gelu_mlp(x, f1, f2, False, norm=ln)}
        else:
            variants = {"plain": lambda: f2(F.relu(f1(ln(x)))),
                        "input": lambda: relu_ffn(ln(x), f1, f2),
                        "input+norm": lambda: norm_relu_ffn(x, ln, f1, f2)[1]}
        best = {k: float("inf") for k in variants}
        for _ in range(a.reps):
            for k, fn in variants.items():
                t = time.process_time()
                fn().backward(gy)
                best[k] = min(best[k], time.process_time() - t)
        ms = {k: round(v * 1000, 1) for k, v in best.items()}
        print(json.dumps({"block": name, "shape": [b, n, c], "count": count, "min_ms": ms,
                          "extra_ms_per_step": {k: round((v - best["plain"]) * 1000 * count, 1)
                                                for k, v in best.items() if k != "plain"}}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("step", "blocks"))
    p.add_argument("--config", default="semask-tiny-ade20k")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--ffn", choices=("plain", "hidden", "input"), default="hidden")
    p.add_argument("--only", choices=("all", "mlp", "encoder"), default="all")
    p.add_argument("--norm", choices=("fused", "apart"), default="fused")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    step_run(a) if a.what == "step" else blocks_run(a)


if __name__ == "__main__":
    main()
