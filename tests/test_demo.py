"""`semask demo`: a run with a budget of a few iterations, interrupted by Ctrl-C (a real SIGINT) and resumed,
writes every output and each one is valid; the time budget planning; one-line errors."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import semask.demo as demo
import semask.engine.trainer as trainer_module
from semask.cli import main
from semask.config import load_config
from semask.engine.checkpoint import CheckpointManager, load_checkpoint

SMALL = {"NUM_TRAIN": 12, "NUM_VAL": 4, "CALIBRATION_ITERS": 2, "EVALS_DURING_TRAINING": 2, "REPLAN_AT": ()}
PLANNED_ITERS = 4


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One demo run with Ctrl-C after its second iteration, then the same command again (resume)."""
    mp = pytest.MonkeyPatch()
    for name, value in SMALL.items():
        mp.setattr(demo, name, value)
    mp.setattr(demo, "measure_iteration_seconds", lambda cfg, root, work: 1.0)
    out = tmp_path_factory.mktemp("demo") / "run"
    args = ["demo", "--output", str(out), "--minutes", str(PLANNED_ITERS / 60), "--seed", "3"]

    real_clip = trainer_module.clip_gradients
    calls = []

    def clip_then_ctrl_c(params, solver):  # runs once per iteration, after its stop check
        calls.append(1)
        if len(calls) == 1:  # Ctrl-C during iteration 1: iteration 2 runs, then the trainer stops
            os.kill(os.getpid(), signal.SIGINT)
        return real_clip(params, solver)

    mp.setattr(trainer_module, "clip_gradients", clip_then_ctrl_c)
    try:
        first = main(args)
        interrupted = {"code": first, "files": sorted(p.name for p in out.iterdir()),
                       "checkpoint_iter": load_checkpoint(CheckpointManager(out).latest())["iteration"]}
        mp.setattr(trainer_module, "clip_gradients", real_clip)
        second = main(args)
    finally:
        mp.undo()
    return out, interrupted, second


def test_ctrl_c_keeps_a_checkpoint_and_writes_no_results(demo_run):
    _, interrupted, _ = demo_run
    assert interrupted["code"] == 130
    assert interrupted["checkpoint_iter"] == 2
    assert "metrics.json" not in interrupted["files"] and "demo.png" not in interrupted["files"]
    assert not any(name.startswith(".calibration") for name in interrupted["files"])


def test_resumed_run_finishes_and_writes_valid_outputs(demo_run):
    out, _, code = demo_run
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("mIoU", "fwIoU", "mACC", "pACC"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 100.0
    assert set(metrics["per_class"]) == {"stripes", "checker", "disc", "box", "triangle", "window"}
    assert metrics["num_images"] == SMALL["NUM_VAL"]
    info = metrics["demo"]
    assert info["status"] == "finished" and info["resumed"] is True and info["seed"] == 3
    assert info["iteration"] == info["max_iter"] == PLANNED_ITERS

    grid = _read_png(out / "demo.png")
    size = demo.scene_size(demo.demo_config(0))
    assert grid.shape[0] >= SMALL["NUM_VAL"] * size * demo.GRID_SCALE and grid.shape[1] >= 3 * size * demo.GRID_SCALE
    assert len(np.unique(grid.reshape(-1, 3), axis=0)) > 10  # images, label colours, legend, text
    curves = _read_png(out / "training_curves.png")
    assert curves.shape[0] > 100 and curves.std() > 0
    predictions = sorted((out / "predictions").glob("*.png"))
    assert len(predictions) == SMALL["NUM_VAL"]
    assert np.asarray(Image.open(predictions[0])).max() < 6
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "eval" in r][-1] == PLANNED_ITERS


def test_final_weights_load_and_reproduce_the_reported_miou(demo_run):
    from semask import load_model
    from semask.data import build_dataset
    from semask.engine.evaluator import evaluate

    out, _, _ = demo_run
    model = load_model(None, out / "model_final.safetensors")
    assert model.config.name == "demo" and model.config.seed == 3
    val = build_dataset(model.config, "val", out / "data")
    again = evaluate(model, val, model.config)
    assert again["mIoU"] == pytest.approx(json.loads((out / "metrics.json").read_text())["mIoU"], abs=1e-6)


def test_resuming_with_another_seed_is_a_one_line_error(demo_run, capsys):
    out, _, _ = demo_run
    assert main(["demo", "--output", str(out), "--seed", "4"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "seed 3" in err and "--output" in err


def test_plan_fills_the_budget():
    cfg = demo.demo_config(0)
    planned = demo.plan(cfg, seconds_per_iter=0.5, minutes=6)
    assert planned.solver.max_iter == 720
    assert planned.test.eval_period == 720 // demo.EVALS_DURING_TRAINING
    assert demo.plan(cfg, seconds_per_iter=100.0, minutes=0.1).solver.max_iter == 1


def test_a_new_run_is_planned_again_from_the_speed_it_trains_at(tmp_path, monkeypatch, caplog):
    """A calibration that was off (1 s per iteration claimed: 3 iterations planned) is corrected at the pause:
    the run is planned again from the wall time of what it did, resumes from its checkpoint and finishes
    that plan, which is what its config.yaml and metrics.json say."""
    for name, value in SMALL.items():
        monkeypatch.setattr(demo, name, value)
    monkeypatch.setattr(demo, "REPLAN_AT", (0.0,))  # pause after the first iteration
    monkeypatch.setattr(demo, "measure_iteration_seconds", lambda cfg, root, work: 1.0)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="semask.demo"):
        result = demo.run_demo(out, minutes=3 / 60, seed=0, overrides={"solver.ims_per_batch": 2})
    planned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("planned again")]
    assert len(planned) == 1 and planned[0].startswith("planned again at iteration 1:")
    assert f"{result.max_iter} iterations in all" in planned[0]
    assert result.status == "finished" and result.iteration == result.max_iter >= 2
    assert load_config(str(out / "config.yaml")).solver.max_iter == result.max_iter
    info = json.loads((out / "metrics.json").read_text())["demo"]
    assert info["max_iter"] == info["iteration"] == result.max_iter and info["resumed"] is False
    resumed = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in resumed if "eval" in r][-1] == result.max_iter


def test_measuring_the_speed_trains_for_real_and_cleans_up(tmp_path, monkeypatch):
    from semask.data.synthetic import make_synthetic_dataset

    monkeypatch.setattr(demo, "CALIBRATION_ITERS", 2)
    root = make_synthetic_dataset(tmp_path / "data", 8, 0, 96, seed=0)
    cfg = demo.demo_config(0, {"solver.ims_per_batch": 2})
    seconds = demo.measure_iteration_seconds(cfg, root, tmp_path / ".calibration")
    assert 0.0 < seconds < 60.0
    assert not (tmp_path / ".calibration").exists()


def test_demo_preset_is_the_whole_architecture():
    from semask import build_model

    cfg = demo.demo_config(0)
    assert cfg.model.num_classes == 6
    names = [n for n, _ in build_model(cfg).named_parameters()]
    for part in ("backbone.patch_embed", "semantic_layer.class_injection.0.mlp_cls_q",  # SeMask Swin
                 "pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets",  # MSDeformAttn
                 "predictor.transformer_cross_attention_layers.0"):  # masked-attention decoder
        assert any(part in n for n in names), part
    assert cfg.model.backbone.num_sem_blocks >= 1 and cfg.model.decoder.dec_layers >= 2


@pytest.mark.parametrize("args, message", [
    (["--minutes", "0"], "--minutes must be > 0"),
    (["--minutes", "-1"], "--minutes must be > 0"),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys, tmp_path):
    assert main(["demo", "--output", str(tmp_path / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "semask demo --output" in out and "--minutes" in out and "--seed" in out
