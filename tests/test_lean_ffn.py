"""Lean feed-forward blocks: same forward bitwise, same gradients, less kept for backward."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semask.modeling import lean_ffn
from semask.modeling.layers import Mlp
from semask.modeling.lean_ffn import gelu_mlp, norm_relu_ffn, relu_ffn, use_lean_ffn
from semask.modeling.pixel_decoder import MSDeformAttnEncoderLayer


def saved_bytes(fn, *modules: nn.Module):
    """`fn()` and the bytes of the distinct storages autograd keeps for its backward, leaving out the
    parameters of `modules` (they are kept anyway)."""
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def plain_gelu(x, fc1, fc2):
    return fc2(F.gelu(fc1(x)))


def plain_relu(x, l1, l2):
    return l2(F.relu(l1(x)))


def assert_grads_close(got: torch.Tensor, want: torch.Tensor) -> None:
    scale = want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * max(scale, 1.0))


def check_against_plain(lean_fn, plain_fn, shape, cin, hidden, bias=True, seed=0):
    torch.manual_seed(seed)
    fc1, fc2 = nn.Linear(cin, hidden, bias=bias), nn.Linear(hidden, cin, bias=bias)
    x = torch.randn(*shape, cin, requires_grad=True)
    gy = torch.randn(*shape, cin)
    mods = (fc1, fc2)
    want = plain_fn(x, fc1, fc2)
    want_grads = torch.autograd.grad(want, (x,) + tuple(p for m in mods for p in m.parameters()), gy)
    got = lean_fn(x, fc1, fc2)
    assert torch.equal(got, want)  # forward bitwise
    got_grads = torch.autograd.grad(got, (x,) + tuple(p for m in mods for p in m.parameters()), gy)
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        assert g.shape == w.shape
        assert_grads_close(g, w)


@pytest.mark.parametrize("shape", [(37,), (3, 29), (2, 5, 7)])
@pytest.mark.parametrize("save_hidden", [True, False])
def test_gelu_mlp_matches_plain(shape, save_hidden):
    check_against_plain(lambda x, a, b: gelu_mlp(x, a, b, save_hidden), plain_gelu, shape, 13, 51)


@pytest.mark.parametrize("shape", [(37,), (3, 29), (2, 5, 7)])
def test_relu_ffn_matches_plain(shape):
    check_against_plain(relu_ffn, plain_relu, shape, 11, 45)


@pytest.mark.parametrize("save_hidden", [True, False])
def test_gelu_mlp_with_norm_matches_plain(save_hidden):
    torch.manual_seed(10)
    norm, fc1, fc2 = nn.LayerNorm(9), nn.Linear(9, 31), nn.Linear(31, 9)
    with torch.no_grad():  # not the identity init, so the norm's parameter gradients are tested for real
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    a = torch.randn(3, 17, 9, requires_grad=True)
    gy = torch.randn(3, 17, 9)
    params = [a] + [p for m in (norm, fc1, fc2) for p in m.parameters()]
    want = plain_gelu(norm(a), fc1, fc2)
    want_grads = torch.autograd.grad(want, params, gy)
    got = gelu_mlp(a, fc1, fc2, save_hidden, norm=norm)
    assert torch.equal(got, want)
    for g, w in zip(torch.autograd.grad(got, params, gy), want_grads):
        assert_grads_close(g, w)


@pytest.mark.parametrize("use", ["both", "ffn", "norm"])
def test_norm_relu_ffn_matches_plain(use):
    torch.manual_seed(11)
    norm, l1, l2 = nn.LayerNorm(12), nn.Linear(12, 40), nn.Linear(40, 12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    a = torch.randn(2, 23, 12, requires_grad=True)
    gx, gy = torch.randn(2, 23, 12), torch.randn(2, 23, 12)
    params = [a] + [p for m in (norm, l1, l2) for p in m.parameters()]

    def loss(x, y):  # post-norm use: the norm's output feeds the residual as well as the FFN
        terms = ([(x * gx).sum()] if use != "ffn" else []) + ([(y * gy).sum()] if use != "norm" else [])
        return sum(terms)

    x_want = norm(a)
    y_want = plain_relu(x_want, l1, l2)
    want_grads = torch.autograd.grad(loss(x_want, y_want), params, allow_unused=True)
    x_got, y_got = norm_relu_ffn(a, norm, l1, l2)
    assert torch.equal(x_got, x_want) and torch.equal(y_got, y_want)
    got_grads = torch.autograd.grad(loss(x_got, y_got), params, allow_unused=True)
    for g, w in zip(got_grads, want_grads):
        assert (g is None) == (w is None)
        if w is not None:
            assert_grads_close(g, w)
    assert (got_grads[-1] is None) == (use == "norm")


def test_without_bias_and_frozen_parts():
    check_against_plain(gelu_mlp, plain_gelu, (4, 9), 6, 10, bias=False)
    check_against_plain(relu_ffn, plain_relu, (4, 9), 6, 10, bias=False)
    torch.manual_seed(1)
    fc1, fc2 = nn.Linear(6, 10), nn.Linear(10, 6)
    fc1.requires_grad_(False)
    x = torch.randn(5, 6)  # input without grad, only fc2 trains
    out = gelu_mlp(x, fc1, fc2)
    out.square().sum().backward()
    ref = copy.deepcopy(fc2)
    ref.weight.grad = None
    plain_gelu(x, fc1, ref).square().sum().backward()
    assert fc1.weight.grad is None
    assert_grads_close(fc2.weight.grad, ref.weight.grad)
    assert_grads_close(fc2.bias.grad, ref.bias.grad)


def test_non_contiguous_input():
    torch.manual_seed(2)
    fc1, fc2 = nn.Linear(8, 20), nn.Linear(20, 8)
    base = torch.randn(6, 4, 8, requires_grad=True)
    x = base.transpose(0, 1)
    gy = torch.randn(4, 6, 8)
    for lean, plain in ((gelu_mlp, plain_gelu), (relu_ffn, plain_relu)):
        got = lean(x, fc1, fc2)
        want = plain(x, fc1, fc2)
        assert torch.equal(got, want)
        (g_got,) = torch.autograd.grad(got, base, gy)
        (g_want,) = torch.autograd.grad(want, base, gy)
        assert_grads_close(g_got, g_want)


def test_keeps_less_for_backward():
    torch.manual_seed(3)
    fc1, fc2 = nn.Linear(16, 64), nn.Linear(64, 16)
    x = torch.randn(100, 16, requires_grad=True)
    _, plain = saved_bytes(lambda: plain_gelu(x, fc1, fc2), fc1, fc2)
    _, keep_h = saved_bytes(lambda: gelu_mlp(x, fc1, fc2, save_hidden=True), fc1, fc2)
    _, keep_x = saved_bytes(lambda: gelu_mlp(x, fc1, fc2, save_hidden=False), fc1, fc2)
    n = 100 * 4
    assert plain == n * (16 + 64 + 64)  # x, h, gelu(h)
    assert keep_h == n * (16 + 64)
    assert keep_x == n * 16
    _, plain = saved_bytes(lambda: plain_relu(x, fc1, fc2), fc1, fc2)
    _, lean = saved_bytes(lambda: relu_ffn(x, fc1, fc2), fc1, fc2)
    assert plain == n * (16 + 64)  # x, relu(h) (kept by ReLU and by fc2)
    assert lean == n * 16


def test_mlp_uses_lean_path_only_when_exact(monkeypatch):
    calls = []
    real = lean_ffn.gelu_mlp

    def spy(*args):
        calls.append(args[3])  # save_hidden
        return real(*args)

    monkeypatch.setattr("semask.modeling.layers.gelu_mlp", spy)
    torch.manual_seed(4)
    mlp = Mlp(8, 32).train()
    x = torch.randn(3, 5, 8, requires_grad=True)
    y = mlp(x)
    assert calls == [True]
    mlp.save_hidden = False
    assert torch.equal(mlp(x), y)
    assert calls == [True, False]
    with torch.no_grad():
        assert torch.equal(mlp(x), y)
    mlp.eval()
    assert torch.equal(mlp(x), y)
    assert len(calls) == 2  # no-grad and eval keep the plain modules
    norm = nn.LayerNorm(8)
    assert torch.equal(mlp(x, norm=norm), mlp(norm(x)))
    want = mlp(norm(x))
    assert torch.equal(mlp.train()(x, norm=norm), want)
    assert len(calls) == 3
    dropped = Mlp(8, 32, drop=0.5).train()
    assert not use_lean_ffn(dropped, dropped.drop.p, x)
    dropped(x)
    assert len(calls) == 3  # dropout > 0 falls back to the plain modules
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_lean_ffn(mlp.train(), 0.0, x)


def test_mlp_dropout_fallback_is_the_plain_module():
    torch.manual_seed(5)
    mlp = Mlp(8, 32, drop=0.3).train()
    x = torch.randn(4, 8)
    torch.manual_seed(6)
    got = mlp(x)
    torch.manual_seed(6)
    want = mlp.drop(mlp.fc2(mlp.drop(mlp.act(mlp.fc1(x)))))
    assert torch.equal(got, want)
    assert (got == 0).any()  # dropout really ran


def test_encoder_layer_lean_ffn(monkeypatch):
    torch.manual_seed(7)
    layer = MSDeformAttnEncoderLayer(d_model=32, d_ffn=64, n_levels=2, n_heads=4, n_points=2).train()
    shapes = [(4, 5), (2, 3)]
    n = sum(h * w for h, w in shapes)
    src = torch.randn(2, n, 32, requires_grad=True)
    pos = torch.randn(2, n, 32)
    ref = torch.rand(2, n, 2, 2)
    norm = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)
    gy = torch.randn(2, n, 32)
    params = [src] + list(layer.parameters())
    out, lean_bytes = saved_bytes(lambda: layer(src, pos, ref, shapes, norm), layer)
    grads = torch.autograd.grad(out, params, gy)
    monkeypatch.setattr("semask.modeling.pixel_decoder.use_lean_ffn", lambda *a: False)
    want, plain_bytes = saved_bytes(lambda: layer(src, pos, ref, shapes, norm), layer)
    want_grads = torch.autograd.grad(want, params, gy)
    assert torch.equal(out, want)
    for g, w in zip(grads, want_grads):
        assert_grads_close(g, w)
    assert plain_bytes - lean_bytes == 2 * n * (64 + 32) * 4  # the ReLU output and norm1's output


def test_model_keeps_less_for_backward(monkeypatch):
    from conftest import tiny_config
    from semask import build_model

    torch.manual_seed(8)
    model = build_model(tiny_config()).train()
    images = torch.rand(1, 3, 64, 64) * 255

    def run():
        out = model(images)
        return out["pred_masks"].sum() + out["pred_logits"].sum()

    loss_lean, lean = saved_bytes(run, model)
    monkeypatch.setattr("semask.modeling.layers.use_lean_ffn", lambda *a: False)
    monkeypatch.setattr("semask.modeling.pixel_decoder.use_lean_ffn", lambda *a: False)
    loss_plain, plain = saved_bytes(run, model)
    assert torch.equal(loss_lean, loss_plain)
    assert plain - lean > 0.05 * plain


def test_lean_ffn_switch_from_the_config_and_set_lean_ffn():
    from conftest import tiny_config
    from semask import build_model
    from semask.config import load_config

    cfg = tiny_config()
    on = build_model(cfg).train()
    off = build_model(cfg.replace({"model.lean_ffn": False})).train()
    off.load_state_dict(on.state_dict())
    blocks = [m for m in off.modules() if hasattr(m, "lean_ffn")]
    assert blocks and not any(m.lean_ffn for m in blocks)
    assert all(m.lean_ffn for m in on.modules() if hasattr(m, "lean_ffn"))
    images = torch.rand(1, 3, 64, 64) * 255

    def run(model):
        return lambda: (lambda out: out["pred_masks"].sum() + out["pred_logits"].sum())(model(images))

    loss_on, bytes_on = saved_bytes(run(on), on)
    loss_off, bytes_off = saved_bytes(run(off), off)
    assert torch.equal(loss_on, loss_off)  # the same forward, plain autograd keeps more
    assert bytes_off > bytes_on
    assert lean_ffn.set_lean_ffn(off, True) == len(blocks)
    assert saved_bytes(run(off), off)[1] == bytes_on
    assert load_config("demo").model.lean_ffn is False  # the small demo model trains faster without
