"""Reading images and label maps robustly, with errors that name the file.

Images: any mode PIL reads (grey, palette, RGBA, CMYK, 16-bit, float) becomes 8-bit RGB; EXIF
orientation is applied; decompression bombs (huge dimensions in a small file) are refused.
Label maps: single-channel class indices (L, P, I;16, I); colour label images are refused.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Largest image we decode (pixels). PIL's own default warns at ~89M and fails at ~179M.
MAX_IMAGE_PIXELS = 120_000_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class ImageReadError(ValueError):
    """An input file could not be used; the message names the file and what to do."""


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            if im.width * im.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError("too many pixels")
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(f"{path}: image dimensions are too large to decode safely "
                             f"(limit {MAX_IMAGE_PIXELS:,} pixels); resize it first") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image PIL can read (wrong extension or corrupt file)") from None
    except PermissionError as e:
        raise ImageReadError(f"{path}: cannot open the file ({e.strerror}); check its permissions") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot decode image ({e}); the file may be truncated or corrupt") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return im


def to_rgb_array(im: Image.Image, source: str = "image") -> np.ndarray:
    """Any PIL image -> uint8 (H, W, 3) RGB, EXIF orientation applied, alpha dropped, 16-bit scaled."""
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF blocks must not stop a prediction
        pass
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA").convert("RGB")
    elif im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as uint8 (H, W, 3) RGB."""
    return to_rgb_array(_open(path), str(path))


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A label map (class index per pixel) as int64 (H, W). Colour (RGB) label images are refused."""
    im = _open(path)
    if im.mode in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        return np.asarray(im).astype(np.int64)
    raise ImageReadError(f"{path}: label maps must be single-channel class indices (mode L, P or 16-bit), "
                         f"got mode {im.mode}; convert colour annotations to index maps first")


def image_to_tensor(image: np.ndarray):
    """uint8 (H, W, 3) -> float32 torch tensor (3, H, W) in 0..255."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
