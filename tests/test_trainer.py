"""The trainer: a tiny model overfits two synthetic images; non-finite losses stop (naming iteration and
term) or are skipped; output and batch checks; gradient accumulation; initial weights.
(SIGTERM + --resume, run through the command line, is in test_cli_train.py.)"""

from __future__ import annotations

import time

import pytest
import torch

from conftest import tiny_config
from semask.engine.checkpoint import CheckpointManager, load_checkpoint
from semask.engine.metrics_log import read_metrics
from semask.engine.trainer import Trainer, TrainingError

SMALL = {"data.min_size_train": [64], "data.max_size_train": 256, "data.crop_size": [64, 64],
         "data.size_divisibility": 64, "data.num_workers": 0, "data.min_size_test": 64, "test.eval_period": -1}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from semask.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 4, 0, 64, seed=0)



def test_tiny_model_overfits_two_images(tmp_path, one_thread):
    from semask.data import build_dataset
    from semask.data.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "two", 2, 0, 64, seed=0)
    cfg = tiny_config(6, **{**SMALL, "data.color_aug_ssd": False, "data.hflip": False, "solver.ims_per_batch": 2,
                            "solver.max_iter": 80, "solver.base_lr": 2e-3, "solver.backbone_multiplier": 1.0,
                            "solver.log_period": 10, "solver.checkpoint_period": 1000, "test.eval_period": 0})
    train_set = build_dataset(cfg, "train", root)
    t0 = time.perf_counter()
    result = Trainer(cfg, root, tmp_path / "out", val_dataset=train_set, progress=False).train()
    elapsed = time.perf_counter() - t0
    assert result.status == "finished" and result.iteration == 80
    # evaluated on the training images themselves
    assert result.eval["pACC"] >= 95.0, result.eval
    assert result.eval["mIoU"] >= 80.0, result.eval
    losses = [r["total_loss"] for r in read_metrics(tmp_path / "out" / "metrics.jsonl") if "total_loss" in r]
    assert losses[-1] < 0.4 * losses[0]
    assert elapsed < 120  # a minute on an idle 2-core CPU; generous for a shared one
    for name in ("config.yaml", "metrics.jsonl", "training_curves.png", "model_final.safetensors",
                 "model_0000080.pth", "last_checkpoint"):
        assert (tmp_path / "out" / name).exists(), name


# ----------------------------------------------------------------------------- non-finite losses and output


class NaNAfter(torch.nn.Module):
    """Wraps a model; from call `start` on, the class logits are NaN."""

    def __init__(self, model: torch.nn.Module, start: int) -> None:
        super().__init__()
        self.model, self.start, self.calls = model, start, 0
        self.config = model.config

    def forward(self, images):
        self.calls += 1
        out = self.model(images)
        if self.calls >= self.start:
            out["pred_logits"] = out["pred_logits"] * float("nan")
        return out


def _nan_setup(scenes, **extra):
    from semask import build_model

    cfg = tiny_config(6, **{**SMALL, "solver.ims_per_batch": 2, "solver.max_iter": 5, "solver.checkpoint_period": 2,
                            "solver.log_period": 1, **extra})
    return cfg, NaNAfter(build_model(cfg), start=4)


def test_non_finite_loss_stops_naming_iteration_and_term(scenes, tmp_path, one_thread):
    cfg, model = _nan_setup(scenes)
    with pytest.raises(TrainingError, match=r"iteration 4: loss_ce=nan.*model_0000002\.pth"):
        Trainer(cfg, scenes, tmp_path, model=model, progress=False).train()
    ckpt = CheckpointManager(tmp_path).latest()
    assert ckpt is not None and ckpt.name == "model_0000002.pth"
    state = load_checkpoint(ckpt)
    assert state["iteration"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_non_finite_steps_can_be_skipped(scenes, tmp_path, one_thread):
    cfg, model = _nan_setup(scenes, **{"solver.skip_nonfinite": True, "solver.max_iter": 4})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = Trainer(cfg, scenes, tmp_path, model=model, progress=False).train()
    assert result.status == "finished" and result.skipped_steps == 1
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the 3 good steps did train
    assert all(torch.isfinite(v).all() for v in after.values())
    assert read_metrics(tmp_path / "metrics.jsonl")[-1]["skipped_steps"] == 1


def test_unwritable_output_fails_before_any_work(scenes, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = tiny_config(6, **SMALL)
    with pytest.raises(TrainingError, match="cannot write to the output folder"):
        Trainer(cfg, scenes, blocker / "out", progress=False).train()


def test_batch_must_split_over_processes_and_accumulation(scenes, tmp_path):
    from semask.config import ConfigError

    cfg = tiny_config(6, **{**SMALL, "solver.ims_per_batch": 3, "solver.grad_accum_steps": 2})
    with pytest.raises(ConfigError, match="solver.ims_per_batch=3"):
        Trainer(cfg, scenes, tmp_path, progress=False).train()


def test_gradient_accumulation_consumes_micro_batches(scenes, tmp_path, one_thread):
    cfg = tiny_config(6, **{**SMALL, "solver.ims_per_batch": 2, "solver.grad_accum_steps": 2, "solver.max_iter": 2,
                            "solver.log_period": 1})
    result = Trainer(cfg, scenes, tmp_path, progress=False).train()
    assert result.iteration == 2
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "total_loss" in r]
    assert [r["iteration"] for r in records] == [1, 2]
    assert all(r["total_loss"] > 0 for r in records)


def test_initial_weights_from_the_config(scenes, tmp_path, one_thread):
    from safetensors.torch import load_file

    from semask import build_model, save_weights

    torch.manual_seed(11)
    source = build_model(tiny_config(6))
    save_weights(source, tmp_path / "init.safetensors", source.config)
    # lr 0: one step leaves the loaded weights as they are
    cfg = tiny_config(6, **{**SMALL, "solver.ims_per_batch": 2, "solver.max_iter": 1, "solver.base_lr": 0.0,
                            "model.weights": str(tmp_path / "init.safetensors")})
    Trainer(cfg, scenes, tmp_path / "out", progress=False).train()
    final = load_file(str(tmp_path / "out" / "model_final.safetensors"))
    for k, v in source.state_dict().items():
        assert torch.equal(final[k], v), k
