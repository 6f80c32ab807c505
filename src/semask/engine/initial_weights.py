"""Initial weights for training (`model.weights`): a full checkpoint or an ImageNet Swin backbone.

* A full SeMask Mask2Former checkpoint (our safetensors, a detectron2 `model_final.pth`, or a training
  checkpoint of ours) loads strictly. When only the class-specific layers differ in shape (another
  class count: fine-tuning on new classes), those layers keep their fresh initialisation and everything
  else is loaded; the report lists them.
* Anything else is treated as an ImageNet Swin checkpoint (Microsoft `swin_*.pth` or its detectron2
  `.pkl` conversion) and goes to `semask.pretrained.load_backbone_pretrained`, which maps the names,
  loads the backbone and reports what was loaded, new and dropped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from ..weights import IGNORED_KEYS, WeightsError, mismatch_error, read_checkpoint

log = logging.getLogger("semask.train")

CLASS_SPECIFIC = ("mlp_cls_q.", "mlp_cls_k.", "class_embed.")


def is_full_model(keys) -> bool:
    return any(k.startswith("sem_seg_head.") for k in keys)


def load_initial_weights(model: nn.Module, path: str | os.PathLike) -> str:
    """Load `path` into `model` as described in the module docstring; returns a one-paragraph report."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    if not is_full_model(ckpt.state_dict):
        try:
            from ..pretrained import load_backbone_pretrained
        except ImportError:
            raise WeightsError(f"{path}: not a full SeMask Mask2Former checkpoint, and backbone initialisation from "
                               "ImageNet Swin checkpoints (semask.pretrained) is not available in this "
                               "installation") from None
        report = load_backbone_pretrained(model, path)
        return report.summary() if hasattr(report, "summary") else f"backbone initialised from {path}: {report}"
    sd = {k: v for k, v in ckpt.state_dict.items() if k not in IGNORED_KEYS}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    differing = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or any(not any(c in k for c in CLASS_SPECIFIC) for k in differing):
        raise mismatch_error({k: tuple(v.shape) for k, v in own.items()},
                             {k: tuple(v.shape) for k, v in sd.items()}, path)
    for k in differing:
        del sd[k]
    model.load_state_dict(sd, strict=not differing)
    if differing:
        return (f"loaded {len(sd)} tensors from {path}; {len(differing)} class-specific tensors start fresh "
                f"(the file has another class count): {', '.join(differing[:4])}{' ...' if len(differing) > 4 else ''}")
    return f"loaded all {len(sd)} tensors from {path}"
