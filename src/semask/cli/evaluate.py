"""`semask eval`: mIoU, fwIoU, mean and pixel accuracy (single-scale or ms+flip) of a model on a dataset split."""

from __future__ import annotations

import argparse
import json
import os
import logging
import sys
from pathlib import Path

from . import CommandError, add_common_model_args, check_overrides

log = logging.getLogger("semask.eval")

EXAMPLE = """examples:
  semask eval --config semask-large-ade20k --weights model_final.pth --data ADEChallengeData2016
  semask eval -c semask-large-ade20k -w model_final.pth --data ADEChallengeData2016 --tta --json miou.json
  semask eval -c semask-tiny-ade20k -w run/model_final.safetensors --data synth data.min_size_test=256 \\
      --save-predictions preds/
  torchrun --nproc_per_node=4 -m semask eval -c semask-large-ade20k -w model_final.pth --data ADE --device cuda

Prints a per-class table (IoU, accuracy; '-' for classes without ground-truth pixels, which are left
out of the means as in detectron2) and the summary; --json writes every number (percent).
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="evaluate on a dataset split: mIoU, fwIoU, mACC, pACC, per-class table",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_model_args(p)
    p.add_argument("--data", "-d", help="dataset root (default: the config's data.root)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split, 'val')")
    p.add_argument("--tta", action="store_true",
                   help="multi-scale + flip test-time augmentation (sizes from test.aug_min_sizes, test.aug_flip)")
    p.add_argument("--json", metavar="OUT", help="write all metrics and per-class values as JSON to OUT")
    p.add_argument("--save-predictions", metavar="DIR", help="write each prediction as DIR/<stem>.png (palette PNG)")
    p.add_argument("--workers", type=int, default=None,
                   help="image-reading worker processes (default: 0 on CPU, data.num_workers up to 4 on GPU)")
    p.add_argument("--sort", choices=("name", "iou"), default="name",
                   help="order of the per-class table (default: class index)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. data.min_size_test=640 test.aug_flip=false")
    p.set_defaults(func=run, trailing="overrides")


def _init_distributed(device: str) -> tuple[int, int, str]:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU); (rank, world, device)."""
    from ..engine import distributed as du

    if not du.launched_distributed():
        return 0, 1, device
    if device.startswith("cuda") and ":" not in device:
        device = f"cuda:{du.get_local_rank()}"  # one GPU per process
    du.init_distributed(device)
    return du.get_rank(), du.get_world_size(), device


def _check_writable(folder: Path, flag: str) -> None:
    """Create `folder` and prove a file can be written in it, or raise CommandError naming `flag`."""
    probe = folder / f".semask_write_test_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CommandError(f"cannot write to {folder} ({flag}): {e.strerror or e}; choose another path") from None


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset
    from ..engine.evaluator import evaluate
    from ..metrics import format_table, json_safe
    from ..weights import config_for, load_model

    check_overrides(args.overrides)
    if args.workers is not None and args.workers < 0:
        raise CommandError(f"--workers must be >= 0, got {args.workers}")
    # the config and the dataset's layout and class count are checked before the model is loaded
    cfg = config_for(args.config, args.weights, args.overrides)
    root = args.data or cfg.data.root
    if not root:
        raise CommandError("no dataset given: pass --data ROOT (or set data.root in the config)")
    split = args.split or cfg.data.val_split
    dataset = build_dataset(cfg, split, root)
    if len(dataset) == 0:
        raise CommandError(f"{root}: split {split!r} has no images")
    # the outputs are checked before the (possibly long) evaluation, not after it
    if args.json:
        _check_writable(Path(args.json).parent, "--json")
    if args.save_predictions:
        _check_writable(Path(args.save_predictions), "--save-predictions")
    rank, world, device = _init_distributed(args.device)
    model = load_model(cfg, args.weights, device)
    if rank == 0:
        log.info("evaluating %s on %d %s image(s) of %s%s%s", args.weights, len(dataset), split, root,
                 " with ms+flip" if args.tta else "", f" across {world} processes" if world > 1 else "")
    progress = rank == 0 and sys.stderr.isatty() and not getattr(args, "quiet", False)
    metrics = evaluate(model, dataset, cfg, tta=args.tta, progress=progress, save_dir=args.save_predictions,
                       num_workers=args.workers)
    if rank == 0:
        sort_by = "IoU" if args.sort == "iou" else None
        print(format_table(metrics, sort_by))
        n, seconds = metrics["num_images"], metrics["seconds"]
        if n and seconds > 0:
            log.info("%d images in %.1f s (%.3g images/s, %.2f s/image)", n, seconds, n / seconds, seconds / n)
        if args.json:
            record = {**metrics, "weights": str(args.weights), "config": cfg.name or str(args.config),
                      "data": str(root), "split": split, "world_size": world}
            out = Path(args.json)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(json_safe(record), indent=2) + "\n")
            except OSError as e:
                raise CommandError(f"cannot write {out}: {e.strerror}") from None
            log.info("wrote %s", out)
    if world > 1:
        from ..engine import distributed as du

        du.cleanup()
    return 0
