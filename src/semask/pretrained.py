"""Initialising the SeMask Swin backbone from ImageNet-pretrained Swin weights.

Accepted: Microsoft's Swin checkpoints (`swin_*.pth`, {"model": state_dict}), their detectron2 `.pkl`
conversions (same key names), backbone-only files written by `semask convert` (keys `backbone.*`) and
full SeMask checkpoints (only their `backbone.*` part is used).

Microsoft key names map one to one onto ours under `backbone.` (`patch_embed.*`, `layers.{i}.blocks.{j}.*`,
`layers.{i}.downsample.*`). Dropped: the ImageNet classifier (`head.*`), the final `norm.*` (the model has
one output norm per stage instead), `absolute_pos_embed`, and the derived buffers `relative_position_index`
and `attn_mask` (recomputed for the model's window). Relative-position bias tables are resized bicubically
when the pretraining window differs (e.g. 7 -> 12). The semantic layers, the per-stage output norms and
everything outside the backbone keep their fresh initialisation ("new" in the report).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .weights import Checkpoint, WeightsError, read_checkpoint

# file key prefix (Microsoft layout) -> why it is not loaded
DROPPED_PREFIXES = {
    "head.": "ImageNet classifier",
    "norm.": "final ImageNet norm (the model has per-stage output norms)",
    "absolute_pos_embed": "absolute position embedding (not used by SeMask)",
}
DERIVED_SUFFIXES = {
    "relative_position_index": "derived from the window size (recomputed)",
    "attn_mask": "shifted-window mask (recomputed)",
}
SWIN_V2_MARKERS = ("cpb_mlp", "logit_scale", "attn.q_bias")


@dataclass
class PretrainedReport:
    """What `load_backbone_pretrained` did. Keys are model keys (`backbone.*`), except `dropped` (file keys)."""
    source: Path
    loaded: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    loaded_numel: int = 0

    def new_groups(self) -> dict[str, int]:
        """Counts of new tensors by part of the model."""
        groups: Counter[str] = Counter()
        for k in self.new:
            if ".semantic_layer." in k:
                groups["semantic layers"] += 1
            elif k.startswith("backbone.norm"):
                groups["stage output norms"] += 1
            elif k.startswith("backbone."):
                groups["Swin (not in the file)"] += 1
            else:
                groups[k.split(".")[0] if not k.startswith("sem_seg_head.") else ".".join(k.split(".")[:2])] += 1
        return dict(groups)

    def summary(self) -> str:
        lines = [f"{self.source}: loaded {len(self.loaded)} tensors ({self.loaded_numel:,} values) into the backbone"]
        if self.resized:
            (a, b) = next(iter(self.resized.values()))
            lines.append(f"  resized {len(self.resized)} relative-position tables bicubically, window "
                         f"{_window_of(a[0])} -> {_window_of(b[0])} (e.g. {a} -> {b})")
        groups = self.new_groups()
        lines.append(f"  new (fresh initialisation) {len(self.new)}: "
                     + ", ".join(f"{name} {n}" for name, n in groups.items()))
        reasons = Counter(self.dropped.values())
        lines.append(f"  dropped from the file {len(self.dropped)}: "
                     + "; ".join(f"{n} x {reason}" for reason, n in reasons.items()))
        missing_swin = groups.get("Swin (not in the file)", 0)
        if missing_swin:
            lines.append(f"  warning: {missing_swin} Swin tensors of the model are not in the file; check that the "
                         "checkpoint is for the same Swin size (depths) as the config")
        return "\n".join(lines)


def _window_of(table_rows: int) -> int:
    side = int(round(math.sqrt(table_rows)))
    return (side + 1) // 2


def resize_relative_position_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """((2w0-1)^2, heads) -> ((2w-1)^2, heads): the bias grid resized bicubically (align_corners=False)."""
    rows, heads = table.shape
    side = int(round(math.sqrt(rows)))
    if side * side != rows:
        raise ValueError(f"relative position table with {rows} rows is not a square grid")
    new_side = 2 * window - 1
    if side == new_side:
        return table
    grid = table.float().t().reshape(1, heads, side, side)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return grid.reshape(heads, new_side * new_side).t().contiguous().to(table.dtype)


def _strip(key: str) -> str:
    for prefix in ("module.", "model."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _drop_reason(key: str) -> str | None:
    """Why a backbone-relative file key is never loaded, or None."""
    for suffix, reason in DERIVED_SUFFIXES.items():
        if key.endswith(suffix):
            return reason
    for prefix, reason in DROPPED_PREFIXES.items():
        if key.startswith(prefix):
            return reason
    return None


def swin_backbone_items(state_dict: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, tuple[str, torch.Tensor]], dict[str, str]]:
    """Split a Swin / SeMask checkpoint into backbone tensors {backbone-relative name: (file key, tensor)}
    and the file keys that are never loaded {file key: reason}."""
    kept: dict[str, tuple[str, torch.Tensor]] = {}
    dropped: dict[str, str] = {}
    has_prefixed = any(_strip(k).startswith("backbone.") for k in state_dict)
    for key, value in state_dict.items():
        name = _strip(key)
        if has_prefixed:
            if not name.startswith("backbone."):
                dropped[key] = "not part of the backbone"
                continue
            name = name[len("backbone."):]
        reason = _drop_reason(name)
        if reason:
            dropped[key] = reason
        else:
            kept[name] = (key, value)
    return kept, dropped


def _check_not_swin_v2(keys: list[str], path: Path) -> None:
    marked = [k for k in keys if any(m in k for m in SWIN_V2_MARKERS)]
    if marked:
        raise WeightsError(f"{path}: this looks like a Swin V2 checkpoint ({marked[0]}); SeMask uses Swin V1 "
                           "(swin_tiny/small/base/large_patch4_window7/12 checkpoints)")


def load_backbone_pretrained(model: nn.Module, weights: str | os.PathLike | Checkpoint) -> PretrainedReport:
    """Initialise the Swin part of `model` (a SeMaskMask2Former or its backbone) from ImageNet Swin weights.

    Returns a report of loaded / resized / new / dropped tensors. Raises WeightsError when nothing
    matches, or when tensors match by name but not by shape (another Swin size).
    """
    ckpt = weights if isinstance(weights, Checkpoint) else read_checkpoint(weights)
    backbone = getattr(model, "backbone", model)
    prefix = "backbone." if backbone is not model else ""
    own = backbone.state_dict()
    file_sd, dropped = swin_backbone_items(ckpt.state_dict)
    _check_not_swin_v2(list(file_sd), ckpt.path)
    report = PretrainedReport(ckpt.path, dropped=dropped)
    to_load: dict[str, torch.Tensor] = {}
    wrong: list[str] = []
    for name, (key, value) in file_sd.items():
        if name not in own:
            report.dropped[key] = "not in the model"
            continue
        target = own[name]
        if tuple(value.shape) != tuple(target.shape):
            if name.endswith("relative_position_bias_table") and value.dim() == 2 and value.shape[1] == target.shape[1]:
                window = _window_of(target.shape[0])
                resized = resize_relative_position_table(value, window)
                report.resized[prefix + name] = (tuple(value.shape), tuple(resized.shape))
                value = resized
            elif ".semantic_layer." in name:
                report.dropped[key] = f"class-specific shape {tuple(value.shape)} differs from the model's " \
                                       f"{tuple(target.shape)}"
                continue
            else:
                wrong.append(f"{name}: file {tuple(value.shape)} vs model {tuple(target.shape)}")
                continue
        to_load[name] = value
    if wrong:
        raise WeightsError(f"{ckpt.path}: {len(wrong)} backbone tensors have another shape than the model "
                           f"(first: {wrong[0]}); the checkpoint is for another Swin size than the config "
                           f"({_swin_size_hint(file_sd, own)})")
    if not to_load:
        first = ", ".join(list(ckpt.state_dict)[:4])
        raise WeightsError(f"{ckpt.path}: no tensor of the file matches the Swin backbone (the file starts with "
                           f"{first}); expected a Swin ImageNet checkpoint (patch_embed.*, layers.*) or a SeMask "
                           "checkpoint")
    with torch.no_grad():
        for name, value in to_load.items():
            own[name].copy_(value.to(own[name].dtype))
    report.loaded = [prefix + k for k in to_load]
    report.loaded_numel = sum(v.numel() for v in to_load.values())
    loaded = set(to_load)
    report.new = [prefix + k for k in own if k not in loaded and not k.endswith("relative_position_index")]
    if prefix:
        report.new += [k for k in model.state_dict() if not k.startswith(prefix)]
    return report


def _swin_size_hint(file_sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    key = "patch_embed.proj.weight"
    if key in file_sd and key in own:
        return f"embed dim {file_sd[key][1].shape[0]} in the file, {own[key].shape[0]} in the config"
    return "check model.backbone.embed_dim / depths / num_heads"
