"""Initial weights for training: full checkpoints strictly, fine-tuning to another class count, ImageNet Swin
checkpoints through the backbone initialisation."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from semask import build_model, save_weights
from semask.engine.initial_weights import load_initial_weights
from semask.weights import WeightsError


def _model(num_classes: int = 6, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return build_model(tiny_config(num_classes, **overrides))


def test_full_safetensors_and_detectron2_checkpoints_load_everything(tmp_path):
    source = _model(seed=1)
    save_weights(source, tmp_path / "w.safetensors", source.config)
    sd = dict(source.state_dict())
    sd["criterion.empty_weight"] = torch.ones(7)
    torch.save({"model": sd, "iteration": 5}, tmp_path / "model_final.pth")
    for name in ("w.safetensors", "model_final.pth"):
        target = _model(seed=2)
        report = load_initial_weights(target, tmp_path / name)
        assert "loaded all" in report
        for k, v in source.state_dict().items():
            assert torch.equal(target.state_dict()[k], v), (name, k)


def test_another_class_count_keeps_fresh_class_layers(tmp_path):
    source = _model(num_classes=6, seed=1)
    save_weights(source, tmp_path / "six.safetensors", source.config)
    target = _model(num_classes=4, seed=2)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_initial_weights(target, tmp_path / "six.safetensors")
    assert "class-specific tensors start fresh" in report
    class_keys = [k for k in fresh if any(c in k for c in ("mlp_cls_q.", "mlp_cls_k.", "class_embed."))]
    assert class_keys
    for k, v in target.state_dict().items():
        if k in class_keys:
            assert torch.equal(v, fresh[k]), k                      # untouched: fresh initialisation
        else:
            assert torch.equal(v, source.state_dict()[k]), k        # from the file


def test_other_architectures_are_refused(tmp_path):
    source = _model(seed=1, **{"model.decoder.hidden_dim": 64})
    save_weights(source, tmp_path / "big.safetensors", source.config)
    with pytest.raises(WeightsError, match="do not fit"):
        load_initial_weights(_model(), tmp_path / "big.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        load_initial_weights(_model(), tmp_path / "missing.pth")


def test_imagenet_swin_checkpoints_initialise_the_backbone(tmp_path):
    source = _model(seed=1)
    # a Microsoft-style Swin checkpoint: backbone names without the prefix, a classifier head, no SeMask layers
    swin = {k[len("backbone."):]: v for k, v in source.state_dict().items()
            if k.startswith("backbone.") and ".semantic_layer." not in k and not k.startswith("backbone.norm")}
    swin["norm.weight"] = torch.ones(swin["layers.3.blocks.0.norm1.weight"].shape)
    swin["head.weight"] = torch.zeros(10, swin["norm.weight"].shape[0])
    torch.save({"model": swin}, tmp_path / "swin_tiny.pth")
    target = _model(seed=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_initial_weights(target, tmp_path / "swin_tiny.pth")
    assert "loaded" in report
    after = target.state_dict()
    assert torch.equal(after["backbone.patch_embed.proj.weight"], source.state_dict()["backbone.patch_embed.proj.weight"])
    assert torch.equal(after["backbone.layers.2.blocks.1.attn.qkv.weight"],
                       source.state_dict()["backbone.layers.2.blocks.1.attn.qkv.weight"])
    # semantic layers and the heads stay as initialised
    for k in ("backbone.layers.0.semantic_layer.class_injection.0.mlp_cls_q.weight",
              "sem_seg_head.predictor.class_embed.weight"):
        assert torch.equal(after[k], before[k]), k
