"""`semask train`: train or fine-tune SeMask Mask2Former (one process, or many with torchrun)."""

from __future__ import annotations

import argparse
import signal

from . import CommandError, check_overrides

EXAMPLE = """examples:
  semask make-synthetic data/scenes
  semask train --config semask-tiny-ade20k --data data/scenes --output runs/scenes \\
      model.num_classes=6 solver.ims_per_batch=4 solver.max_iter=2000 data.crop_size=[128,128]
  semask train --config semask-large-ade20k --data datasets/ADEChallengeData2016 --output runs/large \\
      model.weights=swin_large_patch4_window12_384_22k.pth solver.grad_accum_steps=4
  torchrun --nproc_per_node=8 -m semask train --config semask-large-ade20k --data ... --output runs/large
  semask train --config runs/large/config.yaml --data ... --output runs/large --resume

Writes OUTPUT/config.yaml (the resolved config), checkpoints model_<iter>.pth (the last
solver.keep_last; `last_checkpoint` names the newest), metrics.jsonl, training_curves.png and, at the
end, model_final.safetensors (weights + config, ready for `semask predict --weights`).
SIGTERM / Ctrl-C save a checkpoint before exiting; --resume continues exactly from it.
KEY=VALUE overrides use our dotted names (solver.base_lr=1e-4), or detectron2 names
(SOLVER.BASE_LR=1e-4) when --config is a detectron2 YAML.
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="train or fine-tune a model (CPU, GPU, multi-GPU with torchrun)",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True,
                   help="preset name (e.g. semask-tiny-ade20k), our YAML, or an original detectron2 YAML")
    p.add_argument("--data", "-d", default=None, help="dataset root (default: the config's data.root)")
    p.add_argument("--output", "-o", required=True, help="output folder (created if missing)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output")
    p.add_argument("--max-iter", type=int, default=None, help="override solver.max_iter")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the local GPU if any, else cpu)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..engine import distributed as du
    from ..engine.checkpoint import CheckpointError
    from ..engine.malloc import keep_large_blocks_in_heap
    from ..engine.trainer import Trainer, TrainingError

    check_overrides(args.overrides)
    keep_large_blocks_in_heap()  # large CPU tensors reused from the heap, not page-faulted in every step
    if args.max_iter is not None and args.max_iter < 1:
        raise CommandError(f"--max-iter must be >= 1, got {args.max_iter}")
    cfg = load_config(args.config, args.overrides)
    if args.data is None and not cfg.data.root:
        raise CommandError("no dataset: pass --data ROOT (or set data.root in the config)")
    try:
        result = Trainer(cfg, args.data, args.output, resume=args.resume, max_iter=args.max_iter,
                         device=args.device).train()
    except (TrainingError, CheckpointError) as e:
        raise CommandError(str(e), code=1) from None
    finally:
        du.cleanup()
    if result.status == "interrupted":
        sig = result.signal or signal.SIGTERM
        return 128 + int(sig)
    return 0
