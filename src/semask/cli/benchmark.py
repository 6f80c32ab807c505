"""`semask benchmark`: latency, memory, FLOPs and achieved FLOP/s of inference or a training step."""

from __future__ import annotations

import argparse
import json

from . import CommandError

EXAMPLE = """examples:
  semask benchmark --config semask-tiny-ade20k --size 512 --threads 2            # inference, label map
  semask benchmark --config semask-tiny-ade20k --mode train --batch 2 --json     # one AdamW step, full loss
  semask benchmark --config semask-large-ade20k --size 640 --batch 8 --device cuda --dtype bf16 --compile
The model has random weights unless --weights is given (speed does not depend on them).
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="latency, peak memory, FLOPs and achieved FLOP/s (inference or training)",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", default="semask-tiny-ade20k",
                   help="preset name, our YAML or a detectron2 YAML (default semask-tiny-ade20k)")
    p.add_argument("--weights", "-w", help="optional weights file (default: random initialisation)")
    p.add_argument("--size", type=int, default=512, help="square input size in pixels (default 512)")
    p.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--mode", choices=("infer", "train"), default="infer",
                   help="infer: label maps under inference_mode; train: forward + full loss + backward + "
                        "AdamW step (default infer)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="fp32, or bf16 autocast")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the repeated layers (semask.compiled.compile_model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2 infer, 1 train)")
    p.add_argument("--iters", type=int, default=None, help="timed runs (default 5 infer, 3 train)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count and the matmul reference")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    for name in ("size", "batch"):
        if getattr(args, name) < 1:
            raise CommandError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be >= 1, got {args.threads}")
    if args.iters is not None and args.iters < 1:
        raise CommandError(f"--iters must be >= 1, got {args.iters}")
    if args.warmup is not None and args.warmup < 0:
        raise CommandError(f"--warmup must be >= 0, got {args.warmup}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CommandError(f"--device {args.device}: CUDA is not available here; use --device cpu")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from ..benchmark import run_benchmark

    if args.mode == "train":  # as `semask train` runs (engine/malloc.py)
        from ..engine.malloc import keep_large_blocks_in_heap

        keep_large_blocks_in_heap()

    r = run_benchmark(config=args.config, size=args.size, batch=args.batch, threads=args.threads, mode=args.mode,
                      dtype=args.dtype, compile=args.compile, warmup=args.warmup, iters=args.iters,
                      device=args.device, weights=args.weights, overrides=args.overrides, flops=not args.no_flops)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    lat = r["latency_s"]
    print(f"{r['config']}  {r['mode']}  {r['size']}x{r['size']}  batch {r['batch']}  {r['dtype']}"
          f"{'  compiled' if r['compile'] else ''}  {r['device']} ({r['device_name']})  threads {r['threads']}")
    print(f"  latency      median {lat['median']:.3f} s   min {lat['min']:.3f}   max {lat['max']:.3f}   "
          f"({r['iters']} runs after {r['warmup']} warm-up)")
    print(f"  throughput   {r['images_per_s']:.2f} images/s")
    print(f"  peak memory  {r['peak_mem_mib']:.0f} MiB ({r['peak_mem_kind']})")
    if "flops" in r:
        print(f"  FLOPs        {r['flops'] / 1e9:.1f} G per run   achieved {r['achieved_flops_per_s'] / 1e9:.1f} "
              f"GFLOP/s = {100 * r['matmul_fraction']:.0f}% of a {r['dtype']} matmul "
              f"({r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s here)")
    return 0
