"""Reading and writing model weights without ever running pickled code.

Formats read: detectron2 checkpoints (`model_final.pth`: {"model": state_dict, ...} possibly with
optimizer/scheduler/iteration entries), plain state_dict .pth files, detectron2 `.pkl` conversions
(through the restricted unpickler of :mod:`semask.convert`) and our safetensors files (which embed the
config). `.pth` goes only through `torch.load(weights_only=True)`; `trust_pickle=True` (the CLI's
`--trust-pickle`) lifts that for `.pth` only, and is dangerous: unpickling can run any code in the file.

Loading is strict: every key present with the right shape and nothing unexpected; the error lists
the differences and names the preset whose keys fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, ConfigError, from_dict, preset_names

# Entries of the original checkpoints that are loss constants, not model weights: accepted, then dropped.
IGNORED_KEYS = ("criterion.empty_weight",)
SAFETENSORS_FORMAT = "semask"


class WeightsError(ValueError):
    """A weights file that cannot be used as asked; the message (one line) names the file and what to do.

    `details` holds a longer report when there is one (every mismatching key); `semask --debug` prints it.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


@dataclass
class Checkpoint:
    """Tensors read from a weights file, plus what else it said about itself."""
    path: Path
    state_dict: dict[str, torch.Tensor]
    format: str
    config: Config | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _torch_load(path: Path, trust_pickle: bool = False) -> Any:
    """torch.load through its weights-only unpickler. Only the explicit, documented-as-dangerous
    `--trust-pickle` (trust_pickle=True) uses the full unpickler, with a warning."""
    try:
        if not trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=True)
        import logging

        logging.getLogger("semask.weights").warning(
            "%s: loading with --trust-pickle: any code inside the file runs now. Only do this for files "
            "from a source you trust.", path)
        return torch.load(path, map_location="cpu", weights_only=False)  # --trust-pickle only
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except PermissionError as e:
        raise WeightsError(f"{path}: cannot read the weights file ({e.strerror}); check its permissions") from None
    except Exception as e:  # noqa: BLE001 - every failure becomes a one-line message
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        msg = msg.split(". ")[0]  # torch appends paragraphs of advice after the reason
        if "WeightsUnpickler error:" in str(e):  # torch's long advice text; keep its actual reason
            msg = str(e).split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        glob = _offending_global(str(e))
        if glob or "Unsupported class" in str(e):
            raise WeightsError(f"{path}: refused to load, the file needs to run pickled code"
                               f"{' (' + glob + ')' if glob else ''}. Only tensors and plain containers are "
                               "accepted; re-save the state_dict with torch.save, or convert it with "
                               "`semask convert` (see `semask convert --help` for --trust-pickle)") from None
        raise WeightsError(f"{path}: cannot read as a PyTorch checkpoint ({msg}); the file may be "
                           "truncated or not a checkpoint") from None


def _offending_global(message: str) -> str:
    """'global io.open' from torch's weights-only unpickler message, or ""."""
    import re

    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"Unsupported global:? ([\w.]+)", message)
    return f"global '{found.group(1)}'" if found else ""


def _tensors_only(obj: dict, path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise WeightsError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; this is not a state_dict")
        out[k] = v
    return out


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Checkpoint:
    """Read the tensors of a weights file (.pth/.pt/.bin, detectron2 .pkl or .safetensors).

    `trust_pickle` (only for .pth/.pt/.bin) unpickles without restrictions: DANGEROUS, the file can run
    any code. Never needed for released checkpoints; meant for old files that pickled whole objects.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"{path}: weights file not found")
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder; give the weights file inside it")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: weights file is empty (0 bytes)")
    if trust_pickle and path.suffix in (".safetensors", ".pkl"):
        raise WeightsError(f"{path}: --trust-pickle applies only to .pth files; {path.suffix} files are always "
                           "read without running code")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix == ".pkl":
        from .convert import read_pkl_checkpoint  # restricted unpickler, never runs code
        return read_pkl_checkpoint(path)
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        extra = {k: v for k, v in obj.items() if k != "model"}
        return Checkpoint(path, _tensors_only(obj["model"], path), "detectron2", extra=extra)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return Checkpoint(path, _tensors_only(obj["state_dict"], path), "state_dict")
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return Checkpoint(path, dict(obj), "state_dict")
    raise WeightsError(f"{path}: no model weights found (expected a state_dict, or a dict with a 'model' entry)")


def _read_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except PermissionError as e:
        raise WeightsError(f"{path}: cannot read the weights file ({e.strerror}); check its permissions") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read safetensors file ({e}); it may be truncated") from None
    cfg = _embedded_config(path, meta)
    extra = {k: v for k, v in meta.items() if k != "config"}
    return Checkpoint(path, sd, "safetensors", cfg, extra)


def _embedded_config(path: Path, meta: dict[str, str]) -> Config | None:
    """The config a safetensors file of ours carries in its metadata, or None."""
    if "config" not in meta:
        return None
    import yaml

    try:
        return from_dict(Config, yaml.safe_load(meta["config"]) or {})
    except (yaml.YAMLError, ConfigError) as e:
        raise WeightsError(f"{path}: the config stored in the file is not valid ({e}); pass one with --config") \
            from None


def embedded_config(path: str | os.PathLike) -> Config | None:
    """The config inside a safetensors weights file (reads only the file's header); None for other files.
    A file that cannot be read raises WeightsError, as reading its tensors would."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except PermissionError as e:
        raise WeightsError(f"{path}: cannot read the weights file ({e.strerror}); check its permissions") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot read safetensors file ({e}); it may be truncated") from None
    return _embedded_config(path, meta)


def save_weights(model: nn.Module, path: str | os.PathLike, cfg: Config | None = None,
                 extra: dict[str, str] | None = None) -> Path:
    """Write the model's state_dict (and its config) as safetensors, atomically."""
    return save_state_dict(model.state_dict(), path, cfg, extra)


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike, cfg: Config | None = None,
                    extra: dict[str, str] | None = None) -> Path:
    """Write tensors (and a config) as safetensors, atomically; tensors sharing memory are copied apart."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": SAFETENSORS_FORMAT, **(extra or {})}
    if cfg is not None:
        meta["config"] = cfg.to_yaml()
    sd: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in state_dict.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        sd[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    tmp = path.with_name(f".{path.name}.tmp")  # hidden, like checkpoints: a stale one is removed on the next run
    if not path.parent.is_dir():
        raise WeightsError(f"{path}: cannot write weights, folder {path.parent} does not exist")
    try:
        save_file(sd, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - OSError or SafetensorError: disk full, permissions
        tmp.unlink(missing_ok=True)
        raise WeightsError(f"{path}: cannot write weights ({e})") from None
    return path


# --------------------------------------------------------------------------- strict loading


def _shapes(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _preset_shapes(name: str) -> dict[str, tuple[int, ...]]:
    from .config import load_config
    from .modeling import build_from_config

    with torch.device("meta"):
        model = build_from_config(load_config(name))
    return _shapes(model.state_dict())


def _fingerprint(shapes: dict[str, tuple[int, ...]]) -> tuple:
    """(embed_dim, blocks per stage, classes) read off a state_dict's shapes: cheap to compare."""
    import re

    embed = shapes.get("backbone.patch_embed.proj.weight", (None,))[0]
    blocks: dict[int, set[int]] = {}
    for k in shapes:
        m = re.match(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    depths = tuple(len(blocks[i]) for i in sorted(blocks))
    return embed, depths, _class_count(shapes)


def _preset_fingerprint(name: str) -> tuple:
    from .config import load_config

    cfg = load_config(name)
    return cfg.model.backbone.embed_dim, tuple(cfg.model.backbone.depths), cfg.model.num_classes


def suggest_preset(shapes: dict[str, tuple[int, ...]]) -> tuple[str | None, bool]:
    """The preset whose state_dict fits `shapes` best, and whether it fits exactly.

    Only presets with the same width, depths and class count are built (on the meta device) and compared
    key by key; otherwise the closest is the one sharing most of those three."""
    target = _fingerprint(shapes)
    best, best_score = None, None
    for name in preset_names():
        fp = _preset_fingerprint(name)
        if fp == target and _preset_shapes(name) == shapes:
            return name, True
        depth_gap = sum(abs(a - b) for a, b in zip(fp[1], target[1])) + 100 * abs(len(fp[1]) - len(target[1]))
        score = (sum(a == b for a, b in zip(fp, target)), -depth_gap)
        if best_score is None or score > best_score:
            best, best_score = name, score
    return best, False


def _class_count(shapes: dict[str, tuple[int, ...]]) -> int | None:
    s = shapes.get("sem_seg_head.predictor.class_embed.weight")
    return s[0] - 1 if s else None


CLASS_KEYS = ("mlp_cls_q.", "mlp_cls_k.", "class_embed.")


@dataclass
class Mismatch:
    """How a state_dict differs from a model's: keys missing from the file, unexpected, with another shape."""
    model_shapes: dict[str, tuple[int, ...]]
    ckpt_shapes: dict[str, tuple[int, ...]]

    @property
    def missing(self) -> list[str]:
        return [k for k in self.model_shapes if k not in self.ckpt_shapes]

    @property
    def unexpected(self) -> list[str]:
        return [k for k in self.ckpt_shapes if k not in self.model_shapes]

    @property
    def wrong(self) -> list[str]:
        return [k for k in self.model_shapes if k in self.ckpt_shapes and self.model_shapes[k] != self.ckpt_shapes[k]]

    def class_counts(self) -> tuple[int, int] | None:
        """(classes in the file, classes of the model) when only the class-specific layers differ."""
        wrong = self.wrong
        only_classes = (wrong and not self.missing and not self.unexpected
                        and all(any(c in k for c in CLASS_KEYS) for k in wrong))
        k_model, k_ckpt = _class_count(self.model_shapes), _class_count(self.ckpt_shapes)
        if only_classes and k_model and k_ckpt and k_model != k_ckpt:
            return k_ckpt, k_model
        return None

    def counts(self) -> str:
        return (f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.wrong)} with another shape")

    def example(self) -> str:
        """One differing key, shape differences first."""
        if self.wrong:
            k = self.wrong[0]
            return f"{k} is {self.model_shapes[k]} in the model but {self.ckpt_shapes[k]} in the file"
        if self.missing:
            return f"{self.missing[0]} is missing from the file"
        return f"{self.unexpected[0]} is not in the model" if self.unexpected else ""


def _hint(mismatch: Mismatch, path: Path) -> str:
    classes = mismatch.class_counts()
    if classes:
        k_ckpt, k_model = classes
        return (f"The file was trained for {k_ckpt} classes, the config has {k_model}: set "
                f"model.num_classes={k_ckpt} to use it as is, or fine-tune with a new head via "
                f"`semask train ... model.weights={path}` (the class-specific layers start fresh).")
    preset, exact = suggest_preset(mismatch.ckpt_shapes)
    if exact:
        return f"These weights fit the preset '{preset}': use --config {preset}."
    if preset:
        return (f"No preset fits exactly; the closest is '{preset}'. Check that the config matches the "
                "checkpoint (model size, classes, decoder layers).")
    return ""


def describe_mismatch(model_shapes: dict[str, tuple[int, ...]], ckpt_shapes: dict[str, tuple[int, ...]],
                      path: Path, limit: int = 12, hint: str | None = None) -> str:
    """The full report: every differing key (up to `limit` per group) and the hint."""
    m = Mismatch(model_shapes, ckpt_shapes)
    lines = [f"{path}: weights do not fit the model ({m.counts()})."]

    def show(title: str, keys: list[str], fmt) -> None:
        if keys:
            lines.append(f"  {title}:")
            lines.extend(f"    {fmt(k)}" for k in keys[:limit])
            if len(keys) > limit:
                lines.append(f"    ... and {len(keys) - limit} more")

    show("missing in the file", m.missing, lambda k: k)
    show("unexpected in the file", m.unexpected, lambda k: k)
    show("shape differs (model vs file)", m.wrong, lambda k: f"{k}: {model_shapes[k]} vs {ckpt_shapes[k]}")
    hint = _hint(m, path) if hint is None else hint
    if hint:
        lines.append(f"  {hint}")
    return "\n".join(lines)


def mismatch_error(model_shapes: dict[str, tuple[int, ...]], ckpt_shapes: dict[str, tuple[int, ...]],
                   path: Path) -> WeightsError:
    """A WeightsError whose message is one line (file, counts, one example key, the hint) and whose
    `details` is the full report of :func:`describe_mismatch`."""
    m = Mismatch(model_shapes, ckpt_shapes)
    hint = _hint(m, path)
    message = f"{path}: weights do not fit the model ({m.counts()}; e.g. {m.example()}). {hint}"
    return WeightsError(message.strip(), describe_mismatch(model_shapes, ckpt_shapes, path, 10 ** 9, hint))


def load_state_dict_strict(model: nn.Module, ckpt: Checkpoint) -> None:
    """Load `ckpt` into `model`, all keys and shapes exactly; raise WeightsError describing any mismatch."""
    sd = {k: v for k, v in ckpt.state_dict.items() if k not in IGNORED_KEYS}
    model_shapes = _shapes(model.state_dict())
    ckpt_shapes = _shapes(sd)
    if model_shapes != ckpt_shapes:
        raise mismatch_error(model_shapes, ckpt_shapes, ckpt.path)
    model.load_state_dict(sd, strict=True)


def config_for(cfg: "str | os.PathLike | Config | None", weights: str | os.PathLike, overrides: Any = ()) -> Config:
    """The config to use with `weights`: `cfg` (a preset, YAML path or Config) or, when None, the one
    embedded in a safetensors file; overrides applied. Cheap (reads at most the file's header), so that
    config errors come before any heavy work."""
    from .config import load_config

    if cfg is None:
        if not Path(weights).is_file() or Path(weights).stat().st_size == 0:
            read_checkpoint(weights)  # the file's own problem first (missing, a folder, empty)
        cfg = embedded_config(weights)
        if cfg is None:
            raise ConfigError(f"{weights}: the file holds no config; pass one with --config (a preset such as "
                              f"{', '.join(preset_names()[:2])}, ... or a YAML file)")
    return load_config(cfg, overrides)


def load_model(cfg: "str | os.PathLike | Config | None", weights: str | os.PathLike,
               device: str | torch.device = "cpu", overrides: Any = ()) -> nn.Module:
    """Build the model for `cfg` (a preset, YAML path or Config; None = the config inside a safetensors
    file) and load `weights` strictly. Returns the model in eval mode on `device`.
    The config is resolved (and checked) before the weights are read or the model is built."""
    from .modeling import build_from_config

    config = config_for(cfg, weights, overrides)
    ckpt = read_checkpoint(weights)
    model = build_from_config(config)
    load_state_dict_strict(model, ckpt)
    model.config = config  # type: ignore[attr-defined]
    return model.to(device).eval()


def weights_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What a weights file holds: format, tensor count, parameters, dtypes, embedded config."""
    ckpt = read_checkpoint(path)
    sd = ckpt.state_dict
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    params = sum(v.numel() for k, v in sd.items() if v.is_floating_point() and k not in IGNORED_KEYS)
    from .convert import checkpoint_kind

    info: dict[str, Any] = {"path": str(ckpt.path), "format": ckpt.format, "contents": checkpoint_kind(sd),
                            "tensors": len(sd), "numel": params, "dtypes": dtypes,
                            "num_classes": _class_count(_shapes(sd)),
                            "config": ckpt.config.name if ckpt.config else None}
    if ckpt.format == "safetensors":
        info["metadata"] = {k: v for k, v in ckpt.extra.items() if k != "format"}
    if ckpt.format == "detectron2":
        info["extra_entries"] = sorted(ckpt.extra)
        if "iteration" in ckpt.extra:
            info["iteration"] = int(ckpt.extra["iteration"])
    return json.loads(json.dumps(info, default=str))
