"""`semask convert`: released checkpoints and Swin ImageNet weights -> our safetensors files.

A SeMask Mask2Former checkpoint (detectron2 `model_final.pth`) becomes DST.safetensors with its config
embedded, plus DST.yaml beside it; its keys are checked strictly against the config. A Swin ImageNet
checkpoint (`swin_*.pth`, or its detectron2 `.pkl` conversion) becomes a backbone-only file to start
training from (`model.weights=DST.safetensors`).

Files are read without running code: `.pth` through torch's weights-only loader, `.pkl` through a
restricted unpickler. --trust-pickle lifts that for .pth files only, and is DANGEROUS: a pickle can run
any code on your machine while it loads. Use it only for a file from a source you trust.
"""

from __future__ import annotations

import argparse

EXAMPLE = """examples:
  semask convert model_final.pth semask_large_ade20k.safetensors --config semask-large-ade20k
  semask convert swin_large_patch4_window12_384_22k.pkl swin_l.safetensors --config semask-large-ade20k
  semask predict --weights semask_large_ade20k.safetensors photo.jpg --output out/   # config embedded
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="released .pth / Swin ImageNet .pth or .pkl -> safetensors",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="model_final.pth, swin_*.pth or a detectron2 .pkl")
    p.add_argument("dst", metavar="DST", help="output .safetensors file")
    p.add_argument("--config", "-c",
                   help="preset name, our YAML or the original detectron2 YAML (for a SeMask checkpoint: "
                        "default = the preset whose keys fit exactly; for Swin weights: adapt them to this "
                        "config, e.g. resize the relative-position tables to its window)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="DANGEROUS: unpickle a .pth without restrictions (it can run code); .pth only")
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..convert import convert_checkpoint
    from . import CommandError

    dst = Path(args.dst)
    if dst.exists() and not args.force:
        raise CommandError(f"{dst}: already exists; pass --force to overwrite it")
    if Path(args.src).resolve() == dst.resolve():
        raise CommandError("SRC and DST are the same file")
    result = convert_checkpoint(args.src, dst, args.config, trust_pickle=args.trust_pickle)
    print(result.summary())
    return 0
