"""Distributed training: two gloo processes with a global batch of 4 end with the same parameters as one
process with a batch of 4; the single-process helpers; the criterion's normalisers across processes."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from conftest import tiny_config
from semask.engine import distributed as du


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg():
    return tiny_config(6, **{
        "data.min_size_train": [48, 64, 80], "data.max_size_train": 256, "data.crop_size": [64, 64],
        "data.size_divisibility": 64, "data.num_workers": 0, "solver.ims_per_batch": 4, "solver.max_iter": 3,
        "solver.log_period": 1, "test.eval_period": -1, "solver.checkpoint_period": 1000,
        "solver.base_lr": 1e-3, "loss.num_points": 128, "seed": 7})


def _model(cfg):
    """The tiny model without dropout: dropout masks cannot agree between 1 and 2 processes."""
    from semask import build_model

    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    from semask.engine.trainer import Trainer

    try:
        cfg = _cfg()
        Trainer(cfg, data, out, device="cpu", model=_model(cfg), progress=False).train()
        assert du.get_world_size() == world
    finally:
        du.cleanup()


def _final(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model_final.safetensors"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_gloo_processes_equal_one_process(tmp_path):
    from semask.data.synthetic import make_synthetic_dataset
    from semask.engine.metrics_log import read_metrics
    from semask.engine.trainer import Trainer

    data = make_synthetic_dataset(tmp_path / "data", 6, 0, 64, seed=1)
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(data), str(tmp_path / "ddp"))) for r in range(2)]
    for p in procs:
        p.start()
    # meanwhile, the single process run here (one thread, like the workers: 3 processes share the cores)
    cfg = _cfg()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = Trainer(cfg, data, tmp_path / "single", device="cpu", model=_model(cfg), progress=False).train()
    finally:
        torch.set_num_threads(threads)
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0, f"worker exit code {p.exitcode}"
    assert single.iteration == 3
    a, b = _final(tmp_path / "single"), _final(tmp_path / "ddp")
    assert a.keys() == b.keys()
    start = _model(cfg).state_dict()
    moved = 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5, msg=k)
        moved += int(not torch.equal(a[k], start[k]))
    assert moved > 100  # the parameters did change over the 3 steps
    la = [r["total_loss"] for r in read_metrics(tmp_path / "single" / "metrics.jsonl") if "total_loss" in r]
    lb = [r["total_loss"] for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl") if "total_loss" in r]
    assert len(la) == len(lb) == 3
    # per-iteration losses agree too (the 2-process value is the mean of the ranks' weighted losses)
    assert la == pytest.approx(lb, rel=1e-4)


def test_helpers_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert du.init_distributed("cpu") is False
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.is_main_process()
    t = torch.tensor([2.0])
    assert du.all_reduce_sum(t) is t and float(t) == 2.0
    assert du.broadcast_object({"a": 1}) == {"a": 1}
    du.barrier()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert du.launched_distributed() is False
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert du.launched_distributed() is True
    assert du.default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
