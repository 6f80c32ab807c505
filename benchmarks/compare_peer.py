#!/usr/bin/env python
"""semask against the peer implementation, side by side in one run on this machine.

The peer is ../shared/benchmarks/peer_hf_mask2former.py: HuggingFace transformers' Mask2Former with a
Swin-T backbone (random weights). It runs in its own virtual environment, created on first use:
    python3 -m venv VENV && VENV/bin/pip install torch==2.13.0 transformers psutil scipy pillow
(scipy: the peer's Hungarian matcher; pillow: its image processor).

For every repetition and phase (inference: batch 1 including the label map; training step: batch 2,
full loss with matching and point sampling, backward, AdamW) ours and the peer run one after the
other, each in a fresh subprocess, the order alternating between repetitions. Both use the same
threads, input size, warm-up and iteration counts, and report peak RSS the same way (ru_maxrss of the
phase's own process, which includes building the model). The load average of the machine is recorded
next to every measurement.

Prints a table of medians over the repetitions with ratios, and writes everything as JSON.

Usage:
  python benchmarks/compare_peer.py [--reps 3] [--size 512] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PEER = REPO / ".." / "shared" / "benchmarks" / "peer_hf_mask2former.py"
PEER_PACKAGES = ["torch==2.13.0", "transformers", "psutil", "scipy", "pillow"]


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def ensure_peer_venv(venv: Path) -> Path:
    """The peer's python, creating its virtual environment on first use."""
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import torch, transformers, psutil, scipy, PIL"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating the peer environment in {venv} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES], check=True)
    return python


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    out = proc.stdout.strip()
    start = out.find("{")
    return json.loads(out[start:])


def ours(args: argparse.Namespace, phase: str) -> dict:
    cmd = [args.python, "-m", "semask", "-q", "benchmark", "--config", args.config, "--size", str(args.size),
           "--threads", str(args.threads), "--json"]
    if phase == "infer":
        cmd += ["--mode", "infer", "--batch", "1", "--warmup", "2", "--iters", str(args.infer_iters)]
        if not args.flops:
            cmd.append("--no-flops")
    else:
        cmd += ["--mode", "train", "--batch", str(args.train_batch), "--warmup", "1", "--iters",
                str(args.train_iters), "--no-flops"]
    t0 = time.time()
    load = load_average()
    r = run_json(cmd)
    res = {"latency_s": r["latency_s"]["median"], "latency_s_all": r["latency_s_all"],
           "peak_rss_mib": r["peak_mem_mib"], "rss_after_build_mib": r.get("rss_after_build_mib"),
           "load_before": load, "load_after": load_average(), "wall_s": round(time.time() - t0, 1)}
    if "matmul_fraction" in r:
        res.update({k: r[k] for k in ("flops", "achieved_flops_per_s", "matmul_flops_per_s", "matmul_fraction")})
    if phase == "train":
        res["loss"] = r.get("loss_last")
    return res


def peer(args: argparse.Namespace, python: Path, phase: str) -> dict:
    cmd = [str(python), str(args.peer_script), "--phase", phase, "--size", str(args.size), "--threads",
           str(args.threads), "--train-batch", str(args.train_batch), "--warmup", "2",
           "--infer-iters", str(args.infer_iters), "--train-iters", str(args.train_iters)]
    t0 = time.time()
    load = load_average()
    r = run_json(cmd)
    key = "infer_latency_s_median" if phase == "infer" else "train_step_s_median"
    allk = "infer_latency_s_all" if phase == "infer" else "train_step_s_all"
    return {"latency_s": r[key], "latency_s_all": r[allk], "peak_rss_mib": r[f"{phase}_peak_rss_mib"],
            "rss_after_build_mib": r.get(f"{phase}_rss_after_build_mib"), "load_before": load,
            "load_after": load_average(), "wall_s": round(time.time() - t0, 1)}


def summarise(runs: dict) -> dict:
    """Medians over repetitions and ratios for each phase."""
    out = {}
    for phase, reps in runs.items():
        o_lat = statistics.median(r["ours"]["latency_s"] for r in reps)
        p_lat = statistics.median(r["peer"]["latency_s"] for r in reps)
        o_rss = statistics.median(r["ours"]["peak_rss_mib"] for r in reps)
        p_rss = statistics.median(r["peer"]["peak_rss_mib"] for r in reps)
        s = {"ours_latency_s": o_lat, "peer_latency_s": p_lat, "speedup": p_lat / o_lat,
             "ours_peak_rss_mib": o_rss, "peer_peak_rss_mib": p_rss, "rss_ratio": o_rss / p_rss,
             "per_rep_speedup": [r["peer"]["latency_s"] / r["ours"]["latency_s"] for r in reps],
             "load_range": [min(min(r["ours"]["load_before"], r["peer"]["load_before"]) for r in reps),
                            max(max(r["ours"]["load_after"], r["peer"]["load_after"]) for r in reps)]}
        fr = [r["ours"]["matmul_fraction"] for r in reps if "matmul_fraction" in r["ours"]]
        if fr:
            s["ours_matmul_fraction"] = statistics.median(fr)
            s["ours_flops"] = reps[0]["ours"]["flops"]
        out[phase] = s
    return out


def table(summary: dict, args: argparse.Namespace) -> str:
    lines = [f"semask ({args.config}) vs peer (transformers Mask2Former Swin-T), {args.size}x{args.size}, "
             f"threads {args.threads}, medians of {args.reps} alternating repetitions",
             "",
             "| phase | ours latency (s) | peer latency (s) | speedup (peer/ours) | ours peak RSS (MiB) "
             "| peer peak RSS (MiB) | RSS ratio (ours/peer) | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"infer": "inference, batch 1, incl. label map",
             "train": f"training step, batch {args.train_batch}"}
    for phase, s in summary.items():
        lo, hi = s["load_range"]
        lines.append(f"| {names[phase]} | {s['ours_latency_s']:.2f} | {s['peer_latency_s']:.2f} | "
                     f"{s['speedup']:.2f}x | {s['ours_peak_rss_mib']:.0f} | {s['peer_peak_rss_mib']:.0f} | "
                     f"{s['rss_ratio']:.2f} | {lo:.1f}-{hi:.1f} |")
    if "infer" in summary and "ours_matmul_fraction" in summary["infer"]:
        s = summary["infer"]
        lines += ["", f"ours, inference: {s['ours_flops'] / 1e9:.1f} GFLOP per image, achieved FLOP/s = "
                      f"{100 * s['ours_matmul_fraction']:.0f}% of the fp32 matmul rate measured in the same process "
                      f"(median over repetitions)"]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--infer-iters", type=int, default=5)
    ap.add_argument("--train-iters", type=int, default=3)
    ap.add_argument("--phases", default="infer,train", help="comma-separated: infer, train")
    ap.add_argument("--config", default="semask-tiny-ade20k")
    ap.add_argument("--python", default=sys.executable, help="python that has semask installed (ours)")
    ap.add_argument("--peer-venv", type=Path, default=Path("/tmp/semask-peer-venv"))
    ap.add_argument("--peer-script", type=Path, default=DEFAULT_PEER)
    ap.add_argument("--no-flops", dest="flops", action="store_false",
                    help="skip counting FLOPs in our inference runs")
    ap.add_argument("--json", type=Path, help="write all measurements here")
    args = ap.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    for p in phases:
        if p not in ("infer", "train"):
            ap.error(f"unknown phase {p!r}")
    if not args.peer_script.exists():
        ap.error(f"peer script not found: {args.peer_script}")
    peer_python = ensure_peer_venv(args.peer_venv)
    runs: dict[str, list] = {p: [] for p in phases}
    for rep in range(args.reps):
        for phase in phases:
            order = ("ours", "peer") if rep % 2 == 0 else ("peer", "ours")
            entry = {}
            for who in order:
                entry[who] = ours(args, phase) if who == "ours" else peer(args, peer_python, phase)
                print(f"rep {rep + 1} {phase:5s} {who:4s} {entry[who]['latency_s']:.3f} s  peak RSS "
                      f"{entry[who]['peak_rss_mib']:.0f} MiB  load {entry[who]['load_before']:.1f}",
                      file=sys.stderr, flush=True)
            entry["order"] = list(order)
            runs[phase].append(entry)
    summary = summarise(runs)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "nproc": os.cpu_count(),
                          "platform": platform.platform()},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "runs": runs, "summary": summary}
    text = table(summary, args)
    report["table"] = text
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))
    print()
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
