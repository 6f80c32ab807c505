"""`semask predict`: label maps, overlays and (optionally) per-class scores for images."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import CommandError, add_common_model_args

log = logging.getLogger("semask.predict")

EXAMPLE = """example:
  semask predict --config semask-large-ade20k --weights model_final.pth photos/ extra.jpg --output out/
  writes out/<stem>.png (palette PNG, pixel value = class index), out/<stem>_overlay.png (colour overlay
  with a legend) and, with --save-scores, out/<stem>.scores.npy (float32, K x H x W).
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="segment images: palette label PNGs, overlays, optional scores",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_model_args(p)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively) or glob patterns; trailing KEY=VALUE "
                        "arguments override config keys")
    p.add_argument("--output", "-o", required=True, help="output folder (created if missing)")
    p.add_argument("--save-scores", action="store_true", help="also write <stem>.scores.npy (K x H x W float32)")
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward pass; images of the same size are batched together (default 1)")
    p.add_argument("--test-size", default=None,
                   help="resize the shorter side to this many pixels before the model ('config': the config's "
                        "test size, as evaluation does); default: the image's own resolution")
    p.add_argument("--tta", action="store_true",
                   help="multi-scale + flip test-time augmentation: scores averaged over the config's "
                        "test.aug_min_sizes (and flips when test.aug_flip); --test-size is then not used")
    p.set_defaults(func=run, trailing="inputs")


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Separate KEY=VALUE config overrides from positional inputs."""
    inputs = [i for i in items if "=" not in i or Path(i).exists()]
    overrides = [i for i in items if "=" in i and not Path(i).exists()]
    return inputs, overrides


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, glob patterns expanded; order kept."""
    from ..io import IMAGE_EXTENSIONS, ImageReadError
    from ..predictor import expand_image_paths

    try:
        found = expand_image_paths(items)
    except ImageReadError as e:
        raise CommandError(str(e)) from None
    if not found:
        raise CommandError(f"no input images found in {', '.join(items)} (looked for "
                           f"{', '.join(IMAGE_EXTENSIONS)})")
    return found


def unique_stems(paths: list[Path]) -> list[str]:
    """Output stems; duplicates (same name in different folders) get a numeric suffix."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        stems.append(p.stem if n == 0 else f"{p.stem}_{n}")
    return stems


def check_output_folder(folder: Path) -> None:
    """Create `folder` and prove a file can be written there, or raise CommandError naming it."""
    import os

    probe = folder / f".semask_write_test_{os.getpid()}"
    if folder.exists() and not folder.is_dir():
        raise CommandError(f"the output folder {folder} is a file; choose another --output")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CommandError(f"cannot write to the output folder {folder}: {e.strerror or e}; choose another "
                           "--output") from None


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from ..io import ImageReadError, read_image
    from ..predictor import Predictor
    from ..visualize import overlay, palette_for, save_label_png
    from ..weights import config_for, load_model

    if not 0.0 <= args.opacity <= 1.0:
        raise CommandError(f"--opacity must be within [0, 1], got {args.opacity}")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    inputs, overrides = split_overrides(args.inputs)
    paths = expand_inputs(inputs)
    cfg = config_for(args.config, args.weights, overrides)  # config errors before any heavy work
    test_size = args.test_size
    if test_size == "config":
        test_size = cfg.data.min_size_test
    elif test_size is not None:
        try:
            test_size = int(test_size)
        except ValueError:
            raise CommandError(f"--test-size must be an integer or 'config', got {test_size!r}") from None
    out_dir = Path(args.output)
    check_output_folder(out_dir)

    model = load_model(cfg, args.weights, args.device)
    predictor = Predictor(model, test_size=test_size, max_size=cfg.data.max_size_test, batch_size=args.batch_size,
                          tta=args.tta)
    names, palette = class_names_and_palette(cfg)
    palette = palette_for(cfg.model.num_classes, palette)

    failures: list[str] = []
    stems = unique_stems(paths)
    bar = tqdm(total=len(paths), unit="img", disable=not sys.stderr.isatty() or len(paths) < 2)
    for start in range(0, len(paths), args.batch_size):
        batch = list(zip(paths[start: start + args.batch_size], stems[start: start + args.batch_size]))
        images, ok = [], []
        for path, stem in batch:
            try:
                images.append(read_image(path))
                ok.append((path, stem))
            except ImageReadError as e:
                failures.append(str(e))
        if images:
            scores = predictor.scores(images)
            for (path, stem), image, s in zip(ok, images, scores):
                label = s.argmax(0).cpu().numpy().astype(np.int32)
                save_label_png(label, out_dir / f"{stem}.png", palette)
                overlay(image, label, palette, names, args.opacity).save(out_dir / f"{stem}_overlay.png")
                if args.save_scores:
                    np.save(out_dir / f"{stem}.scores.npy", s.float().cpu().numpy())
        bar.update(len(batch))
    bar.close()
    done = len(paths) - len(failures)
    if done:
        log.info("wrote %d prediction(s) to %s", done, out_dir)
    for f in failures:  # one line per unreadable input, naming it
        print(f"semask predict: error: {f}", file=sys.stderr)
    if failures and len(paths) > 1:
        print(f"semask predict: {len(failures)} of {len(paths)} input(s) could not be read", file=sys.stderr)
    return 1 if failures else 0


def class_names_and_palette(cfg) -> tuple[list[str] | None, object]:
    """Class names and palette for the config's dataset when known (ADE20K, Cityscapes, or config names)."""
    names = list(cfg.data.class_names) if cfg.data.class_names else None
    palette = None
    try:
        from ..data.meta import dataset_meta  # type: ignore[import-not-found]

        meta = dataset_meta(cfg.data.dataset, cfg.model.num_classes)
        if meta is not None:
            names = names or list(meta.class_names)
            palette = meta.palette
    except ImportError:
        pass
    return names, palette
