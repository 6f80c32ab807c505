"""SeMask Mask2Former modules: one component per file, plain constructor arguments."""

from .build import build_backbone, build_from_config, build_segmentor
from .segmentor import SeMaskMask2Former

__all__ = ["SeMaskMask2Former", "build_backbone", "build_segmentor", "build_from_config"]
