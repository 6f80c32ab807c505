"""`semask convert` and `semask info --weights`: golden checkpoint -> safetensors -> predict, refusals."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from test_convert import CreatesFile
from test_pretrained import microsoft_swin_state_dict

from semask.cli import main
from semask.weights import read_checkpoint


def test_convert_golden_then_predict_from_safetensors(golden_ade, tmp_path: Path, capsys):
    dst = tmp_path / "mini_ade.safetensors"
    assert main(["convert", str(golden_ade.weights), str(dst), "--config", str(golden_ade.config)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {dst}" in out and "mini_ade.yaml" in out
    assert (tmp_path / "mini_ade.yaml").is_file()
    # no --config needed afterwards: the file carries it
    assert main(["predict", "--weights", str(dst), str(golden_ade.image), "--output", str(tmp_path / "pred"),
                 "--save-scores"]) == 0
    scores = np.load(tmp_path / "pred" / "input.scores.npy")
    expected = golden_ade.expected["sem_seg"].numpy()
    assert scores.shape == expected.shape and np.abs(scores - expected).max() < 1e-4

    capsys.readouterr()
    assert main(["info", "--weights", str(dst), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["weights"]
    assert info["format"] == "safetensors" and info["contents"] == "semask-model"
    assert info["num_classes"] == 150 and info["config"] == "config"
    assert info["metadata"]["source"] == "model_final.pth"
    assert info["numel"] == sum(v.numel() for k, v in read_checkpoint(golden_ade.weights).state_dict.items()
                                if v.is_floating_point() and k != "criterion.empty_weight")
    assert main(["info", "--weights", str(dst)]) == 0
    text = capsys.readouterr().out
    assert "SeMask Mask2Former model" in text and "config      config (embedded)" in text

    # an existing output is kept unless --force
    assert main(["convert", str(golden_ade.weights), str(dst), "--config", str(golden_ade.config)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(golden_ade.weights), str(dst), "--config", str(golden_ade.config), "--force"]) == 0


def test_convert_swin_pkl(tmp_path: Path, capsys):
    src = tmp_path / "swin_tiny_patch4_window7_224.pkl"
    with open(src, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in microsoft_swin_state_dict().items()},
                     "__author__": "third_party", "matching_heuristics": True}, f)
    dst = tmp_path / "swin.safetensors"
    assert main(["convert", str(src), str(dst)]) == 0
    assert "Swin backbone" in capsys.readouterr().out
    assert main(["info", "--weights", str(src)]) == 0
    text = capsys.readouterr().out
    assert "detectron2-pkl" in text and "Swin backbone weights" in text
    assert all(k.startswith("backbone.") for k in read_checkpoint(dst).state_dict)


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_malicious_file_is_a_one_line_error(tmp_path: Path, capsys, suffix: str):
    marker = tmp_path / "pwned.txt"
    src = tmp_path / f"evil{suffix}"
    payload = {"model": {"w": CreatesFile(marker)}}
    if suffix == ".pkl":
        src.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, src)
    for argv in (["convert", str(src), str(tmp_path / "out.safetensors")], ["info", "--weights", str(src)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "open" in err and str(src) in err and "Traceback" not in err
        assert not marker.exists()


def test_trust_pickle_only_for_pth(tmp_path: Path, capsys, caplog):
    """--trust-pickle reads a .pth that pickled a harmless object; it is refused for .pkl files."""
    import argparse

    sd = {k: v for k, v in microsoft_swin_state_dict().items()}
    src = tmp_path / "with_args.pth"
    torch.save({"model": sd, "args": argparse.Namespace(lr=0.1)}, src)
    dst = tmp_path / "out.safetensors"
    assert main(["convert", str(src), str(dst)]) == 2
    assert "argparse.Namespace" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--trust-pickle"]) == 0
    assert any("--trust-pickle" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    pkl = tmp_path / "swin.pkl"
    pkl.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in sd.items()}}))
    assert main(["convert", str(pkl), str(tmp_path / "b.safetensors"), "--trust-pickle"]) == 2
    assert "applies only to .pth" in capsys.readouterr().err
