"""Typed configuration: dataclasses, our YAML format, presets and dotted command-line overrides.

Layering (lowest first): dataclass defaults -> a preset or YAML file (which may name a `base:`) ->
command-line `KEY=VALUE` overrides. Unknown keys and wrong types are errors naming the key.
Original detectron2 YAML configs are read by :mod:`semask.d2_config` into the same dataclasses.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem a user can fix: the message names the key or file."""


def _ade_train_sizes(base: int) -> tuple[int, ...]:
    return tuple(int(x * 0.1 * base) for x in range(5, 21))


@dataclass
class BackboneConfig:
    """SeMask Swin backbone (MODEL.SWIN in detectron2 configs)."""
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    sem_window_size: int = 7
    num_sem_blocks: int = 1
    # "windowed" / "global" per stage; None = the published rule (150 classes: windowed x3 + global)
    semantic_attention: tuple[str, ...] | None = None
    patch_size: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    qk_scale: float | None = None
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.3
    patch_norm: bool = True
    use_checkpoint: bool = False


@dataclass
class PixelDecoderConfig:
    """MSDeformAttn pixel decoder (MODEL.SEM_SEG_HEAD)."""
    conv_dim: int = 256
    mask_dim: int = 256
    norm: str = "GN"
    transformer_enc_layers: int = 6
    transformer_nheads: int = 8
    transformer_dim_feedforward: int = 1024
    transformer_dropout: float = 0.0
    n_points: int = 4
    transformer_in_features: tuple[str, ...] = ("res3", "res4", "res5")
    common_stride: int = 4


@dataclass
class DecoderConfig:
    """Masked-attention transformer decoder (MODEL.MASK_FORMER). dec_layers counts the initial prediction."""
    hidden_dim: int = 256
    num_queries: int = 100
    nheads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 10
    enforce_input_proj: bool = False
    pre_norm: bool = False


@dataclass
class ModelConfig:
    num_classes: int = 150
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    pixel_mean: tuple[float, ...] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, ...] = (58.395, 57.12, 57.375)
    size_divisibility: int = 32
    # initial weights for training (ImageNet Swin .pth/.pkl or a full checkpoint); "" = from scratch
    weights: str = ""
    # training: feed-forward blocks keep only their input for backward (modeling/lean_ffn.py; -12 % peak
    # memory for SeMask-T at 512); off for small models, where the recomputation costs more than it saves
    lean_ffn: bool = True


@dataclass
class LossConfig:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    cate_weight: float = 0.4
    no_object_weight: float = 0.1
    deep_supervision: bool = True
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75


@dataclass
class DataConfig:
    """Dataset and input pipeline (DATASETS / INPUT / DATALOADER)."""
    dataset: str = "ade20k"          # ade20k | cityscapes | folder
    root: str = ""
    train_split: str = "train"
    val_split: str = "val"
    class_names: tuple[str, ...] | None = None
    min_size_train: tuple[int, ...] = _ade_train_sizes(512)
    min_size_train_sampling: str = "choice"
    max_size_train: int = 2048
    crop_enabled: bool = True
    crop_size: tuple[int, ...] = (512, 512)
    single_category_max_area: float = 1.0
    color_aug_ssd: bool = True
    hflip: bool = True
    size_divisibility: int = 512     # pad training images/labels to a multiple (-1: no padding)
    min_size_test: int = 512
    max_size_test: int = 2048
    ignore_value: int = 255
    num_workers: int = 4
    on_error: str = "raise"          # raise | skip


@dataclass
class SolverConfig:
    ims_per_batch: int = 16
    base_lr: float = 1e-4
    max_iter: int = 160000
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    backbone_multiplier: float = 0.1
    lr_scheduler: str = "poly"
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 1.0
    clip_gradients: bool = True
    clip_type: str = "full_model"
    clip_value: float = 0.01
    clip_norm_type: float = 2.0
    amp: bool = True
    grad_accum_steps: int = 1
    checkpoint_period: int = 5000
    keep_last: int = 3
    log_period: int = 20
    skip_nonfinite: bool = False


@dataclass
class TestConfig:
    eval_period: int = 5000
    aug_enabled: bool = False
    aug_min_sizes: tuple[int, ...] = (256, 384, 512, 640, 768, 896)
    aug_max_size: int = 3584
    aug_flip: bool = True


@dataclass
class Config:
    """Everything needed to build, train and evaluate a SeMask Mask2Former model."""
    name: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, overrides: Iterable[str] | dict[str, Any]) -> "Config":
        """A copy with dotted overrides applied (`["solver.base_lr=0.001"]` or `{"solver.base_lr": 0.001}`)."""
        return apply_overrides(self, overrides)


# --------------------------------------------------------------------------- dict <-> dataclass


def to_plain(obj: Any) -> Any:
    """Dataclasses to dicts, tuples to lists (YAML/JSON friendly)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` to type `tp` or raise ConfigError naming `key` and the accepted type."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = _parse_scalar(value)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")
        return tuple(_coerce(v, item_tp, key) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _parse_scalar(text: str) -> Any:
    """Command-line value: YAML scalar/list syntax ("0.1", "[1, 2]", "true", "(512, 512)")."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        try:
            return list(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from a nested dict, starting from `base` (or defaults). Unknown keys raise."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    obj = base if base is not None else cls()
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    changes = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            where = f"in '{prefix.rstrip('.')}'" if prefix else "at the top level"
            raise ConfigError(f"unknown config key '{key}'. Accepted keys {where}: {', '.join(sorted(names))}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            changes[k] = from_dict(tp, v or {}, key + ".", getattr(obj, k))
        else:
            changes[k] = _coerce(v, tp, key)
    return dataclasses.replace(obj, **changes)


def _set_dotted(cfg: Any, parts: list[str], value: Any, full_key: str) -> Any:
    names = {f.name for f in dataclasses.fields(cfg)}
    head = parts[0]
    if head not in names:
        section = full_key.split(".")[:-len(parts)]
        where = f"in '{'.'.join(section)}'" if section else "at the top level"
        raise ConfigError(f"unknown config key '{full_key}'. Accepted keys {where}: {', '.join(sorted(names))}")
    tp = _hints(type(cfg))[head]
    if len(parts) == 1:
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full_key}' is a section; set one of its keys instead")
            return dataclasses.replace(cfg, **{head: from_dict(tp, value, full_key + ".", getattr(cfg, head))})
        return dataclasses.replace(cfg, **{head: _coerce(value, tp, full_key)})
    if not dataclasses.is_dataclass(tp):
        raise ConfigError(f"config key '{full_key}': '{head}' is not a section")
    return dataclasses.replace(cfg, **{head: _set_dotted(getattr(cfg, head), parts[1:], value, full_key)})


def parse_override(item: str) -> tuple[str, Any]:
    """'a.b=VALUE' -> ('a.b', parsed VALUE)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like KEY=VALUE (for example solver.base_lr=0.0001)")
    key, _, raw = item.partition("=")
    return key.strip(), _parse_scalar(raw)


def apply_overrides(cfg: Config, overrides: Iterable[str] | dict[str, Any]) -> Config:
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        cfg = _set_dotted(cfg, key.split("."), value, key)
    return validate(cfg)


# --------------------------------------------------------------------------- validation


def validate(cfg: Config) -> Config:
    """Check combinations that would fail later, before any heavy work; errors name the key."""
    b, m = cfg.model.backbone, cfg.model
    n = len(b.depths)
    if len(b.num_heads) != n:
        raise ConfigError(f"model.backbone.num_heads {list(b.num_heads)} needs one entry per stage "
                          f"(model.backbone.depths has {n})")
    for i, heads in enumerate(b.num_heads):
        dim = b.embed_dim * 2 ** i
        if heads <= 0 or dim % heads:
            raise ConfigError(f"model.backbone.num_heads[{i}]={heads} does not divide the stage width {dim} "
                              f"(model.backbone.embed_dim={b.embed_dim} x 2^{i})")
    if b.semantic_attention is not None:
        if len(b.semantic_attention) != n:
            raise ConfigError(f"model.backbone.semantic_attention needs {n} entries, got {list(b.semantic_attention)}")
        bad = [s for s in b.semantic_attention if s not in ("windowed", "global")]
        if bad:
            raise ConfigError(f"model.backbone.semantic_attention: {bad} not accepted; use 'windowed' or 'global'")
    if b.window_size < 1 or b.sem_window_size < 1:
        raise ConfigError("model.backbone.window_size and sem_window_size must be >= 1")
    if m.num_classes < 1:
        raise ConfigError(f"model.num_classes must be >= 1, got {m.num_classes}")
    if m.pixel_decoder.conv_dim % 32:
        raise ConfigError(f"model.pixel_decoder.conv_dim={m.pixel_decoder.conv_dim} must be a multiple of 32 "
                          "(GroupNorm with 32 groups)")
    if m.pixel_decoder.conv_dim % m.pixel_decoder.transformer_nheads:
        raise ConfigError("model.pixel_decoder.transformer_nheads must divide model.pixel_decoder.conv_dim")
    if m.decoder.hidden_dim % m.decoder.nheads:
        raise ConfigError(f"model.decoder.nheads={m.decoder.nheads} must divide model.decoder.hidden_dim="
                          f"{m.decoder.hidden_dim}")
    valid_feats = {f"res{i + 2}" for i in range(n)}
    bad = [f for f in m.pixel_decoder.transformer_in_features if f not in valid_feats]
    if bad:
        raise ConfigError(f"model.pixel_decoder.transformer_in_features: {bad} not among {sorted(valid_feats)}")
    if len(m.pixel_mean) != 3 or len(m.pixel_std) != 3:
        raise ConfigError("model.pixel_mean and model.pixel_std need 3 values (RGB)")
    if cfg.data.on_error not in ("raise", "skip"):
        raise ConfigError(f"data.on_error must be 'raise' or 'skip', got {cfg.data.on_error!r}")
    if len(cfg.data.crop_size) != 2:
        raise ConfigError(f"data.crop_size needs (height, width), got {list(cfg.data.crop_size)}")
    div = cfg.data.size_divisibility
    if cfg.data.crop_enabled and div > 0 and max(cfg.data.crop_size) > div:
        raise ConfigError(f"data.crop_size {list(cfg.data.crop_size)} is larger than data.size_divisibility={div}, "
                          "the size training crops are padded to; set data.size_divisibility to at least "
                          f"{max(cfg.data.crop_size)} (the crop size, as the presets do) or to -1 (no padding)")
    if cfg.data.class_names is not None and len(cfg.data.class_names) != m.num_classes:
        raise ConfigError(f"data.class_names has {len(cfg.data.class_names)} names but model.num_classes is "
                          f"{m.num_classes}")
    if not math.isfinite(cfg.solver.base_lr) or cfg.solver.base_lr < 0:
        raise ConfigError(f"solver.base_lr must be a finite number >= 0, got {cfg.solver.base_lr}")
    if cfg.solver.grad_accum_steps < 1:
        raise ConfigError("solver.grad_accum_steps must be >= 1")
    return cfg


# --------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid YAML{where}: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def is_detectron2_yaml(path: Path) -> bool:
    """Detectron2 configs use upper-case sections (MODEL, SOLVER, ...) or `_BASE_`."""
    try:
        head = path.read_text()
    except OSError:
        return False
    return "_BASE_" in head or any(line.startswith(("MODEL:", "SOLVER:", "INPUT:", "DATASETS:"))
                                  for line in head.splitlines())


def _load_ours(path: Path, seen: tuple[Path, ...] = ()) -> Config:
    if path in seen:
        raise ConfigError(f"config file {path} includes itself through 'base'")
    data = _read_yaml(path)
    base_cfg = Config()
    base = data.pop("base", None)
    if base is not None:
        base_cfg = _load_spec(str(base), relative_to=path.parent, seen=seen + (path,))
    return from_dict(Config, data, "", base_cfg)


def _load_spec(spec: str, relative_to: Path | None = None, seen: tuple[Path, ...] = ()) -> Config:
    if spec in preset_names():
        return _load_ours(PRESET_DIR / f"{spec}.yaml", seen)
    path = Path(spec)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not path.exists():
        raise ConfigError(f"config {spec!r} is neither a preset ({', '.join(preset_names())}) nor an existing file")
    if is_detectron2_yaml(path):
        from .d2_config import load_detectron2_config
        return load_detectron2_config(path)
    return _load_ours(path, seen)


def load_config(spec: "str | Path | Config", overrides: Iterable[str] | dict[str, Any] = ()) -> Config:
    """A Config from a preset name, our YAML, an original detectron2 YAML or a Config, plus overrides.

    Overrides whose first segment is upper case (MODEL.SWIN.EMBED_DIM=...) apply to detectron2 configs
    before conversion; the others use our dotted names (solver.base_lr=...).
    """
    if isinstance(spec, Config):
        return apply_overrides(spec, overrides)
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
    d2_items = [(k, v) for k, v in items if k.split(".")[0].isupper()]
    ours = {k: v for k, v in items if not k.split(".")[0].isupper()}
    path = Path(spec)
    if d2_items:
        if str(spec) in preset_names() or not path.exists() or not is_detectron2_yaml(path):
            keys = ", ".join(k for k, _ in d2_items)
            raise ConfigError(f"detectron2-style overrides ({keys}) need a detectron2 YAML config; "
                              f"use our dotted names (e.g. solver.base_lr=...) with {spec}")
        from .d2_config import load_detectron2_config
        cfg = load_detectron2_config(path, d2_items)
    else:
        cfg = _load_spec(str(spec))
    return apply_overrides(cfg, ours)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(cfg.to_yaml())
