"""`semask make-synthetic`: write a small synthetic segmentation dataset (ADE20K layout) from a seed."""

from __future__ import annotations

import argparse
import logging

from . import CommandError

log = logging.getLogger("semask.make_synthetic")

EXAMPLE = """example:
  semask make-synthetic data/scenes --train 200 --val 40 --size 128 --seed 0
  semask check-data --config semask-tiny-ade20k --data data/scenes model.num_classes=6

writes data/scenes/images/{training,validation}/scene_NNNNN.png, the label maps under
data/scenes/annotations/... and data/scenes/classes.txt (6 classes: stripes, checker, disc, box,
triangle, window). Use it with data.dataset=ade20k (the default) and model.num_classes=6.
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="write a small synthetic dataset (shapes, textures, context) from a seed",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", metavar="ROOT", help="output folder (created if missing)")
    p.add_argument("--train", type=int, default=100, help="number of training images (default 100)")
    p.add_argument("--val", type=int, default=20, help="number of validation images (default 20)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import CLASSES, make_synthetic_dataset

    if args.train < 0 or args.val < 0:
        raise CommandError("--train and --val must be >= 0")
    if args.size < 32:
        raise CommandError(f"--size must be at least 32 pixels, got {args.size}")
    try:
        root = make_synthetic_dataset(args.root, args.train, args.val, args.size, args.seed)
    except OSError as e:
        raise CommandError(f"cannot write to {args.root}: {e.strerror or e}") from None
    log.info("wrote %d training and %d validation images (%d px, %d classes: %s) to %s", args.train, args.val,
             args.size, len(CLASSES), ", ".join(CLASSES), root)
    return 0
