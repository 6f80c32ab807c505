"""`semask benchmark` and the measuring code behind it, on a tiny config (speed itself is never asserted)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from semask.benchmark import count_flops, run_benchmark, voronoi_label_maps
from semask.cli import main

from conftest import TINY_OVERRIDES, tiny_config

TINY = {"model.num_classes": 5, **TINY_OVERRIDES}


def _overrides() -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in TINY.items()]


def test_cli_json_inference(capsys):
    code = main(["-q", "benchmark", "--config", "semask-tiny-ade20k", "--size", "64", "--batch", "2",
                 "--threads", "1", "--warmup", "1", "--iters", "2", "--json", *_overrides()])
    assert code == 0
    r = json.loads(capsys.readouterr().out)
    lat = r["latency_s"]
    assert 0 < lat["min"] <= lat["median"] <= lat["max"]
    assert len(r["latency_s_all"]) == 2 and r["iters"] == 2 and r["warmup"] == 1
    assert math.isclose(r["images_per_s"], 2 / lat["median"])
    assert r["mode"] == "infer" and r["batch"] == 2 and r["size"] == 64 and r["threads"] == 1
    assert r["peak_mem_mib"] > 0
    model = __import__("semask").build_model(tiny_config())
    assert r["params"] == sum(p.numel() for p in model.parameters())
    # the tiny model's FLOPs are at least those of its 4x4 patch embedding and its mask einsum
    assert r["flops"] > 2 * 16 * 3 * 16 * (64 // 4) ** 2
    assert r["matmul_flops_per_s"] > 0
    assert math.isclose(r["achieved_flops_per_s"], r["flops"] / lat["median"])
    assert math.isclose(r["matmul_fraction"], r["achieved_flops_per_s"] / r["matmul_flops_per_s"])


def test_cli_text_output(capsys):
    code = main(["-q", "benchmark", "--size", "64", "--warmup", "0", "--iters", "1", "--no-flops", *_overrides()])
    assert code == 0
    out = capsys.readouterr().out
    assert "latency" in out and "images/s" in out and "peak memory" in out and "FLOPs" not in out


def test_training_step_runs_the_full_loss():
    r = run_benchmark(config=tiny_config(), size=64, batch=2, mode="train", warmup=0, iters=2, flops=False)
    assert r["mode"] == "train" and len(r["latency_s_all"]) == 2
    assert r["loss_last"] is not None and math.isfinite(r["loss_last"]) and r["loss_last"] > 0


def test_bad_arguments_are_one_line_errors(capsys):
    assert main(["benchmark", "--size", "0"]) == 2
    assert "--size must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="mode"):
        run_benchmark(config=tiny_config(), mode="fly")


def test_count_flops_counts_a_matmul():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    lin = torch.nn.Linear(16, 4)
    assert count_flops(lambda: lin(a), lin) == 2 * 8 * 16 * 4
    assert all(p.requires_grad for p in lin.parameters())  # restored after counting


def test_voronoi_label_maps_have_distinct_classes_per_region():
    maps = voronoi_label_maps(3, 40, num_classes=20, segments=5, generator=torch.Generator().manual_seed(1))
    assert maps.shape == (3, 40, 40) and maps.dtype == torch.int64
    assert int(maps.min()) >= 0 and int(maps.max()) < 20
    for m in maps:
        assert 1 <= m.unique().numel() <= 5
