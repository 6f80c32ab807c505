"""semask.compiled: the layers it compiles trace without graph breaks (fullgraph, eager backend: dynamo
only, no code generation) and give the golden outputs, in inference and in a training step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semask.compiled import REGIONS, compile_model


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("regional", [True, False])
def test_compiled_model_gives_the_golden_scores(golden_ade, regional):
    e = golden_ade.expected
    model = compile_model(golden_ade.model(), regional=regional, fullgraph=True, backend="eager")
    with torch.inference_mode():
        scores = model.predict([e["image"]])[0]
    assert (scores - e["sem_seg"]).abs().max().item() <= 1e-4


def test_regional_compile_wraps_every_repeated_layer(golden_city):
    model = compile_model(golden_city.model(), backend="eager")
    layers = [m for m in model.modules() if isinstance(m, REGIONS)]
    assert len(layers) > 10
    assert all(m._compiled_call_impl is not None for m in layers)
    assert model.backbone._compiled_call_impl is None  # the glue stays eager
    assert torch._dynamo.config.recompile_limit >= 64


def test_compiled_training_step_matches_eager_gradients(golden_ade):
    e = golden_ade.expected
    eager = golden_ade.model().train()
    compiled = compile_model(golden_ade.model().train(), fullgraph=True, backend="eager")
    grads = []
    for model in (eager, compiled):
        torch.manual_seed(0)  # the same drop-path draws
        out = model(e["image"][None], with_semantic=True)
        loss = out["pred_masks"].square().mean() + out["pred_logits"].square().mean() + \
            out["sem_seg_logits"].square().mean()
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    worst = max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0])
    assert worst <= 1e-4


def test_a_model_without_those_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="none of the layers"):
        compile_model(nn.Sequential(nn.Linear(2, 2)), backend="eager")
