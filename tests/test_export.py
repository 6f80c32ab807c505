"""ONNX export: onnxruntime reproduces PyTorch's per-class scores (golden model, static and dynamic shapes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import GOLDENS, Golden, require_reference, tiny_config

from semask import build_model
from semask.export import (CACHE_FLAGS, SemanticScores, dynamic_example_size, export_onnx, onnx_scores, onnx_session,
                           shape_caches_disabled)
from semask.io import read_image
from semask.modeling.layers import PositionEncodingCache
from semask.modeling.semask_swin import SeMaskStage

TOL = 1e-3


def require(module: str):
    """The optional export packages (`semask[export]`): skipped outside CI when missing, a failure under CI."""
    try:
        return __import__(module)
    except ImportError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{module} is missing under CI: install the test extras with semask[export]")
        pytest.skip(f"{module} not installed (pip install 'semask[export]')")


def test_wrapper_equals_predict():
    """The exported computation is model.predict: same scores for an image not a multiple of 32."""
    model = build_model(tiny_config()).eval()
    image = torch.rand(2, 3, 50, 70) * 255
    with torch.no_grad():
        expected = model.predict(image)
        got = SemanticScores(model)(image)
        normalised = SemanticScores(model, normalized_input=True)((image - model.pixel_mean) / model.pixel_std)
    for i in range(2):
        torch.testing.assert_close(got[i], expected[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(normalised[i], expected[i], rtol=0, atol=1e-5)


def test_shape_caches_switch_restores_and_keeps_outputs():
    model = build_model(tiny_config()).eval()
    image = torch.rand(1, 3, 64, 64) * 255

    def flags() -> list[bool]:
        out = [getattr(m, f) for m in model.modules() for f in CACHE_FLAGS if isinstance(getattr(m, f, None), bool)]
        return out + [v.enabled for m in model.modules() for v in vars(m).values()
                      if isinstance(v, PositionEncodingCache)]

    assert any(isinstance(m, SeMaskStage) and m.cache_shift_mask for m in model.modules())
    before = flags()
    assert len(before) >= 4 + 2 and all(before)  # four stages' shift masks, two positional encodings
    with torch.no_grad():
        cached = model.predict(image)[0]
        with shape_caches_disabled(model):
            assert not any(flags())
            uncached = model.predict(image)[0]
    assert flags() == before
    assert torch.equal(cached, uncached)


def test_dynamic_example_pads_every_stage():
    model = build_model(tiny_config(**{"model.backbone.window_size": 7, "model.backbone.sem_window_size": 5}))
    h, w = dynamic_example_size(model)
    assert h != w
    for size in (h, w):
        tokens = -(-size // 32) * 32 // 4
        for i in range(4):
            n = -(-tokens // 2 ** i)
            assert n % 7 and n % 5, (size, i, n)
    # window 4 divides every stage of a multiple-of-32 input: nothing ever pads, any example will do
    h, w = dynamic_example_size(build_model(tiny_config()))
    assert h != w and min(h, w) > 32


@pytest.fixture(scope="module")
def golden_dynamic(tmp_path_factory) -> tuple[Golden, torch.nn.Module, Path]:
    require("onnx")
    require("onnxruntime")
    golden = Golden(GOLDENS[0], require_reference(GOLDENS[0]))
    model = golden.model()
    path = tmp_path_factory.mktemp("onnx") / "golden_dynamic.onnx"
    result = export_onnx(model, path, dynamic=True)
    assert result.dynamic and result.num_classes == 150
    return golden, model, onnx_session(path)


def test_golden_onnx_matches_pytorch_on_golden_input(golden_dynamic):
    golden, model, session = golden_dynamic
    image = torch.from_numpy(read_image(golden.image)).permute(2, 0, 1).float()
    got = onnx_scores(session, image[None])[0]
    with torch.no_grad():
        expected = model.predict([image])[0]
    assert got.shape == expected.shape == golden.expected["sem_seg"].shape
    assert (got - expected).abs().max().item() < TOL
    assert (got - golden.expected["sem_seg"]).abs().max().item() < TOL


@pytest.mark.parametrize("hw", [(64, 64), (47, 150)])
def test_golden_onnx_dynamic_other_sizes(golden_dynamic, hw):
    _, model, session = golden_dynamic
    image = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(hw[0])) * 255
    got = onnx_scores(session, image)[0]
    with torch.no_grad():
        expected = model.predict(image)[0]
    assert got.shape == expected.shape == (150, *hw)
    assert (got - expected).abs().max().item() < TOL


def test_golden_onnx_dynamic_batch(golden_dynamic):
    _, model, session = golden_dynamic
    images = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(3)) * 255
    got = onnx_scores(session, images)
    with torch.no_grad():
        expected = torch.stack(model.predict(images))
    assert (got - expected).abs().max().item() < TOL


def test_bad_arguments(tmp_path: Path):
    model = build_model(tiny_config())
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=13)
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx(model, tmp_path / "m.pt")
