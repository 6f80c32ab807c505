"""Reading weights files, strict loading with helpful mismatch errors, and safetensors round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from semask import ConfigError, build_model, load_model, save_weights
from semask.weights import (Checkpoint, WeightsError, _preset_shapes, describe_mismatch, load_state_dict_strict,
                            read_checkpoint, save_state_dict, weights_summary)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


def test_unreadable_files(tmp_path: Path):
    with pytest.raises(WeightsError, match=r"missing.pth: weights file not found"):
        read_checkpoint(tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"is a folder"):
        read_checkpoint(tmp_path)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty.pth: weights file is empty"):
        read_checkpoint(tmp_path / "empty.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(WeightsError, match=r"garbage.pth: cannot read as a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "garbage.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(WeightsError, match=r"garbage.safetensors: cannot read safetensors file"):
        read_checkpoint(tmp_path / "garbage.safetensors")
    torch.save({"model": {"w": torch.zeros(1), "note": 3}}, tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match=r"entry 'note' is a int, not a tensor"):
        read_checkpoint(tmp_path / "mixed.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=r"no model weights found"):
        read_checkpoint(tmp_path / "list.pth")


def test_checkpoint_layouts(tiny, tmp_path: Path):
    sd = tiny.state_dict()
    torch.save({"model": sd, "optimizer": {}, "iteration": 1234}, tmp_path / "d2.pth")
    torch.save({"state_dict": sd}, tmp_path / "sd_key.pth")
    torch.save(sd, tmp_path / "bare.pth")
    d2 = read_checkpoint(tmp_path / "d2.pth")
    assert d2.format == "detectron2" and d2.extra["iteration"] == 1234
    for name in ("d2.pth", "sd_key.pth", "bare.pth"):
        ckpt = read_checkpoint(tmp_path / name)
        assert ckpt.state_dict.keys() == sd.keys()
        assert all(torch.equal(ckpt.state_dict[k], sd[k]) for k in sd)
    info = weights_summary(tmp_path / "d2.pth")
    assert info["format"] == "detectron2" and info["iteration"] == 1234 and info["contents"] == "semask-model"
    assert info["numel"] == sum(p.numel() for p in tiny.parameters())
    assert info["num_classes"] == 5 and info["config"] is None and info["dtypes"] == ["float32", "int64"]


def test_safetensors_round_trip_is_exact(tiny, tmp_path: Path):
    cfg = tiny.config
    path = save_weights(tiny, tmp_path / "tiny.safetensors", cfg, {"note": "x"})
    ckpt = read_checkpoint(path)
    assert ckpt.format == "safetensors" and ckpt.config == cfg and ckpt.extra["note"] == "x"
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in tiny.state_dict().items())
    assert not (tmp_path / ".tiny.safetensors.tmp").exists()
    loaded = load_model(None, path)  # config from the file
    image = torch.rand(1, 3, 45, 61) * 255
    with torch.no_grad():
        assert torch.equal(loaded.predict(image)[0], tiny.predict(image)[0])
    info = weights_summary(path)
    assert info["metadata"] == {"note": "x"} and info["config"] == cfg.name


def test_save_state_dict_with_shared_memory(tmp_path: Path):
    base = torch.arange(12.0)
    path = save_state_dict({"a": base.view(3, 4), "b": base[4:8], "c": torch.ones(2)}, tmp_path / "s.safetensors")
    sd = read_checkpoint(path).state_dict
    assert torch.equal(sd["a"], base.view(3, 4)) and torch.equal(sd["b"], base[4:8])
    with pytest.raises(WeightsError, match="cannot write weights"):
        save_state_dict({"a": torch.ones(1)}, tmp_path / "no_such_dir" / "x.safetensors")


def test_strict_loading_lists_differences(tiny, tmp_path: Path):
    sd = dict(tiny.state_dict())
    sd.pop("backbone.patch_embed.proj.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["backbone.norm0.weight"] = torch.zeros(3)
    model = build_model(tiny_config())
    with pytest.raises(WeightsError) as info:
        load_state_dict_strict(model, Checkpoint(tmp_path / "x.pth", sd, "state_dict"))
    assert "\n" not in str(info.value)  # the message is one line; the full list is in .details
    msg = info.value.details
    assert "x.pth: weights do not fit the model (1 missing, 1 unexpected, 1 with another shape)" in msg
    assert "backbone.patch_embed.proj.bias" in msg and "extra.weight" in msg
    assert "backbone.norm0.weight: (16,) vs (3,)" in msg
    # the loss constant of released checkpoints is accepted and dropped
    good = dict(tiny.state_dict(), **{"criterion.empty_weight": torch.ones(6)})
    load_state_dict_strict(model, Checkpoint(tmp_path / "ok.pth", good, "detectron2"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tiny.state_dict().items())


def test_class_count_hint(tiny, tmp_path: Path):
    torch.save({"model": tiny.state_dict()}, tmp_path / "five.pth")
    with pytest.raises(WeightsError, match=r"trained for 5 classes, the config has 7: set model.num_classes=5"):
        load_model(tiny_config(num_classes=7), tmp_path / "five.pth")


def test_exact_preset_is_suggested(tmp_path: Path):
    msg = describe_mismatch(_preset_shapes("semask-small-ade20k"), _preset_shapes("semask-tiny-ade20k"),
                            tmp_path / "swin_t.pth")
    assert "These weights fit the preset 'semask-tiny-ade20k': use --config semask-tiny-ade20k." in msg


def test_config_needed_without_embedded_one(tiny, tmp_path: Path):
    torch.save(tiny.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(ConfigError, match=r"bare.pth: the file holds no config; pass one with --config"):
        load_model(None, tmp_path / "bare.pth")


def test_trust_pickle(tmp_path: Path):
    import argparse

    path = tmp_path / "with_args.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(WeightsError, match=r"refused to load.*global 'argparse.Namespace'"):
        read_checkpoint(path)
    ckpt = read_checkpoint(path, trust_pickle=True)
    assert torch.equal(ckpt.state_dict["w"], torch.ones(2)) and ckpt.extra["args"].lr == 0.1
    save_state_dict({"w": torch.ones(1)}, tmp_path / "w.safetensors")
    for name in ("w.safetensors", "w.pkl"):
        (tmp_path / "w.pkl").write_bytes(b"x")
        with pytest.raises(WeightsError, match="applies only to .pth"):
            read_checkpoint(tmp_path / name, trust_pickle=True)
