"""The GPU benchmark set of RESULTS.md in one command, each run in its own process under a time limit.

SeMask-L at 640x640 (by default): inference batch 1 and 8, training step batch 4, each in fp32, bf16
autocast and bf16 + torch.compile, with the deformable attention in pure PyTorch (grid_sample); the
bf16 matmul rate of the card measured once; optionally the error of the approximate paths against the
float32 goldens (benchmarks/approx_error.py). Results stream to OUT/results.jsonl as each run ends and a
table goes to OUT/summary.md, so a run cut short still leaves what it measured.

    python benchmarks/gpu_suite.py --out DIR [--reference ../shared/reference] [--deadline-s 520]
                                   [--runs infer:1:bf16,infer:1:bf16+compile,...] [--approx-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNS = [  # (mode, batch, dtype, compile): eager runs first, the slow-to-start compiled runs last
    ("infer", 1, "fp32", False), ("infer", 1, "bf16", False),
    ("infer", 8, "fp32", False), ("infer", 8, "bf16", False),
    ("train", 4, "fp32", False), ("train", 4, "bf16", False),
    ("infer", 1, "bf16", True), ("train", 4, "bf16", True), ("infer", 8, "bf16", True),
]


def parse_runs(text: str) -> list[tuple[str, int, str, bool]]:
    """`mode:batch:dtype[+compile],...` -> RUNS-style tuples, in the order given."""
    runs = []
    for item in filter(None, text.split(",")):
        try:
            mode, batch, dtype = item.strip().split(":")
            compiled = dtype.endswith("+compile")
            dtype = dtype.removesuffix("+compile")
            if mode not in ("infer", "train") or dtype not in ("fp32", "bf16"):
                raise ValueError
            runs.append((mode, int(batch), dtype, compiled))
        except ValueError:
            raise SystemExit(f"error: --runs item {item!r} is not mode:batch:dtype[+compile] "
                             "(mode infer|train, dtype fp32|bf16), e.g. train:4:bf16+compile") from None
    return runs


def python_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def run_json(cmd: list[str], timeout: float, log) -> tuple[dict | None, str]:
    """Run `cmd`, return (the last JSON object it printed or None, status)."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1), env=python_env(),
                              cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else b or ""  # noqa: E731
        log.write(f"timed out after {timeout:.0f} s\n{text(exc.stdout)[-4000:]}{text(exc.stderr)[-3000:]}\n")
        return None, f"timed out after {timeout:.0f} s"
    log.write(proc.stdout[-4000:] + proc.stderr[-4000:] + f"\n(rc {proc.returncode}, "
              f"{time.perf_counter() - start:.1f} s)\n")
    log.flush()
    text = proc.stdout.strip()
    if proc.returncode == 0 and text.startswith("{"):
        try:  # one (indented) JSON object
            return json.loads(text), "ok"
        except json.JSONDecodeError:  # JSON lines: the last one
            return json.loads(text.splitlines()[-1]), "ok"
    return None, f"failed (rc {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or ''}"


def matmul_rates(device: str, timeout: float, log) -> dict | None:
    """The bf16 and fp32 matmul rates of `device` (FLOP/s), its name and torch's version."""
    code = ("import json, torch; from semask.benchmark import matmul_flops_per_s; "
            f"d = torch.device({device!r}); "
            "print(json.dumps({'bf16': matmul_flops_per_s(d, torch.bfloat16, reps=20), "
            "'fp32': matmul_flops_per_s(d, torch.float32, reps=10), "
            "'device_name': torch.cuda.get_device_name(d) if d.type == 'cuda' else 'cpu', "
            "'torch': torch.__version__}))")
    out, _ = run_json([sys.executable, "-c", code], timeout, log)
    return out


def summary(rows: list[dict], rates: dict | None) -> str:
    """A markdown table of the runs; the FLOP count of a compiled run is its eager twin's."""
    flops = {(r["mode"], r["batch"]): r["flops"] for r in rows if r.get("flops")}
    bf16 = rates["bf16"] if rates else None
    lines = [f"device: {rates.get('device_name') if rates else '?'}, torch {rates.get('torch') if rates else '?'}; "
             f"bf16 matmul {bf16 / 1e12:.0f} TFLOP/s, fp32 matmul {rates['fp32'] / 1e12:.1f} TFLOP/s (8192^3, "
             "this process)" if rates else "matmul rate: not measured", "",
             "| mode | batch | dtype | compile | median s | images/s | peak GiB | GFLOP/step | of bf16 matmul rate | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "latency_s" not in r:
            lines.append(f"| {r['mode']} | {r['batch']} | {r['dtype']} | {r['compile']} | | | | | | {r['status']} |")
            continue
        n = flops.get((r["mode"], r["batch"]))
        med = r["latency_s"]["median"]
        frac = f"{n / med / bf16:.1%}" if n and bf16 else ""
        lines.append(f"| {r['mode']} | {r['batch']} | {r['dtype']} | {r['compile']} | {med:.4f} | "
                     f"{r['images_per_s']:.1f} | {r['peak_mem_mib'] / 1024:.1f} | {n / 1e9 if n else 0:.0f} | "
                     f"{frac} | {r['status']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for results.jsonl, summary.md and log.txt")
    p.add_argument("--config", default="semask-large-ade20k")
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--device", default="cuda")
    p.add_argument("--reference", help="reference folder: also run approx_error.py on its goldens")
    p.add_argument("--deadline-s", type=float, default=520, help="stop starting runs after this many seconds")
    p.add_argument("--compile-timeout-s", type=float, default=240)
    p.add_argument("--no-compile", action="store_true", help="eager runs only")
    p.add_argument("--runs", help="only these runs, in this order: mode:batch:dtype[+compile],... "
                                  "(default: the full set, eager first)")
    p.add_argument("--approx-compile", action="store_true",
                   help="with --reference: also measure the compiled settings' error (compiles the goldens)")
    args = p.parse_args(argv)
    runs = parse_runs(args.runs) if args.runs else RUNS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    left = lambda: args.deadline_s - (time.perf_counter() - start)  # noqa: E731
    rows: list[dict] = []
    with open(out / "log.txt", "a") as log, open(out / "results.jsonl", "a") as jsonl:
        rates = matmul_rates(args.device, 60, log)
        jsonl.write(json.dumps({"matmul_flops_per_s": rates}) + "\n")
        for mode, batch, dtype, compiled in runs:
            if compiled and args.no_compile:
                continue
            if left() < 20:
                rows.append({"mode": mode, "batch": batch, "dtype": dtype, "compile": compiled,
                             "status": "not run (deadline)"})
                continue
            cmd = [sys.executable, "-m", "semask", "benchmark", "--config", args.config, "--size", str(args.size),
                   "--batch", str(batch), "--mode", mode, "--dtype", dtype, "--device", args.device, "--json",
                   "--warmup", "3" if mode == "infer" else "2", "--iters", "10" if mode == "infer" else "5"]
            if compiled:
                cmd += ["--compile", "--no-flops"]
            limit = min(left(), args.compile_timeout_s if compiled else 150)
            t0 = time.perf_counter()
            result, status = run_json(cmd, limit, log)
            row = result or {"mode": mode, "batch": batch, "dtype": dtype, "compile": compiled}
            row["status"], row["wall_s"] = status, round(time.perf_counter() - t0, 1)
            rows.append(row)
            jsonl.write(json.dumps(row) + "\n")
            jsonl.flush()
            (out / "summary.md").write_text(summary(rows, rates))
            print(f"{mode} b{batch} {dtype} compile={compiled}: {status} "
                  f"{row.get('latency_s', {}).get('median', '')} ({row['wall_s']} s)", flush=True)
        if args.reference and left() > 20:  # last: with compile it takes minutes; rows stream to the log
            run_json([sys.executable, "benchmarks/approx_error.py", "--device", args.device,
                      *([] if args.approx_compile else ["--no-compile"]), "--reference", args.reference,
                      "--json", str(out / "approx_error.json")], left(), log)
            print(f"approx_error done at {time.perf_counter() - start:.0f} s", flush=True)
    (out / "summary.md").write_text(summary(rows, rates))
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
