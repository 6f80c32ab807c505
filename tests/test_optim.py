"""Parameter groups of the recipe (checked against the official key list), poly schedule, clipping."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from conftest import require_reference
from semask import build_model
from semask.config import ConfigError, load_config
from semask.engine.optim import build_optimizer, build_scheduler, clip_gradients, param_groups, poly_factor


def expected_split_from_official_keys(path) -> dict[tuple[bool, bool], int]:
    """Parameter counts by (backbone?, decayed?) from the released state_dict key list, by the original
    rules: backbone lr x0.1; no decay for norm layers, embeddings and relative position tables."""
    counts = {(b, d): 0 for b in (True, False) for d in (True, False)}
    lines = path.read_text().splitlines()[1:]
    for line in lines:
        key, shape, _ = line.split("\t")
        if key.endswith("relative_position_index") or key.startswith("criterion."):
            continue  # buffers
        numel = math.prod(int(s) for s in shape.split(",")) if shape else 1
        module = key.rsplit(".", 1)[0]
        last = module.rsplit(".", 1)[-1]
        is_norm = (last.startswith("norm") or last == "decoder_norm"
                   or re.search(r"pixel_decoder\.input_proj\.\d+\.1$", module) is not None)  # GroupNorm
        is_embedding = last in ("query_feat", "query_embed") or module.endswith("predictor.level_embed")
        no_decay = is_norm or is_embedding or "relative_position_bias_table" in key
        counts[(key.startswith("backbone."), not no_decay)] += numel
    return counts


def test_param_groups_match_the_recipe_for_semask_tiny():
    keys = require_reference("keys_semask_tiny_ade20k.tsv")
    cfg = load_config("semask-tiny-ade20k")
    with torch.device("meta"):
        model = build_model(cfg)
    opt = build_optimizer(model, cfg.solver)
    assert isinstance(opt, torch.optim.AdamW)
    got = {(b, d): 0 for b in (True, False) for d in (True, False)}
    for g in opt.param_groups:
        backbone = g["lr"] == pytest.approx(1e-5)
        assert backbone or g["lr"] == pytest.approx(1e-4)
        assert g["weight_decay"] in (0.0, 0.05)
        got[(backbone, g["weight_decay"] == 0.05)] += sum(p.numel() for p in g["params"])
    expected = expected_split_from_official_keys(keys)
    assert got == expected
    assert sum(got.values()) == 49445317  # param_counts.tsv, semask_tiny_ade20k
    assert len(opt.param_groups) == 4


def test_param_groups_custom_values_and_shared_parameters():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3))
            self.emb = nn.Embedding(4, 3)
            self.head = nn.Linear(3, 3)
            self.tied = self.head  # shared module: counted once
            self.frozen = nn.Linear(3, 3)
            self.frozen.weight.requires_grad_(False)

    groups = param_groups(Tiny(), 1.0, 0.5, backbone_multiplier=0.25, weight_decay_norm=0.1,
                          weight_decay_embed=0.2)
    summary = sorted((g["lr"], g["weight_decay"], sum(p.numel() for p in g["params"])) for g in groups)
    assert summary == [(0.25, 0.1, 6), (0.25, 0.5, 9), (1.0, 0.2, 12), (1.0, 0.5, 12 + 3)]


def test_first_schedule_values_equal_the_poly_formula():
    cfg = load_config("semask-tiny-ade20k", {"solver.max_iter": 50})
    model = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.Linear(2, 2)})
    opt = build_optimizer(model, cfg.solver)
    sched = build_scheduler(opt, cfg.solver)
    for it in range(6):
        for g in opt.param_groups:
            base = 1e-5 if g["lr"] < 5e-5 else 1e-4
            assert g["lr"] == pytest.approx(base * (1 - it / 50) ** 0.9, rel=1e-12)
        opt.step()
        sched.step()


def test_warmup_then_poly():
    assert poly_factor(0, 100, 0.9, warmup_iters=10, warmup_factor=0.1) == pytest.approx(0.1)
    assert poly_factor(5, 100, 0.9, 10, 0.1) == pytest.approx((0.1 * 0.5 + 0.5) * 0.95 ** 0.9)
    assert poly_factor(10, 100, 0.9, 10, 0.1) == pytest.approx(0.9 ** 0.9)
    assert poly_factor(100, 100) == 0.0 and poly_factor(150, 100) == 0.0


def test_full_model_clipping_uses_one_norm():
    cfg = load_config("semask-tiny-ade20k")
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(4))
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    norm = clip_gradients([a, b], cfg.solver)  # clip_value 0.01, full model
    assert float(norm) == pytest.approx(5.0)
    total = torch.cat([a.grad, b.grad]).norm()
    assert float(total) == pytest.approx(0.01, rel=1e-4)
    assert float(a.grad[0] / b.grad[1]) == pytest.approx(0.75)  # direction kept
    per_param = load_config("semask-tiny-ade20k", {"solver.clip_type": "norm"}).solver
    a.grad = torch.tensor([3.0, 0.0, 0.0])
    b.grad = torch.tensor([0.0, 4.0, 0.0, 0.0])
    clip_gradients([a, b], per_param)
    assert float(a.grad.norm()) == pytest.approx(0.01, rel=1e-4) and float(b.grad.norm()) == pytest.approx(0.01, rel=1e-4)


def test_unknown_optimizer_or_schedule_is_a_config_error():
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="solver.optimizer"):
        build_optimizer(model, load_config("semask-tiny-ade20k", {"solver.optimizer": "lamb"}).solver)
    opt = build_optimizer(model, load_config("semask-tiny-ade20k").solver)
    with pytest.raises(ConfigError, match="solver.lr_scheduler"):
        build_scheduler(opt, load_config("semask-tiny-ade20k", {"solver.lr_scheduler": "cosine"}).solver)


def test_adamw_is_fused_on_cpu_and_steps_like_the_reference_loop():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    solver = load_config("semask-tiny-ade20k").solver
    fused = build_optimizer(nets[0], solver)
    assert all(g["fused"] for g in fused.param_groups)
    loop = torch.optim.AdamW(param_groups(nets[1], solver.base_lr, solver.weight_decay), lr=solver.base_lr)
    x = torch.randn(4, 6)
    for _ in range(3):
        for net, opt in zip(nets, (fused, loop)):
            net(x).square().sum().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b, a0 in zip(nets[0].parameters(), nets[1].parameters(), start):
        assert not torch.equal(a, a0)  # it stepped
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_adamw_falls_back_where_there_is_no_fused_kernel(monkeypatch):
    real = torch.optim.AdamW

    def no_fused(params, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = build_optimizer(nn.Linear(3, 3), load_config("semask-tiny-ade20k").solver)
    assert isinstance(opt, real) and not opt.param_groups[0]["fused"]
