"""User-facing inference: images in (paths, folders, globs, PIL images, numpy arrays), label maps and
scores out.

The model itself is kept separate (segment-anything style): the predictor owns reading, optional
test-time resizing, batching, device placement and the final argmax.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .io import IMAGE_EXTENSIONS, ImageReadError, image_to_tensor, read_image, to_rgb_array
from .preprocess import resize_image, shortest_edge_size

if TYPE_CHECKING:
    from .engine.tta import TTAPredictor

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass
class Prediction:
    """label: (H, W) class indices at the input image's size; scores: (K, H, W) float32 or None."""
    label: np.ndarray
    scores: np.ndarray | None = None


def as_rgb_array(image: ImageInput) -> np.ndarray:
    """Path / PIL image / numpy array (H, W), (H, W, 3|4), uint8 or other dtypes -> uint8 (H, W, 3) RGB."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb_array(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise ValueError(f"numpy image must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
        arr = arr[:, :, :3] if arr.shape[2] == 4 else arr
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        if arr.dtype == np.uint16:
            arr = (arr.astype(np.float64) / 65535.0 * 255.0 + 0.5).astype(np.uint8)
        elif arr.dtype in (np.float32, np.float64):
            scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
            arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        elif arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    raise TypeError(f"unsupported image type {type(image).__name__}; give a path, a PIL image or a numpy array")


def expand_image_paths(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders searched recursively for images, glob patterns expanded; order kept,
    duplicates dropped. A pattern that matches nothing raises ImageReadError; a missing file is kept
    (reading it reports it)."""
    found: list[Path] = []
    for item in items:
        text, path = str(item), Path(item)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()))
        elif not path.exists() and any(ch in text for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
            if not matches:
                raise ImageReadError(f"{text}: the pattern matches no file")
            found.extend(m for m in matches if m.is_file())
        else:
            found.append(path)
    return list(dict.fromkeys(found))


class Predictor:
    """Runs a SeMask Mask2Former model on images.

    test_size: None runs at the image's own resolution; an int resizes the shorter side to it (longer
    side capped at `max_size`) as the evaluation pipeline does, and maps the result back.
    batch_size: images per forward pass; only images of the same (resized) size share a batch, so the
    result does not depend on the batch size.
    tta: multi-scale + flip test-time augmentation: True uses the model config's `test.aug_*` sizes,
    or give a :class:`semask.engine.tta.TTAPredictor`; `test_size` is then not used.
    """

    def __init__(self, model: torch.nn.Module, test_size: int | None = None, max_size: int = 2048,
                 device: str | torch.device | None = None, batch_size: int = 1,
                 tta: "bool | TTAPredictor" = False) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(model.parameters()).device
        self.test_size = test_size
        self.max_size = max_size
        self.batch_size = max(1, batch_size)
        self.tta = None
        if tta is True:
            from .config import TestConfig
            from .engine.tta import TTAPredictor

            config = getattr(model, "config", None)
            test = config.test if config is not None else TestConfig()
            self.tta = TTAPredictor(model, test.aug_min_sizes, test.aug_max_size, test.aug_flip)
        elif tta:
            self.tta = tta

    @classmethod
    def from_config(cls, cfg, weights, device: str = "cpu", test_size: "int | str | None" = None,
                    **kw) -> "Predictor":
        """Load a model (preset / YAML / Config, weights file). test_size="config" uses the config's test size."""
        from .weights import load_model

        model = load_model(cfg, weights, device)
        config = model.config  # type: ignore[attr-defined]
        max_size = kw.pop("max_size", config.data.max_size_test)
        if test_size == "config":
            test_size = config.data.min_size_test
        return cls(model, test_size=test_size, max_size=max_size, device=device, **kw)

    def _prepare(self, image: np.ndarray) -> torch.Tensor:
        if self.test_size:
            image = resize_image(image, shortest_edge_size(image.shape[0], image.shape[1], self.test_size,
                                                           self.max_size))
        return image_to_tensor(image)

    @torch.inference_mode()
    def scores(self, images: Sequence[ImageInput]) -> list[torch.Tensor]:
        """Per-class scores (K, H, W) for each image at its own size (on the model's device)."""
        arrays = [as_rgb_array(im) for im in images]
        if self.tta is not None:
            return [self.tta.scores(a) for a in arrays]
        prepared = [self._prepare(a) for a in arrays]
        # group images of equal input size, so that no image is padded for another one
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(prepared):
            groups.setdefault(tuple(t.shape), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(arrays)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start: start + self.batch_size]
                batch = torch.stack([prepared[i] for i in chunk]).to(self.device)
                sizes = [arrays[i].shape[:2] for i in chunk]
                for i, s in zip(chunk, self.model.predict(batch, output_sizes=sizes)):
                    out[i] = s
        return out  # type: ignore[return-value]

    def predict(self, image: ImageInput, return_scores: bool = False) -> Prediction:
        """Label map (and optionally scores) for one image."""
        return self.predict_batch([image], return_scores)[0]

    def predict_batch(self, images: Sequence[ImageInput], return_scores: bool = False) -> list[Prediction]:
        results = []
        for s in self.scores(images):
            label = s.argmax(0).to(torch.int32).cpu().numpy()
            label = label.astype(np.uint8 if s.shape[0] <= 256 else np.int32)
            results.append(Prediction(label, s.float().cpu().numpy() if return_scores else None))
        return results

    def predict_paths(self, items: Iterable[str | os.PathLike],
                      return_scores: bool = False) -> Iterator[tuple[Path, Prediction]]:
        """(path, prediction) for every image file of `items` (files, folders, glob patterns), read and
        predicted `batch_size` at a time. An unreadable file raises ImageReadError naming it."""
        paths = expand_image_paths(items)
        for start in range(0, len(paths), self.batch_size):
            chunk = paths[start: start + self.batch_size]
            images = [read_image(p) for p in chunk]
            yield from zip(chunk, self.predict_batch(images, return_scores))

    def __call__(self, image: ImageInput) -> np.ndarray:
        """The label map (H, W) of one image."""
        return self.predict(image).label
