"""semask: SeMask Mask2Former semantic segmentation in pure PyTorch.

    import semask
    model = semask.build_model("semask-tiny-ade20k")              # preset, YAML path or Config
    model = semask.load_model("semask-large-ade20k", "model_final.pth")
    predictor = semask.Predictor(model)
    label = predictor("image.jpg")                                  # (H, W) class indices
"""

from __future__ import annotations

import os

from .config import Config, ConfigError, load_config, preset_names
from .predictor import Prediction, Predictor
from .weights import WeightsError, load_model, save_weights

__version__ = "0.1.0"


def build_model(cfg: "str | os.PathLike | Config", overrides=()):
    """A freshly initialised SeMask Mask2Former for a preset name, a YAML path or a Config."""
    from .modeling import build_from_config

    config = load_config(cfg, overrides)
    model = build_from_config(config)
    model.config = config
    return model


__all__ = ["Config", "ConfigError", "Prediction", "Predictor", "WeightsError", "build_model", "load_config",
           "load_model", "preset_names", "save_weights", "__version__"]
