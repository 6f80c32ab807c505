"""Backbone initialisation from ImageNet Swin checkpoints (Microsoft key names, window 7 -> model window 12)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from semask import build_model
from semask.modeling.swin import relative_position_index, shifted_window_mask
from semask.pretrained import load_backbone_pretrained, resize_relative_position_table
from semask.weights import WeightsError

EMBED, DEPTHS, HEADS = 16, (2, 2, 2, 2), (1, 2, 2, 4)


def microsoft_swin_state_dict(window: int = 7, seed: int = 0, embed: int = EMBED, num_classes: int = 10) -> dict:
    """A Swin ImageNet checkpoint's state_dict as Microsoft's code names it, built independently of semask."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = {"patch_embed.proj.weight": r(embed, 3, 4, 4), "patch_embed.proj.bias": r(embed),
          "patch_embed.norm.weight": r(embed), "patch_embed.norm.bias": r(embed)}
    for i, (depth, heads) in enumerate(zip(DEPTHS, HEADS)):
        c = embed * 2 ** i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            sd.update({p + "norm1.weight": r(c), p + "norm1.bias": r(c),
                       p + "attn.relative_position_bias_table": r((2 * window - 1) ** 2, heads),
                       p + "attn.relative_position_index": relative_position_index(window),
                       p + "attn.qkv.weight": r(3 * c, c), p + "attn.qkv.bias": r(3 * c),
                       p + "attn.proj.weight": r(c, c), p + "attn.proj.bias": r(c),
                       p + "norm2.weight": r(c), p + "norm2.bias": r(c),
                       p + "mlp.fc1.weight": r(4 * c, c), p + "mlp.fc1.bias": r(4 * c),
                       p + "mlp.fc2.weight": r(c, 4 * c), p + "mlp.fc2.bias": r(c)})
            if j % 2 == 1:  # older releases saved the shift mask of 224x224 inputs as a buffer
                side = -(-(56 // 2 ** i) // window) * window
                sd[p + "attn_mask"] = shifted_window_mask(side, side, window, window // 2, torch.device("cpu"))
        if i < len(DEPTHS) - 1:
            sd[f"layers.{i}.downsample.reduction.weight"] = r(2 * c, 4 * c)
            sd[f"layers.{i}.downsample.norm.weight"] = r(4 * c)
            sd[f"layers.{i}.downsample.norm.bias"] = r(4 * c)
    last = embed * 2 ** (len(DEPTHS) - 1)
    sd.update({"norm.weight": r(last), "norm.bias": r(last), "head.weight": r(num_classes, last),
               "head.bias": r(num_classes)})
    return sd


def tiny_window12_model():
    return build_model(tiny_config(**{"model.backbone.window_size": 12, "model.backbone.sem_window_size": 12}))


def expected_counts() -> dict:
    blocks = sum(DEPTHS)
    shifted = sum(d // 2 for d in DEPTHS)
    return {"loaded": 4 + 13 * blocks + 3 * (len(DEPTHS) - 1), "resized": blocks,
            "dropped": 2 + 2 + blocks + shifted}  # head, norm, relative_position_index, attn_mask


def check_loaded(model, sd: dict, report) -> None:
    own = model.state_dict()
    counts = expected_counts()
    assert len(report.loaded) == counts["loaded"]
    assert len(report.resized) == counts["resized"]
    assert len(report.dropped) == counts["dropped"]
    reasons = set(report.dropped.values())
    assert any("classifier" in r for r in reasons) and any("recomputed" in r for r in reasons)
    assert {k for k in report.dropped if k.startswith("head.") or k.startswith("norm.")} == \
        {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    # every loaded tensor equals the file's (tables: resized), under backbone.*
    for key in report.loaded:
        assert key.startswith("backbone.")
        name = key[len("backbone."):]
        if key in report.resized:
            assert own[key].shape == (23 * 23, sd[name].shape[1])
            # offset (0, 0) sits at the grid centre in both sizes: bicubic keeps it exactly
            centre_old, centre_new = (13 * 13) // 2, (23 * 23) // 2
            torch.testing.assert_close(own[key][centre_new], sd[name][centre_old], rtol=0, atol=1e-6)
        else:
            assert torch.equal(own[key], sd[name]), key
    # nothing else was touched: new = everything not loaded, and those are the SeMask / head parts
    loaded = set(report.loaded)
    expected_new = {k for k in own if k not in loaded and not k.endswith("relative_position_index")}
    assert set(report.new) == expected_new
    for key in report.new:
        assert ".semantic_layer." in key or key.startswith("backbone.norm") or not key.startswith("backbone."), key
    assert any(".semantic_layer." in k for k in report.new)
    assert any(k.startswith("sem_seg_head.") for k in report.new)
    # the derived index buffers keep the model's window
    assert torch.equal(own["backbone.layers.0.blocks.0.attn.relative_position_index"], relative_position_index(12))


def test_microsoft_pth_window7_into_window12(tmp_path: Path):
    sd = microsoft_swin_state_dict(window=7)
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": sd}, path)
    model = tiny_window12_model()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_backbone_pretrained(model, path)
    check_loaded(model, sd, report)
    own = model.state_dict()
    for key in report.new:  # untouched
        assert torch.equal(own[key], fresh[key]), key
    summary = report.summary()
    assert f"loaded {expected_counts()['loaded']} tensors" in summary
    assert "window 7 -> 12" in summary and "semantic layers" in summary
    model.eval()
    with torch.no_grad():
        scores = model.predict(torch.rand(1, 3, 64, 96) * 255)[0]
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("as_numpy", [False, True])
def test_detectron2_pkl_conversion(tmp_path: Path, as_numpy: bool):
    """The .pkl files of detectron2 conversions: {"model": {name: array or tensor}, "__author__": ...}."""
    sd = microsoft_swin_state_dict(window=7, seed=1)
    model_part = {k: v.numpy() for k, v in sd.items()} if as_numpy else sd
    path = tmp_path / "swin_tiny_patch4_window7_224.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model_part, "__author__": "third_party", "matching_heuristics": True}, f)
    model = tiny_window12_model()
    report = load_backbone_pretrained(model, path)
    check_loaded(model, sd, report)


def test_same_window_loads_tables_unchanged(tmp_path: Path):
    sd = microsoft_swin_state_dict(window=4)
    path = tmp_path / "w4.pth"
    torch.save(sd, path)  # a bare state_dict works too
    model = build_model(tiny_config())  # window 4
    report = load_backbone_pretrained(model, path)
    assert report.resized == {}
    key = "backbone.layers.1.blocks.1.attn.relative_position_bias_table"
    assert torch.equal(model.state_dict()[key], sd["layers.1.blocks.1.attn.relative_position_bias_table"])


def test_backbone_prefixed_file_and_full_checkpoint(tmp_path: Path):
    """Files in our layout (backbone.*) load too; parts outside the backbone are dropped, not loaded."""
    source = build_model(tiny_config())
    path = tmp_path / "full.pth"
    torch.save({"model": source.state_dict()}, path)
    model = build_model(tiny_config())
    report = load_backbone_pretrained(model, path)
    src_sd, own = source.state_dict(), model.state_dict()
    assert all(torch.equal(own[k], src_sd[k]) for k in report.loaded)
    assert any(".semantic_layer." in k for k in report.loaded)  # a SeMask file carries them
    assert all(reason == "not part of the backbone" for k, reason in report.dropped.items()
               if k.startswith("sem_seg_head."))
    assert not any(k.startswith("sem_seg_head.") for k in report.loaded)


def test_wrong_swin_size_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "swin_b.pth"
    torch.save({"model": microsoft_swin_state_dict(embed=32)}, path)
    with pytest.raises(WeightsError, match=r"another Swin size.*embed dim 32 in the file, 16 in the config"):
        load_backbone_pretrained(tiny_window12_model(), path)


def test_nothing_matches_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.weight": torch.zeros(10, 4)}, path)
    with pytest.raises(WeightsError, match=r"resnet.pth: no tensor of the file matches the Swin backbone"):
        load_backbone_pretrained(tiny_window12_model(), path)


def test_swin_v2_is_refused(tmp_path: Path):
    sd = microsoft_swin_state_dict()
    sd["layers.0.blocks.0.attn.logit_scale"] = torch.zeros(1, 1, 1)
    path = tmp_path / "swinv2.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(WeightsError, match="Swin V2"):
        load_backbone_pretrained(tiny_window12_model(), path)


def test_resize_table_properties():
    table = torch.randn(13 * 13, 3)
    assert resize_relative_position_table(table, 7) is table
    const = torch.full((13 * 13, 2), 0.25)
    torch.testing.assert_close(resize_relative_position_table(const, 12), torch.full((23 * 23, 2), 0.25))
    # head h of the result only depends on head h of the input
    out = resize_relative_position_table(table, 12)
    table2 = table.clone()
    table2[:, 1] = 0
    out2 = resize_relative_position_table(table2, 12)
    assert torch.equal(out[:, 0], out2[:, 0]) and torch.equal(out[:, 2], out2[:, 2])
    assert not torch.equal(out[:, 1], out2[:, 1])
