"""Shared fixtures. Reference data lives in ../shared/reference beside the repository; outside CI a
missing folder skips the tests that need it, under CI (CI=true) it is a failure."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = (REPO / ".." / "shared" / "reference").resolve()
GOLDENS = ("golden_mini_ade", "golden_mini_city")

torch.set_num_threads(min(2, torch.get_num_threads()))


def require_reference(sub: str = "") -> Path:
    path = REFERENCE / sub
    if not path.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"reference data missing under CI: {path}")
        pytest.skip(f"reference data not found at {path} (it lives beside the repository as ../shared/reference)")
    return path


@pytest.fixture
def reference_dir() -> Path:
    return require_reference()


@dataclass
class Golden:
    name: str
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def weights(self) -> Path:
        return self.root / "model_final.pth"

    @property
    def image(self) -> Path:
        return self.root / "input.png"

    @property
    def expected(self) -> dict:
        return _expected(str(self.root))

    def model(self):
        """The golden model loaded strictly, in eval mode (float32, CPU)."""
        from semask import load_model

        return load_model(self.config, self.weights)


@lru_cache(maxsize=4)
def _expected(root: str) -> dict:
    return torch.load(Path(root) / "expected.pt", weights_only=True)


@pytest.fixture(params=GOLDENS)
def golden(request) -> Golden:
    return Golden(request.param, require_reference(request.param))


@pytest.fixture
def golden_ade() -> Golden:
    return Golden("golden_mini_ade", require_reference("golden_mini_ade"))


@pytest.fixture
def golden_city() -> Golden:
    return Golden("golden_mini_city", require_reference("golden_mini_city"))


# A very small SeMask Mask2Former (all parts present, every size > 0) as dotted overrides.
TINY_OVERRIDES = {
    "model.backbone.embed_dim": 16, "model.backbone.depths": [2, 2, 2, 2],
    "model.backbone.num_heads": [1, 2, 2, 4], "model.backbone.window_size": 4,
    "model.backbone.sem_window_size": 4, "model.backbone.drop_path_rate": 0.0,
    "model.pixel_decoder.conv_dim": 32, "model.pixel_decoder.mask_dim": 32,
    "model.pixel_decoder.transformer_enc_layers": 1, "model.pixel_decoder.transformer_nheads": 4,
    "model.pixel_decoder.transformer_dim_feedforward": 64,
    "model.decoder.hidden_dim": 32, "model.decoder.nheads": 4, "model.decoder.dim_feedforward": 64,
    "model.decoder.num_queries": 8, "model.decoder.dec_layers": 4,
}


def tiny_config(num_classes: int = 5, **overrides):
    """The tiny model as a Config for fast CPU tests (few loss points too)."""
    from semask.config import load_config

    return load_config("semask-tiny-ade20k", {**TINY_OVERRIDES, "model.num_classes": num_classes,
                                              "loss.num_points": 256, **overrides})


@pytest.fixture
def tiny_cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and lose a lot when other work shares the CPU.
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
