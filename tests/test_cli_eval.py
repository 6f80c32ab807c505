"""`semask eval`: table, JSON, saved predictions, overrides, splits, TTA, errors, and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import semask
from semask.cli import main
from semask.config import load_config
from semask.data import build_dataset
from semask.engine.evaluator import evaluate


pytestmark = pytest.mark.usefixtures("one_thread")


NAMES = ["sky", "road", "tree", "car", "person"]


def write_pair(root: Path, split: str, stem: str, image: np.ndarray, stored: np.ndarray) -> None:
    for sub in ("images", "annotations"):
        (root / sub / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / split / f"{stem}.jpg", quality=95)
    Image.fromarray(stored.astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from conftest import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(num_classes=5)
    model = semask.build_model(cfg).eval()
    base = tmp_path_factory.mktemp("cli_eval")
    weights = semask.save_weights(model, base / "tiny.safetensors", cfg)
    root = base / "data"
    rng = np.random.default_rng(0)
    for split, n in (("validation", 3), ("training", 2)):
        for i in range(n):
            h, w = (64, 80) if i % 2 else (80, 72)
            stored = rng.integers(1, 6, (h, w))
            stored[:5] = 0  # "other" -> ignored
            write_pair(root, split, f"{split[:3]}{i}", rng.integers(0, 256, (h, w, 3), dtype=np.uint8), stored)
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    return model, weights, root, base


def test_table_json_predictions_and_overrides(setup, tmp_path, capsys):
    model, weights, root, _ = setup
    out_json, preds = tmp_path / "m" / "metrics.json", tmp_path / "preds"
    rc = main(["eval", "--weights", str(weights), "--data", str(root), "--json", str(out_json),
               "--save-predictions", str(preds), "data.min_size_test=64", "data.max_size_test=100"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    cfg = load_config(model.config, {"data.min_size_test": 64, "data.max_size_test": 100})
    expected = evaluate(model, build_dataset(cfg, "val", root), cfg)
    record = json.loads(out_json.read_text())
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert record[key] == pytest.approx(expected[key], rel=1e-12)
    assert record["per_class"] == expected["per_class"]
    assert record["num_images"] == 3 and record["split"] == "val" and record["tta"] is False
    lines = cap.out.splitlines()
    assert lines[0].split() == ["class", "IoU", "ACC"]
    for name in NAMES:
        row = next(line for line in lines if line.split()[0] == name).split()
        assert float(row[1]) == pytest.approx(expected["per_class"][name]["IoU"], abs=0.006)
    assert f"mIoU {expected['mIoU']:.2f}" in lines[-1]
    assert sorted(p.name for p in preds.iterdir()) == ["val0.png", "val1.png", "val2.png"]
    assert Image.open(preds / "val1.png").size == (80, 64)


def test_split_and_tta(setup, tmp_path, capsys):
    _, weights, root, _ = setup
    out = tmp_path / "train.json"
    assert main(["eval", "-w", str(weights), "--data", str(root), "--split", "train", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["num_images"] == 2
    plain, tta = tmp_path / "plain.json", tmp_path / "tta.json"
    assert main(["eval", "-w", str(weights), "-d", str(root), "--json", str(plain), "data.min_size_test=64"]) == 0
    # one TTA scale equal to the test size and no flip: the single-scale numbers
    assert main(["eval", "-w", str(weights), "-d", str(root), "--tta", "--json", str(tta),
                 "test.aug_min_sizes=[64]", "test.aug_flip=false", "data.min_size_test=32"]) == 0
    a, b = json.loads(plain.read_text()), json.loads(tta.read_text())
    assert b["tta"] is True and a["per_class"] == b["per_class"]
    capsys.readouterr()


def test_errors_are_one_line(setup, tmp_path, capsys):
    _, weights, root, _ = setup
    assert main(["eval", "-w", str(weights), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "-w", str(weights), "--data", str(root), "data.on_error=sometimes"]) == 2
    err = capsys.readouterr().err
    assert "data.on_error" in err and "Traceback" not in err
    assert main(["eval", "-w", str(weights), "--data", str(root), "--workers", "-1"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["eval", "-w", str(weights), "--data", str(root), "--split", "test"]) == 2
    assert "test" in capsys.readouterr().err


def test_torchrun_two_processes_gather_the_same_numbers(setup, tmp_path):
    model, weights, root, _ = setup
    out, preds = tmp_path / "ddp.json", tmp_path / "ddp_preds"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "semask",
           "eval", "-w", str(weights), "--data", str(root), "--json", str(out), "--save-predictions", str(preds)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["world_size"] == 2 and record["num_images"] == 3
    single = evaluate(model, build_dataset(model.config, "val", root), model.config)
    for key in ("mIoU", "fwIoU", "mACC", "pACC", "num_pixels"):
        assert record[key] == pytest.approx(single[key], rel=1e-12)
    assert record["per_class"] == single["per_class"]
    assert sorted(p.name for p in preds.iterdir()) == ["val0.png", "val1.png", "val2.png"]
    assert proc.stdout.count("mIoU") == 1  # only rank 0 prints the table


def test_unwritable_outputs_are_refused_before_evaluating(setup, tmp_path, capsys, monkeypatch):
    import semask.engine.evaluator as evaluator

    _, weights, root, _ = setup
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setattr(evaluator, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking outputs"))
    for flag, target in (("--json", blocker / "m.json"), ("--save-predictions", blocker / "preds")):
        assert main(["eval", "-w", str(weights), "--data", str(root), flag, str(target)]) == 2
        err = capsys.readouterr().err
        assert flag in err and str(blocker) in err and len(err.strip().splitlines()) == 1
