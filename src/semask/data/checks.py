"""The checks a dataset pair must pass, shared by lazy loading and `semask check-data`.

Each failure is a `Problem` of one kind (below), naming the file. Loading stops at the first
problem of a pair; `check-data` collects them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import io as image_io
from ..io import ImageReadError, read_image, read_label
from .labels import LabelMapping

# kind -> what it means (the order `check-data` reports them in)
KINDS = {
    "missing-label": "image without a label map",
    "missing-image": "label map without an image",
    "zero-byte": "empty file (0 bytes)",
    "not-an-image": "not an image although the extension says so",
    "unreadable": "truncated, corrupt or unreadable image",
    "too-large": "image dimensions too large to decode safely",
    "label-mode": "label map is not single-channel (e.g. an RGB colour annotation)",
    "label-values": "label values outside the class range and not 255",
    "size-mismatch": "image and label map sizes differ",
}
LABEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file."""
    kind: str
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class PairResult:
    """What reading a pair gave: the arrays (None where unreadable) and every problem found."""
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    problems: list[Problem] = field(default_factory=list)


def classify_read_failure(path: Path, is_label: bool = False) -> Problem:
    """Name the kind of a file that io.read_image/read_label refused, by looking at it again."""
    try:
        size = path.stat().st_size
    except OSError as e:
        return Problem("unreadable", path, f"cannot open the file ({e.strerror})")
    if size == 0:
        return Problem("zero-byte", path, "file is empty (0 bytes); replace it or remove the pair")
    too_large = Problem("too-large", path, f"image dimensions exceed the {image_io.MAX_IMAGE_PIXELS:,} pixels "
                                           "semask decodes safely (a decompression bomb?); resize it first")
    try:
        with Image.open(path) as im:  # header only: cheap, and safe for huge dimensions
            fmt, mode, pixels = im.format, im.mode, im.width * im.height
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return too_large
    except UnidentifiedImageError:
        return Problem("not-an-image", path, "not an image: PIL cannot identify its content (another kind of "
                                             "file with an image extension?); replace or remove it")
    except OSError as e:
        return Problem("unreadable", path, f"cannot open the file ({e})")
    if pixels > image_io.MAX_IMAGE_PIXELS:
        return too_large
    if is_label and mode not in LABEL_MODES:
        return Problem("label-mode", path, f"label maps must be single-channel class indices (mode L, P or "
                                           f"16-bit), got mode {mode}; convert colour annotations to index maps")
    return Problem("unreadable", path, f"cannot decode the {fmt} data: the file is truncated or corrupt; "
                                       "replace it or remove the pair")


def load_image(path: Path) -> tuple[np.ndarray | None, Problem | None]:
    """uint8 (H, W, 3) RGB, or the problem that stops it."""
    try:
        return read_image(path), None
    except ImageReadError:
        return None, classify_read_failure(path)


def load_label(path: Path, mapping: LabelMapping) -> tuple[np.ndarray | None, Problem | None]:
    """Train ids int64 (H, W) through `mapping`, or the problem that stops it."""
    try:
        raw = read_label(path)
    except ImageReadError:
        return None, classify_read_failure(path, is_label=True)
    label, bad = mapping.apply(raw)
    if bad:
        shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
        return label, Problem("label-values", path, f"label value(s) {shown} not accepted (accepted stored values: "
                                                    f"{mapping.valid}); fix the annotation or model.num_classes")
    return label, None


def inspect_pair(image_path: Path, label_path: Path | None, mapping: LabelMapping,
                 stop_at_first: bool = False) -> PairResult:
    """Read an image and its label map (if any) and check them against each other."""
    result = PairResult()
    result.image, problem = load_image(image_path)
    if problem is not None:
        result.problems.append(problem)
        if stop_at_first:
            return result
    if label_path is None:
        return result
    result.label, problem = load_label(label_path, mapping)
    if problem is not None:
        result.problems.append(problem)
        if stop_at_first:
            return result
    if result.image is not None and result.label is not None and result.image.shape[:2] != result.label.shape:
        ih, iw = result.image.shape[:2]
        lh, lw = result.label.shape
        result.problems.append(Problem("size-mismatch", label_path, f"label map is {lw}x{lh} but its image "
                                       f"{image_path.name} is {iw}x{ih} (width x height); they must match"))
    return result
