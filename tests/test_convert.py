"""Checkpoint conversion and the restricted .pkl reader: round trips, malicious pickles, Swin backbones."""

from __future__ import annotations

import collections
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from test_pretrained import microsoft_swin_state_dict

from semask import build_model, load_config, load_model
from semask.convert import (SEMASK_MODEL, SWIN_BACKBONE, UNKNOWN, checkpoint_kind, convert_checkpoint,
                            read_pkl_checkpoint)
from semask.io import read_image
from semask.pretrained import load_backbone_pretrained
from semask.weights import WeightsError, read_checkpoint


def golden_image(golden) -> torch.Tensor:
    return torch.from_numpy(read_image(golden.image)).permute(2, 0, 1).float()


def test_golden_round_trip_is_bit_exact(golden, tmp_path: Path):
    """model_final.pth -> safetensors (+ YAML) -> predict gives exactly the scores predicted from the .pth."""
    dst = tmp_path / "model.safetensors"
    result = convert_checkpoint(golden.weights, dst, golden.config)
    assert result.kind == SEMASK_MODEL and result.config_yaml == tmp_path / "model.yaml"
    image = golden_image(golden)
    with torch.no_grad():
        from_pth = load_model(golden.config, golden.weights).predict([image])[0]
        from_st = load_model(None, dst).predict([image])[0]          # config embedded in the file
    assert torch.equal(from_pth, from_st)
    torch.testing.assert_close(from_st, golden.expected["sem_seg"], rtol=0, atol=1e-4)
    ckpt = read_checkpoint(dst)
    original = read_checkpoint(golden.weights).state_dict
    assert "criterion.empty_weight" not in ckpt.state_dict  # a loss constant, not a weight
    assert all(torch.equal(v, original[k]) for k, v in ckpt.state_dict.items())
    assert ckpt.extra["contents"] == SEMASK_MODEL and ckpt.extra["source"] == "model_final.pth"
    assert load_config(result.config_yaml) == ckpt.config == load_config(golden.config)


def test_keys_are_checked_against_the_config(golden_ade, tmp_path: Path):
    dst = tmp_path / "model.safetensors"
    with pytest.raises(WeightsError, match=r"weights do not fit the model \(0 missing, 16 unexpected") as info:
        convert_checkpoint(golden_ade.weights, dst, tiny_config(150))
    assert "unexpected in the file" in info.value.details and "shape differs" in info.value.details
    assert not dst.exists()
    with pytest.raises(WeightsError, match=r"no preset fits this checkpoint exactly .*--config"):
        convert_checkpoint(golden_ade.weights, dst)
    assert not dst.exists()


def test_output_must_be_safetensors(golden_ade, tmp_path: Path):
    with pytest.raises(WeightsError, match=r"must be a \.safetensors file"):
        convert_checkpoint(golden_ade.weights, tmp_path / "model.pth", golden_ade.config)


def test_tiny_model_round_trip_without_config_uses_embedded(tmp_path: Path):
    model = build_model(tiny_config())
    torch.save({"model": model.state_dict(), "iteration": 7}, tmp_path / "model_final.pth")
    dst = tmp_path / "tiny.safetensors"
    convert_checkpoint(tmp_path / "model_final.pth", dst, tiny_config())
    # converting our own file again needs no config: the file carries it
    again = convert_checkpoint(dst, tmp_path / "again.safetensors")
    assert again.kind == SEMASK_MODEL
    a, b = read_checkpoint(dst).state_dict, read_checkpoint(tmp_path / "again.safetensors").state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- malicious pickles


class CreatesFile:
    """Unpickling this object opens (creates) `path` for writing."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path, suffix: str):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / f"evil{suffix}"
    payload = {"model": {"backbone.patch_embed.proj.weight": CreatesFile(marker)}, "__author__": "x"}
    if suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    assert not marker.exists()
    # sanity: the file really is malicious when unpickled without restrictions
    with open(path, "rb") as f:
        if suffix == ".pkl":
            pickle.load(f)
        else:
            torch.load(f, weights_only=False)
    assert marker.exists()
    marker.unlink()
    for read in (read_checkpoint, lambda p: convert_checkpoint(p, tmp_path / "out.safetensors")):
        with pytest.raises(WeightsError) as info:
            read(path)
        assert "io.open" in str(info.value) or "builtins.open" in str(info.value)
        assert str(path) in str(info.value)
        assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_malicious_global_inside_numpy_array_is_refused(tmp_path: Path):
    """An object array would unpickle its elements: they go through the same allow-list."""
    marker = tmp_path / "pwned.txt"
    arr = np.empty(1, dtype=object)
    arr[0] = CreatesFile(marker)
    path = tmp_path / "evil_array.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": arr}}, f)
    with pytest.raises(WeightsError, match="open"):
        read_pkl_checkpoint(path)
    assert not marker.exists()


def test_other_globals_are_named(tmp_path: Path):
    path = tmp_path / "counter.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2, np.float32)}, "stats": collections.Counter("ab")}, f)
    with pytest.raises(WeightsError, match=r"global 'collections.Counter' is not allowed"):
        read_pkl_checkpoint(path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pkl_reader_accepts_arrays_tensors_and_containers(tmp_path: Path, protocol: int):
    tensors = collections.OrderedDict(a=torch.arange(6.0).view(2, 3), b=torch.ones(2, dtype=torch.float16))
    tensors["view"] = tensors["a"][1]  # shares storage with "a"
    arrays = {"w": np.arange(4, dtype=np.float32).reshape(2, 2), "i": np.arange(3), "s": np.float64(2.5)}
    for name, weights in (("tensors", tensors), ("arrays", arrays)):
        path = tmp_path / f"{name}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": weights, "__author__": "third_party", "matching_heuristics": True}, f,
                        protocol=protocol)
        ckpt = read_pkl_checkpoint(path)
        assert ckpt.format == "detectron2-pkl"
        assert ckpt.extra == {"__author__": "third_party", "matching_heuristics": True}
        assert list(ckpt.state_dict) == list(weights)
        for k, v in weights.items():
            expected = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))
            assert ckpt.state_dict[k].dtype == expected.dtype and torch.equal(ckpt.state_dict[k], expected)


def test_pkl_errors_are_clear(tmp_path: Path):
    path = tmp_path / "truncated.pkl"
    with open(path, "wb") as f:
        f.write(pickle.dumps({"model": {"w": np.zeros(100, np.float32)}})[:50])
    with pytest.raises(WeightsError, match=r"truncated.pkl: cannot read as a pickled weights file"):
        read_pkl_checkpoint(path)
    path = tmp_path / "list.pkl"
    with open(path, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(WeightsError, match=r"holds a list"):
        read_pkl_checkpoint(path)
    path = tmp_path / "strings.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": "not an array"}}, f)
    with pytest.raises(WeightsError, match=r"entry 'w' is a str, not an array"):
        read_pkl_checkpoint(path)
    with pytest.raises(WeightsError, match="not found"):
        read_pkl_checkpoint(tmp_path / "missing.pkl")


def test_torch_zip_named_pkl_is_read_safely(tmp_path: Path):
    path = tmp_path / "actually_torch.pkl"
    torch.save({"model": {"w": torch.ones(3)}}, path)
    assert torch.equal(read_pkl_checkpoint(path).state_dict["w"], torch.ones(3))


# --------------------------------------------------------------------------- Swin ImageNet checkpoints


def test_checkpoint_kind():
    assert checkpoint_kind(build_model(tiny_config()).state_dict()) == SEMASK_MODEL
    assert checkpoint_kind(microsoft_swin_state_dict()) == SWIN_BACKBONE
    assert checkpoint_kind({"conv1.weight": torch.zeros(1)}) == UNKNOWN


@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_swin_to_backbone_safetensors(tmp_path: Path, suffix: str):
    sd = microsoft_swin_state_dict(window=7)
    src = tmp_path / f"swin_tiny_patch4_window7_224{suffix}"
    if suffix == ".pth":
        torch.save({"model": sd}, src)
    else:
        with open(src, "wb") as f:
            pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "third_party"}, f)

    # renamed only: backbone.* keys, classifier / final norm / derived buffers gone, window kept
    plain = convert_checkpoint(src, tmp_path / "plain.safetensors")
    assert plain.kind == SWIN_BACKBONE
    out = read_checkpoint(tmp_path / "plain.safetensors").state_dict
    assert all(k.startswith("backbone.") for k in out)
    assert not any(k.endswith(("relative_position_index", "attn_mask")) or ".head." in k for k in out)
    assert "backbone.norm.weight" not in out
    assert torch.equal(out["backbone.layers.2.blocks.1.mlp.fc1.weight"], sd["layers.2.blocks.1.mlp.fc1.weight"])
    assert out["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (13 * 13, 1)
    assert checkpoint_kind(out) == SWIN_BACKBONE

    # adapted to a window-12 config: tables resized; loading either file gives the same backbone
    cfg = tiny_config(**{"model.backbone.window_size": 12, "model.backbone.sem_window_size": 12})
    adapted = convert_checkpoint(src, tmp_path / "adapted.safetensors", cfg)
    assert "window 7 -> 12" in adapted.summary()
    table = read_checkpoint(tmp_path / "adapted.safetensors").state_dict[
        "backbone.layers.0.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (23 * 23, 1)
    models = []
    for weights in (src, tmp_path / "plain.safetensors", tmp_path / "adapted.safetensors"):
        model = build_model(cfg)
        report = load_backbone_pretrained(model, weights)
        assert len(report.loaded) == len(out)
        models.append(model.backbone.state_dict())
    for k in models[0]:
        if ".semantic_layer." in k or k.startswith("norm"):
            continue  # fresh (random) in each model
        assert torch.equal(models[0][k], models[1][k]) and torch.equal(models[0][k], models[2][k]), k


def test_unknown_checkpoint_is_refused(tmp_path: Path):
    src = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7)}, src)
    with pytest.raises(WeightsError, match=r"neither a SeMask Mask2Former nor a Swin checkpoint"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
