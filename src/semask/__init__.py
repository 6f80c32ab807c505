"""semask: SeMask Mask2Former semantic segmentation in pure PyTorch.

    import semask
    model = semask.build_model("semask-tiny-ade20k")              # preset, YAML path or Config
    model = semask.load_model("semask-large-ade20k", "model_final.pth")
    predictor = semask.Predictor(model)
    label = predictor("image.jpg")                                  # (H, W) class indices

Heavy modules (torch) load on first use, so `semask --help` stays instant.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from .config import Config, ConfigError, load_config, preset_names

__version__ = "0.1.0"

_LAZY = {
    "Predictor": "predictor", "Prediction": "predictor",
    "load_model": "weights", "save_weights": "weights", "WeightsError": "weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'semask' has no attribute {name!r}")


def build_model(cfg: "str | os.PathLike | Config", overrides=()):
    """A freshly initialised SeMask Mask2Former for a preset name, a YAML path or a Config."""
    from .modeling import build_from_config

    config = load_config(cfg, overrides)
    model = build_from_config(config)
    model.config = config
    return model


__all__ = ["Config", "ConfigError", "Prediction", "Predictor", "WeightsError", "build_model", "load_config",
           "load_model", "preset_names", "save_weights", "__version__"]
