"""Checkpoint conversion and the safe reader for detectron2 `.pkl` files.

`.pkl` files (detectron2 conversions of ImageNet backbones) are Python pickles. They are read with a
restricted unpickler that admits only numpy arrays / dtypes / scalars, torch tensors (rebuilt through
`torch.load(weights_only=True)`) and plain containers. Any other global is refused by name before
anything is created, so a malicious file cannot run code.

`convert_checkpoint` turns
- a released SeMask Mask2Former checkpoint (`model_final.pth`) into our safetensors file with the
  config embedded, plus the config as YAML beside it (keys checked strictly against the config);
- a Swin ImageNet checkpoint (.pth or .pkl) into a backbone-only safetensors file (`backbone.*` keys in
  our layout) for `model.weights` when training. With a config, the tensors are adapted to it
  (relative-position tables resized to its window); without, they are only renamed.
"""

from __future__ import annotations

import collections
import importlib
import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config
from .weights import IGNORED_KEYS, Checkpoint, WeightsError, read_checkpoint, save_state_dict

SEMASK_MODEL = "semask-model"
SWIN_BACKBONE = "swin-backbone"
UNKNOWN = "unknown"


# --------------------------------------------------------------------------- restricted unpickling


def _numpy_attr(submodule: str, name: str) -> Any:
    """numpy internals by their pickled name, for numpy 1.x (`numpy.core`) and 2.x (`numpy._core`)."""
    for module in (f"numpy._core.{submodule}", f"numpy.core.{submodule}"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"numpy has no {submodule}.{name}")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as Python-2-compatible pickles use it for raw bytes; only latin-1 is accepted."""
    if encoding.replace("-", "").lower() != "latin1" or not isinstance(text, str):
        raise RefusedPickle(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _storage_from_bytes(data: bytes) -> Any:
    """A tensor storage pickled by the standard pickle module holds torch.save bytes: read them safely."""
    from .weights import _offending_global

    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RefusedPickle(f"a pickled tensor storage needs {_offending_global(str(e)) or 'code to run'}") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise RefusedPickle(f"expected a tensor storage, found {type(storage).__name__}")
    return storage


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor(_v2) without requires_grad or backward hooks."""
    if not isinstance(storage, torch.TypedStorage):
        raise RefusedPickle("tensor without a typed storage")
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise RefusedPickle("parameter without a tensor")
    return data


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = ("multiarray", "_reconstruct")
        allowed[(f"{core}.multiarray", "scalar")] = ("multiarray", "scalar")
        allowed[(f"{core}.numeric", "_frombuffer")] = ("numeric", "_frombuffer")
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool_"):
        allowed[("numpy", name)] = getattr(np, name)
    return allowed


class RefusedPickle(pickle.UnpicklingError):
    """The pickle needs something that is not allowed in a weights file."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only arrays, tensors and plain containers; every other global is refused by name."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="latin1")
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise RefusedPickle(f"global '{module}.{name}' is not allowed")
        if isinstance(found, tuple):
            return _numpy_attr(*found)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("persistent ids are not allowed in a .pkl weights file")


def _to_tensor(value: Any, key: str, path: Path) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return torch.from_numpy(np.array(value))
    raise WeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not an array; this is not a weights file")


def read_pkl_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a detectron2 `.pkl` weights file ({"model": {name: array}, "__author__": ...} or a plain dict)
    without running code: only arrays, tensors and plain containers are unpickled."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    if zipfile.is_zipfile(path):  # a torch.save file named .pkl: the weights-only loader applies
        from .weights import _torch_load

        obj = _torch_load(path)
    else:
        try:
            with open(path, "rb") as f:
                obj = RestrictedUnpickler(f).load()
        except RefusedPickle as e:
            raise WeightsError(f"{path}: refused to load: {e}. A .pkl weights file may hold only arrays, tensors "
                               "and plain containers; nothing else is unpickled (no code from the file runs)") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
                OSError, RuntimeError) as e:
            raise WeightsError(f"{path}: cannot read as a pickled weights file ({type(e).__name__}: {e}); "
                               "the file may be truncated or not a weights file") from None
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, expected a dict of arrays")
    if isinstance(obj.get("model"), dict):  # detectron2: {"model": ..., "__author__": ..., ...}
        weights = obj["model"]
        extra = {k: v for k, v in obj.items() if k != "model" and isinstance(v, (str, int, float, bool))}
    else:
        weights, extra = obj, {}
    sd = {str(k): _to_tensor(v, str(k), path) for k, v in weights.items()}
    if not sd:
        raise WeightsError(f"{path}: holds no arrays")
    return Checkpoint(path, sd, "detectron2-pkl", extra=extra)


# --------------------------------------------------------------------------- what a checkpoint holds


def checkpoint_kind(state_dict: dict[str, torch.Tensor]) -> str:
    """SEMASK_MODEL (a whole SeMask Mask2Former), SWIN_BACKBONE (Swin / backbone weights only) or UNKNOWN."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state_dict]
    if any(k.startswith("sem_seg_head.") for k in keys) and any(k.startswith("backbone.") for k in keys):
        return SEMASK_MODEL
    swin = ("patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight")
    if any(k in keys or f"backbone.{k}" in keys for k in swin):
        return SWIN_BACKBONE
    return UNKNOWN


@dataclass
class ConversionResult:
    """What `convert_checkpoint` wrote."""
    kind: str
    weights: Path
    tensors: int
    config_yaml: Path | None = None
    config_name: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        what = "SeMask Mask2Former model" if self.kind == SEMASK_MODEL else "Swin backbone (for model.weights)"
        lines = [f"wrote {self.weights} ({what}, {self.tensors} tensors"
                 + (f", config {self.config_name}" if self.config_name else "") + ")"]
        if self.config_yaml:
            lines.append(f"wrote {self.config_yaml}")
        lines.extend(self.notes)
        return "\n".join(lines)


def _resolve_config(cfg: "str | os.PathLike | Config | None", ckpt: Checkpoint) -> Config:
    from .config import load_config
    from .weights import _shapes, suggest_preset

    if cfg is not None:
        return load_config(cfg)
    if ckpt.config is not None:
        return ckpt.config
    shapes = _shapes({k: v for k, v in ckpt.state_dict.items() if k not in IGNORED_KEYS})
    preset, exact = suggest_preset(shapes)
    if not exact:
        raise WeightsError(f"{ckpt.path}: no preset fits this checkpoint exactly (closest: {preset}); give its "
                           "config with --config (a preset name, our YAML or the original detectron2 YAML)")
    return load_config(preset)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike,
                       config: "str | os.PathLike | Config | None" = None,
                       trust_pickle: bool = False) -> ConversionResult:
    """Convert `src` (released .pth, Swin ImageNet .pth/.pkl) to our safetensors file `dst`."""
    from .modeling import build_from_config
    from .weights import _shapes, mismatch_error

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise WeightsError(f"{dst}: the output must be a .safetensors file")
    if dst.exists() and dst.is_dir():
        raise WeightsError(f"{dst}: is a folder; give the output file name")
    ckpt = read_checkpoint(src, trust_pickle=trust_pickle)
    kind = checkpoint_kind(ckpt.state_dict)
    source = {"source": Path(src).name}
    if kind == SEMASK_MODEL:
        cfg = _resolve_config(config, ckpt)
        with torch.device("meta"):
            model = build_from_config(cfg)
        model_shapes = _shapes(model.state_dict())
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.state_dict.items()}
        sd = {k: v for k, v in sd.items() if k not in IGNORED_KEYS}
        if _shapes(sd) != model_shapes:
            raise mismatch_error(model_shapes, _shapes(sd), ckpt.path)
        ordered = {k: sd[k] for k in model_shapes}
        save_state_dict(ordered, dst, cfg, {**source, "contents": SEMASK_MODEL})
        yaml_path = dst.with_suffix(".yaml")
        yaml_path.write_text(cfg.to_yaml())
        return ConversionResult(kind, dst, len(ordered), yaml_path, cfg.name)
    if kind == SWIN_BACKBONE:
        return _convert_backbone(ckpt, dst, config, source)
    first = ", ".join(list(ckpt.state_dict)[:4])
    raise WeightsError(f"{ckpt.path}: neither a SeMask Mask2Former nor a Swin checkpoint (it starts with {first})")


def _convert_backbone(ckpt: Checkpoint, dst: Path, config: "str | os.PathLike | Config | None",
                      meta: dict[str, str]) -> ConversionResult:
    from .config import load_config
    from .modeling import build_from_config
    from .pretrained import load_backbone_pretrained, swin_backbone_items

    meta = {**meta, "contents": SWIN_BACKBONE}
    if config is None:
        kept, dropped = swin_backbone_items(ckpt.state_dict)
        if not kept:
            raise WeightsError(f"{ckpt.path}: no Swin tensors found")
        sd = {f"backbone.{name}": value for name, (_, value) in kept.items()}
        save_state_dict(sd, dst, None, meta)
        notes = [f"  renamed {len(sd)} tensors to backbone.*; dropped {len(dropped)} "
                 "(classifier, final norm, derived buffers). Relative-position tables keep the pretraining "
                 "window; they are resized when the weights are loaded for training."]
        return ConversionResult(SWIN_BACKBONE, dst, len(sd), notes=notes)
    cfg = load_config(config)
    model = build_from_config(cfg)
    report = load_backbone_pretrained(model, ckpt)
    own = model.state_dict()
    sd = {k: own[k] for k in report.loaded}
    save_state_dict(sd, dst, None, {**meta, "config_name": cfg.name})
    return ConversionResult(SWIN_BACKBONE, dst, len(sd), config_name=cfg.name, notes=[report.summary()])
