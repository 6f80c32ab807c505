"""ONNX export of the inference graph: image (B, 3, H, W) -> per-class scores (B, K, H, W).

The graph holds the whole of `model.predict` for one input size: normalisation (unless the input is
already normalised), zero padding to a multiple of 32, backbone, pixel decoder (the deformable attention
becomes standard `GridSample` ops, opset >= 16), transformer decoder, and the semantic inference
(softmax(class) x sigmoid(mask), masks upsampled to the padded size, cropped to the input size).

With `dynamic=True` the height, width and batch size are free. The graph is traced from an example whose
size makes every Swin stage pad its windows, so that the padding (zero for other sizes) is part of the
graph, and with the model's shape caches switched off so that positional encodings and shift masks are
computed from the traced shapes.

Needs the optional packages of `pip install semask[export]`: `onnx` (PyTorch's TorchScript-based ONNX
exporter writes the file with it) and `onnxruntime` (to run or check the result).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# the newest opset of PyTorch's TorchScript-based exporter (20 in PyTorch 2.x releases that have it)
_EXPORTER_MAX = getattr(getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
DEFAULT_OPSET = min(20, int(_EXPORTER_MAX))
MIN_OPSET = 16  # GridSample


class SemanticScores(nn.Module):
    """The exported computation: `model.predict` for one batch of same-sized images, as a plain forward."""

    def __init__(self, model: nn.Module, normalized_input: bool = False) -> None:
        super().__init__()
        self.model = model
        self.normalized_input = normalized_input

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: (B, 3, H, W) float, RGB 0..255 (or normalised) -> scores (B, K, H, W)."""
        h, w = image.shape[-2], image.shape[-1]
        x = image if self.normalized_input else (image - self.model.pixel_mean) / self.model.pixel_std
        d = max(int(self.model.size_divisibility), 1)
        pad_h, pad_w = (d - h % d) % d, (d - w % d) % d
        x = F.pad(x, (0, pad_w, 0, pad_h))
        out = self.model.forward_features(x, False)
        masks = F.interpolate(out["pred_masks"], size=(h + pad_h, w + pad_w), mode="bilinear", align_corners=False)
        probs = F.softmax(out["pred_logits"], dim=-1)[..., :-1]
        scores = torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())
        return scores[:, :, :h, :w]


# boolean attributes of model modules that switch a per-shape cache on (shift masks, window-attention bias)
CACHE_FLAGS = ("cache_shift_mask", "cache_bias")


@contextlib.contextmanager
def shape_caches_disabled(model: nn.Module) -> Iterator[None]:
    """Switch off the model's per-shape caches (positional encodings, shifted-window masks, attention bias)
    so that a trace computes them from its (traced) shapes instead of freezing cached tensors."""
    from .modeling.layers import PositionEncodingCache

    saved: list[tuple[object, str, bool]] = []
    for m in model.modules():
        saved += [(m, flag, getattr(m, flag)) for flag in CACHE_FLAGS if isinstance(getattr(m, flag, None), bool)]
        saved += [(v, "enabled", v.enabled) for v in vars(m).values() if isinstance(v, PositionEncodingCache)]
    try:
        for obj, flag, _ in saved:
            setattr(obj, flag, False)
        yield
    finally:
        for obj, flag, value in saved:
            setattr(obj, flag, value)


def _stage_windows(model: nn.Module) -> list[list[int]]:
    """Window sizes whose padding each backbone stage applies (Swin windows and windowed semantic attention)."""
    windows = []
    for stage in model.backbone.layers:
        ws = [stage.window_size]
        sem = stage.semantic_layer
        if sem is not None and sem.mode == "windowed":
            ws.append(sem.window_size)
        windows.append(ws)
    return windows


def dynamic_example_size(model: nn.Module) -> tuple[int, int]:
    """An input size (H, W), H != W, at which every stage that can pad to its windows does so in both directions.

    A traced graph keeps only the branches taken by its example; padding by zero is the identity, so an
    example that pads wherever some size would pad gives a graph that is right for every size.
    """
    d = model.size_divisibility
    patch = model.backbone.patch_embed.patch_size

    def tokens(k: int, stage: int) -> int:  # side of stage `stage`'s map for a (k * d)-pixel padded input
        return -(-(k * d // patch) // 2 ** stage)

    # (stage, window) pairs whose padding some input size needs; pairs that never pad need no example
    needed = [(i, w) for i, ws in enumerate(_stage_windows(model)) for w in ws
              if any(tokens(k, i) % w for k in range(1, 4 * w + 1))]
    found = [k for k in range(2, 400) if all(tokens(k, i) >= 2 and tokens(k, i) % w for i, w in needed)][:2]
    if len(found) < 2:
        raise ValueError("no example size pads every stage; export without --dynamic at your input size")
    # a few pixels short of the multiple, so that the input padding is traced too
    return found[0] * d - 3, found[1] * d - 5


@dataclass
class ExportResult:
    path: Path
    input_size: tuple[int, int]
    dynamic: bool
    opset: int
    num_classes: int


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (512, 512),
                dynamic: bool = False, opset: int = DEFAULT_OPSET, normalized_input: bool = False,
                batch: int = 1) -> ExportResult:
    """Export `model` to ONNX at `path` (the model is put in eval mode on the CPU in float32).

    Input "image" (B, 3, H, W) float32, RGB 0..255 (or normalised with `normalized_input`); output
    "scores" (B, K, H, W). Static graphs take exactly `size` and `batch`; `dynamic` frees both (the
    trace then uses `dynamic_example_size` and a batch of 2, so that size- and batch-dependent branches
    are all in the graph).
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: grid_sample needs opset >= {MIN_OPSET}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: the output file must end in .onnx")
    if importlib.util.find_spec("onnx") is None:  # the exporter writes the file with it
        raise ImportError("ONNX export needs the onnx package: pip install 'semask[export]'")
    model = model.float().cpu().eval()
    h, w = dynamic_example_size(model) if dynamic else (int(size[0]), int(size[1]))
    if h < 1 or w < 1:
        raise ValueError(f"input size must be positive, got {h}x{w}")
    wrapper = SemanticScores(model, normalized_input).eval()
    example = torch.rand(max(batch, 2) if dynamic else batch, 3, h, w) * 255.0
    if normalized_input:
        example = (example - model.pixel_mean) / model.pixel_std
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "scores": {0: "batch", 2: "height", 3: "width"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    # PyTorch's TorchScript-based exporter: it traces the arithmetic on shapes into the graph, which is what
    # makes the dynamic graph right for every size (newer PyTorch defaults to another exporter: dynamo=False)
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with torch.no_grad(), shape_caches_disabled(model), warnings.catch_warnings():
        # the tracer warns about every shape-dependent Python value; the example above makes them safe
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(wrapper, (example,), str(path), opset_version=opset, input_names=["image"],
                          output_names=["scores"], dynamic_axes=axes if dynamic else None,
                          do_constant_folding=True, **legacy)
    return ExportResult(path, (h, w), dynamic, opset, int(model.num_classes))


def onnx_session(path: str | os.PathLike) -> Any:
    """An onnxruntime CPU session for an exported file (needs `pip install semask[export]`)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("onnxruntime is not installed: pip install 'semask[export]'") from None
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_scores(model: Any, image: torch.Tensor) -> torch.Tensor:
    """Run an exported model (a path or an `onnx_session`) on a (B, 3, H, W) image; returns the scores."""
    session = onnx_session(model) if isinstance(model, (str, os.PathLike)) else model
    out = session.run(["scores"], {"image": image.detach().cpu().float().numpy()})[0]
    return torch.from_numpy(out)


def verify_onnx(model: nn.Module, path: str | os.PathLike, image: torch.Tensor,
                normalized_input: bool = False) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's scores on `image` (B, 3, H, W)."""
    with torch.no_grad():
        expected = SemanticScores(model.eval(), normalized_input)(image.float())
    return float((onnx_scores(path, image) - expected).abs().max())
