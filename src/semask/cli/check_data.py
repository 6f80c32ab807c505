"""`semask check-data`: scan a dataset split and report every problem at once, with counts per kind."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """example:
  semask check-data --config semask-large-ade20k --data ADEChallengeData2016 --split train
  semask check-data --config my.yaml --data mydata --split val --jobs 4

prints one line per problem ("KIND: FILE: what is wrong"), then the count of each kind; exits with 1
when there is any problem, 0 when the split is clean. Kinds: missing-label, missing-image, zero-byte,
not-an-image, unreadable, too-large, label-mode, label-values, size-mismatch.
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="check a dataset for missing, unreadable or inconsistent files",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", required=True,
                   help="preset name, our YAML or a detectron2 YAML: gives data.dataset and model.num_classes")
    p.add_argument("--data", "-d", default=None, help="dataset root folder (default: the config's data.root)")
    p.add_argument("--split", default="train", help="split to check: train, val or the dataset's own folder name "
                                                    "(default train)")
    p.add_argument("--jobs", "-j", type=int, default=1, help="files read in parallel (threads, default 1)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. model.num_classes=6")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    from ..config import load_config
    from ..data.build import discover
    from ..data.checks import KINDS, Problem, inspect_pair
    from . import CommandError

    if args.jobs < 1:
        raise CommandError(f"--jobs must be >= 1, got {args.jobs}")
    cfg = load_config(args.config, args.overrides)
    found, names, _palette, root = discover(cfg, args.split, args.data)

    problems: list[Problem] = []
    problems += [Problem("missing-label", p, f"no label map for this image in {found.label_dir}")
                 for p in found.missing_labels]
    problems += [Problem("missing-image", p, f"no image for this label map in {found.image_dir}")
                 for p in found.orphan_labels]

    def check(pair):
        return inspect_pair(pair.image, pair.label, pair.mapping).problems

    bar = tqdm(total=len(found.pairs), unit="pair", disable=not sys.stderr.isatty(), desc="checking")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for found_problems in pool.map(check, found.pairs):
            problems += found_problems
            bar.update(1)
    bar.close()

    order = {kind: i for i, kind in enumerate(KINDS)}
    problems.sort(key=lambda p: (order.get(p.kind, len(order)), str(p.path)))
    for p in problems:
        print(f"{p.kind}: {p.path}: {p.message}")
    n_images = len(found.pairs) + len(found.missing_labels)
    labels = "no label maps (unlabelled split)" if found.label_dir is None else \
        f"{len(found.pairs) + len(found.orphan_labels)} label maps in {found.label_dir}"
    print(f"checked {n_images} images in {found.image_dir} and {labels}; {len(names)} classes")
    if not problems:
        print("no problems found")
        return 0
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.kind] = counts.get(p.kind, 0) + 1
    print(f"{len(problems)} problem(s) in {len({str(p.path) for p in problems})} file(s):")
    for kind, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order))):
        print(f"  {kind}: {n}  ({KINDS.get(kind, '')})")
    return 1
