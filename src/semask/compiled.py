"""torch.compile for SeMask models, region by region.

Compiling the whole backbone traces every one of its blocks into one graph: the compile time grows with
the depth (SeMask-L has 24 Swin blocks) and a training graph takes minutes. The blocks repeat, so
`compile_model` compiles each repeated layer on its own (regional compilation): layers of one shape share
one compiled graph, and the compile time grows with the number of distinct shapes instead (for a Swin
block: stage x shifted or not x input size). The glue between layers (padding, the decoder's attention
masks, the heads) stays eager. State-dict keys are unchanged (`nn.Module.compile` compiles in place).

    model = compile_model(build_model("semask-large-ade20k").cuda())
"""

from __future__ import annotations

import torch
from torch import nn

from .modeling.pixel_decoder import MSDeformAttnEncoderLayer
from .modeling.semask_swin import SemanticLayer
from .modeling.swin import PatchMerging, SwinTransformerBlock
from .modeling.transformer_decoder import CrossAttentionLayer, FFNLayer, SelfAttentionLayer

REGIONS = (SwinTransformerBlock, SemanticLayer, PatchMerging, MSDeformAttnEncoderLayer, CrossAttentionLayer,
           SelfAttentionLayer, FFNLayer)
WHOLE = ("backbone", "sem_seg_head.pixel_decoder", "sem_seg_head.predictor")
RECOMPILE_LIMIT = 64  # every stage, shift, input size and train/eval is a separate graph of a block


def compile_model(model: nn.Module, regional: bool = True, **compile_kwargs) -> nn.Module:
    """Compile `model` in place and return it. `regional`: each layer of `REGIONS` on its own (fast to
    compile); otherwise the backbone, pixel decoder and transformer decoder each as one graph.
    `compile_kwargs` go to `torch.compile` (mode, backend, fullgraph, ...); `dynamic` defaults to False:
    a block sees several shapes, and with automatic dynamic shapes the second one would make dynamo
    retrace it symbolically (6x slower to trace the golden model, and slower kernels)."""
    compile_kwargs.setdefault("dynamic", False)
    if regional:
        # one code object (e.g. SwinTransformerBlock.forward) serves every shape of the model
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        modules = [m for m in model.modules() if isinstance(m, REGIONS)]
    else:
        modules = [model.get_submodule(name) for name in WHOLE]
    if not modules:
        raise ValueError(f"{type(model).__name__} has none of the layers compile_model compiles")
    for module in modules:
        module.compile(**compile_kwargs)
    return model
