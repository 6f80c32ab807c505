"""`semask export --format onnx`: a tiny model exported, verified with onnxruntime, bad arguments refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from test_export import require

import semask
from semask.export import onnx_scores
from semask.cli import main


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = tiny_config(num_classes=3)
    return semask.save_weights(semask.build_model(cfg), tmp_path_factory.mktemp("w") / "tiny.safetensors", cfg)


def test_export_static_normalized_and_verify(weights: Path, tmp_path: Path, capsys):
    """A static graph at 48 x 80 taking normalised images; --verify runs it with onnxruntime."""
    onnx = require("onnx")
    require("onnxruntime")
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--weights", str(weights), "--format", "onnx", str(out), "--size", "48", "80",
                 "--normalized-input", "--verify"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (opset 20): image 1 x 3 x 48 x 80 -> scores with 3 classes" in text
    diff = float(text.split("max abs difference")[1].split()[0])
    assert diff < 1e-3
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 48, 80]
    assert onnx_scores(out, torch.zeros(1, 3, 48, 80)).shape == (1, 3, 48, 80)
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # a static graph takes only its size
        onnx_scores(out, torch.zeros(1, 3, 64, 80))
    assert any(node.op_type == "GridSample" for node in proto.graph.node)  # deformable attention, a standard op
    assert {op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")} == {20}


def test_bad_arguments_are_one_line_errors(weights: Path, tmp_path: Path, capsys):
    out = str(tmp_path / "m.onnx")
    for argv, message in ((["--size", "1", "2", "3"], "--size takes N or H W"),
                          (["--batch", "0"], "--batch must be >= 1"),
                          (["--opset", "12"], "opset 12 is too old"),
                          (["--device", "cuda"], "export runs on the CPU")):
        assert main(["export", "--weights", str(weights), out] + argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["export", "--weights", str(tmp_path / "missing.safetensors"), out]) == 2
    assert "not found" in capsys.readouterr().err
    assert not Path(out).exists()
