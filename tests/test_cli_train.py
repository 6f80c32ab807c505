"""`semask train`: help, one-line errors, outputs of a short run, and SIGTERM + --resume giving exactly
the weights of an uninterrupted run (CPU, deterministic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from semask.cli import main
from semask.engine.checkpoint import CheckpointManager, load_checkpoint
from semask.engine.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
SMALL = {"data.min_size_train": [64], "data.max_size_train": 256, "data.crop_size": [64, 64],
         "data.size_divisibility": 64, "data.num_workers": 0, "data.min_size_test": 64, "test.eval_period": -1,
         "solver.ims_per_batch": 2, "loss.num_points": 128}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from semask.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 4, 2, 64, seed=0)



def _config(tmp_path: Path, **overrides) -> Path:
    cfg = tiny_config(6, **{**SMALL, **overrides})
    path = tmp_path / "tiny.yaml"
    path.write_text(cfg.to_yaml())
    return path


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "semask train --config" in out and "--resume" in out and "torchrun" in out


@pytest.mark.parametrize("args, message", [
    (["--config", "semask-tiny-ade20k", "solver.nope=1"], "unknown config key 'solver.nope'"),
    (["--config", "semask-tiny-ade20k", "--max-iter", "0"], "--max-iter must be >= 1"),
    (["--config", "semask-tiny-ade20k", "stray"], "unexpected argument(s) stray"),
    (["--config", "no-such-preset"], "neither a preset"),
])
def test_bad_arguments_give_one_line_errors(tmp_path, capsys, args, message):
    code = main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_dataset_and_unwritable_output(tmp_path, capsys, scenes):
    config = _config(tmp_path)
    code = main(["train", "--config", str(config), "--data", str(tmp_path / "nowhere"), "--output",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "nowhere" in err and "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["train", "--config", str(config), "--data", str(scenes), "--output", str(blocker / "out")])
    err = capsys.readouterr().err
    assert code == 1 and "cannot write to the output folder" in err and len(err.strip().splitlines()) == 1


def test_short_run_writes_every_output(tmp_path, scenes, one_thread):
    config = _config(tmp_path, **{"test.eval_period": 2})
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(scenes), "--output", str(out), "--max-iter", "2",
                 "solver.log_period=1", "solver.base_lr=0.0002"]) == 0
    from semask.config import load_config

    saved = load_config(out / "config.yaml")
    assert saved.solver.max_iter == 2 and saved.solver.base_lr == pytest.approx(2e-4)  # resolved config
    records = read_metrics(out / "metrics.jsonl")
    train_lines = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in train_lines] == [1, 2]
    for key in ("loss_ce", "loss_cate", "loss_mask", "loss_dice", "loss_ce_0", "loss_dice_2", "lr", "time"):
        assert key in train_lines[0], key
    evals = [r for r in records if "eval" in r]
    assert [r["iteration"] for r in evals] == [2] and "mIoU" in evals[0]["eval"]
    from PIL import Image

    assert Image.open(out / "training_curves.png").size[0] > 100
    # the final weights carry their config: predict needs no --config
    pred = tmp_path / "pred"
    image = next((scenes / "images" / "validation").glob("*.png"))
    assert main(["predict", "--weights", str(out / "model_final.safetensors"), str(image), "--output", str(pred)]) == 0
    assert (pred / f"{image.stem}.png").exists()


# ----------------------------------------------------------------------------- SIGTERM and --resume


def _cmd(config: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "semask", "train", "--config", str(config), "--data", str(data), "--output",
            str(out), *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_sigterm_then_resume_equals_an_uninterrupted_run(scenes, tmp_path, one_thread):
    """Drop-path and the semantic layers' dropout are on and the augmentation is random: the RNG states and
    the data position must be restored for the weights to agree bit for bit."""
    config = _config(tmp_path, **{"solver.max_iter": 6, "solver.log_period": 1, "solver.checkpoint_period": 1000,
                                  "data.min_size_train": [48, 64, 96], "model.backbone.drop_path_rate": 0.1,
                                  "solver.base_lr": 1e-3, "seed": 3})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    part = subprocess.Popen(_cmd(config, scenes, tmp_path / "part"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # meanwhile the uninterrupted run, in this process (one thread, like the subprocesses)
    assert main(["train", "--config", str(config), "--data", str(scenes), "--output", str(tmp_path / "full")]) == 0

    metrics = tmp_path / "part" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and part.poll() is None:
        done = [r.get("iteration", 0) for r in read_metrics(metrics)]
        if done and max(done) >= 2:
            break
        time.sleep(0.02)
    assert part.poll() is None, part.communicate()[0]
    part.send_signal(signal.SIGTERM)
    log = part.communicate(timeout=240)[0]
    assert part.returncode == 128 + signal.SIGTERM, log
    ckpt = CheckpointManager(tmp_path / "part").latest()
    assert ckpt is not None, log
    stopped_at = load_checkpoint(ckpt)["iteration"]
    assert 2 <= stopped_at < 6, log
    assert "continue with --resume" in log
    assert not (tmp_path / "part" / "model_final.safetensors").exists()

    resumed = subprocess.run(_cmd(config, scenes, tmp_path / "part", "--resume"), env=env, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {ckpt} at iteration {stopped_at}" in resumed.stderr

    a = _weights(tmp_path / "full" / "model_final.safetensors")
    b = _weights(tmp_path / "part" / "model_final.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    la = {r["iteration"]: r["total_loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "total_loss" in r}
    lb = {r["iteration"]: r["total_loss"] for r in read_metrics(metrics) if "total_loss" in r}
    assert la == lb and sorted(la) == [1, 2, 3, 4, 5, 6]


def test_detectron2_config_and_overrides(tmp_path, scenes, one_thread):
    from conftest import require_reference
    from semask.config import load_config

    config = require_reference("golden_mini_ade") / "config.yaml"
    out = tmp_path / "d2"
    code = main(["train", "--config", str(config), "--data", str(scenes), "--output", str(out), "--max-iter", "1",
                 "MODEL.WEIGHTS=", "MODEL.SEM_SEG_HEAD.NUM_CLASSES=6", "INPUT.MIN_SIZE_TRAIN=(64,)",
                 "INPUT.CROP.SIZE=(64,64)", "INPUT.SIZE_DIVISIBILITY=64", "SOLVER.IMS_PER_BATCH=2",
                 "SOLVER.BASE_LR=0.0003", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS=256", "DATALOADER.NUM_WORKERS=0",
                 "TEST.EVAL_PERIOD=-1"])
    assert code == 0
    saved = load_config(out / "config.yaml")  # the resolved config, in our format
    assert saved.model.num_classes == 6 and saved.model.backbone.embed_dim == 16
    assert saved.solver.base_lr == pytest.approx(3e-4) and saved.loss.num_points == 256
    assert list(saved.data.crop_size) == [64, 64]
    assert (out / "model_final.safetensors").exists()
