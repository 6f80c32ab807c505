"""`semask demo`: the embedded default. No data and no weights needed: generates synthetic scenes, trains a
small SeMask Mask2Former on them from scratch for a few minutes, evaluates it on held-out scenes and draws
the result."""

from __future__ import annotations

import argparse
import logging
import os

from . import CommandError

log = logging.getLogger("semask.demo")

EXAMPLE = """examples:
  semask demo                                  # about 8 minutes of training on a 2-core CPU
  semask demo --output runs/demo2 --minutes 3 --seed 1

writes OUTPUT/demo.png (validation image | ground truth | prediction, with a legend),
OUTPUT/training_curves.png, OUTPUT/metrics.json (held-out mIoU and friends, percent) and
OUTPUT/model_final.safetensors (use it with `semask predict --weights`).
Ctrl-C stops cleanly with a checkpoint; the same command again resumes from it.
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from ..demo import DEFAULT_MINUTES, DEFAULT_OUTPUT

    p = sub.add_parser(name, help="train and show a small SeMask model on generated scenes (no data or weights "
                                  "needed)", description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", "-o", default=DEFAULT_OUTPUT,
                   help=f"output folder; an earlier demo there is resumed (default {DEFAULT_OUTPUT})")
    p.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                   help=f"training time budget in minutes (default {DEFAULT_MINUTES:g}); scene generation and "
                        "evaluation come on top (well under a minute)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the scenes and of the model's initialisation (default 0; a resumed run keeps "
                        "its own)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.minutes > 0:
        raise CommandError(f"--minutes must be > 0, got {args.minutes}")
    # Waiting OpenMP threads sleep instead of spinning: on a busy machine spinning threads of a small model
    # fight the other processes for the cores (measured 4x slower under load); must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ..demo import DemoError, run_demo, summary
    from ..engine.checkpoint import CheckpointError
    from ..engine.trainer import TrainingError

    try:
        result = run_demo(args.output, args.minutes, args.seed)
    except (DemoError, TrainingError, CheckpointError) as e:
        raise CommandError(str(e), code=1) from None
    print(summary(result))
    return 130 if result.status == "interrupted" else 0
