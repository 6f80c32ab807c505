"""Error of the faster approximate paths (bf16 autocast, torch.compile, TF32) against float32.

Runs the golden models of ../shared/reference (the original implementation's outputs, float32) through
`predict` in each setting and reports, per golden and setting, the largest absolute difference of the
per-class scores from the reference and the share of pixels whose label (argmax) agrees.

    python benchmarks/approx_error.py [--device cuda] [--reference ../shared/reference] [--no-compile]
                                      [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
GOLDENS = ("golden_mini_ade", "golden_mini_city")


@contextlib.contextmanager
def tf32(enabled: bool):
    """Allow (or forbid) TensorFloat-32 in CUDA matmuls and convolutions inside the block."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def settings(device: torch.device, with_compile: bool) -> list[tuple[str, bool, torch.dtype | None, bool]]:
    """(name, compile, autocast dtype or None, tf32) for every setting measured on `device`."""
    rows = [("fp32", False, None, False), ("bf16", False, torch.bfloat16, False)]
    if device.type == "cuda":
        rows.insert(1, ("tf32", False, None, True))
    if with_compile:
        rows += [("fp32+compile", True, None, False), ("bf16+compile", True, torch.bfloat16, False)]
    return rows


def measure(root: Path, device: torch.device, name: str, compiled: bool, dtype: torch.dtype | None,
            allow_tf32: bool) -> dict:
    """Scores of one golden in one setting against its float32 reference."""
    from semask import load_model
    from semask.compiled import compile_model

    expected = torch.load(root / "expected.pt", weights_only=True)
    model = load_model(root / "config.yaml", root / "model_final.pth", device)
    if compiled:
        compile_model(model)
    image = expected["image"].to(device)
    cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    start = time.perf_counter()
    with tf32(allow_tf32), torch.inference_mode(), cast:
        scores = model.predict([image])[0].float().cpu()
    reference = expected["sem_seg"].float()
    return {"golden": root.name, "setting": name, "device": str(device),
            "max_abs_diff": (scores - reference).abs().max().item(),
            "mean_abs_diff": (scores - reference).abs().mean().item(),
            "label_agreement": (scores.argmax(0) == reference.argmax(0)).float().mean().item(),
            "first_call_s": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--reference", default=str(REPO.parent / "shared" / "reference"))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    reference = Path(args.reference)
    missing = [g for g in GOLDENS if not (reference / g / "expected.pt").is_file()]
    if missing:
        print(f"error: {reference} lacks {', '.join(missing)} (expected.pt, config.yaml, model_final.pth); "
              "pass --reference DIR", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    rows = []
    for golden in GOLDENS:
        for setting in settings(device, not args.no_compile):
            try:
                row = measure(reference / golden, device, *setting)
            except Exception as exc:  # a setting that fails is reported, the others still run
                row = {"golden": golden, "setting": setting[0], "device": str(device),
                       "error": f"{type(exc).__name__}: {exc}"[:500]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
