"""User-facing inference: images in (paths, PIL images, numpy arrays), label maps and scores out.

The model itself is kept separate (segment-anything style): the predictor owns reading, optional
test-time resizing, batching, device placement and the final argmax.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from .io import image_to_tensor, read_image, to_rgb_array
from .preprocess import resize_image, shortest_edge_size

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


class Predictor:
    """Runs a SeMask Mask2Former model on images.

    test_size: None runs at the image's own resolution; an int resizes the shorter side to it (longer
    side capped at `max_size`) as the evaluation pipeline does, and maps the result back.
    """

    def __init__(self, model: torch.nn.Module, test_size: int | None = None, max_size: int = 2048,
                 device: str | torch.device | None = None, batch_size: int = 1) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(model.parameters()).device
        self.test_size = test_size
        self.max_size = max_size
        self.batch_size = max(1, batch_size)

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
        out: list[torch.Tensor] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start: start + self.batch_size]
            tensors = [self._prepare(a).to(self.device) for a in chunk]
            sizes = [a.shape[:2] for a in chunk]
            out.extend(self.model.predict(tensors, output_sizes=sizes))
        return out

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

    def __call__(self, image: ImageInput) -> np.ndarray:
        """The label map (H, W) of one image."""
        return self.predict(image).label
