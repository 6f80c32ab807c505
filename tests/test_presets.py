"""Presets against the official models: state_dict keys and shapes (keys_*.tsv), parameter counts
(param_counts.tsv), and `semask info --json / --keys` reporting them."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import semask
from semask.cli import main
from semask.config import preset_names
from tests.conftest import require_reference

MANIFESTS = {
    "semask-tiny-ade20k": "semask_tiny_ade20k",
    "semask-small-ade20k": "semask_small_ade20k",
    "semask-base-ade20k": "semask_base_ade20k",
    "semask-large-ade20k": "semask_large_ade20k",
    "semask-large-cityscapes": "semask_large_cityscapes",
}
# a loss constant of the original checkpoints; accepted by the loader and dropped (not a model weight)
ALLOWED_EXTRA = {"criterion.empty_weight"}


def _read_tsv(path) -> dict[str, tuple[tuple[int, ...], str]]:
    rows = list(csv.reader(open(path), delimiter="\t"))
    assert rows[0] == ["key", "shape", "dtype"]
    return {k: (tuple(int(s) for s in shape.split(",")) if shape else (), dtype) for k, shape, dtype in rows[1:]}


def _meta_model(name: str):
    with torch.device("meta"):
        return semask.build_model(name)


@pytest.mark.parametrize("preset", sorted(MANIFESTS))
def test_state_dict_matches_official_keys(preset):
    ref = _read_tsv(require_reference(f"keys_{MANIFESTS[preset]}.tsv"))
    ours = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in _meta_model(preset).state_dict().items()}
    assert set(ref) - set(ours) == ALLOWED_EXTRA
    assert set(ours) - set(ref) == set()
    wrong = {k: (ours[k], ref[k]) for k in ours if ours[k] != ref[k]}
    assert not wrong, list(wrong.items())[:5]


def _param_counts():
    rows = list(csv.DictReader(open(require_reference("param_counts.tsv")), delimiter="\t"))
    return {r["name"].replace("_", "-"): r for r in rows}


@pytest.mark.parametrize("preset", sorted(MANIFESTS))
def test_info_json_matches_param_counts(preset, capsys):
    ref = _param_counts()[preset]
    assert main(["info", "--config", preset, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    params = info["params"]
    for key in ("total", "backbone", "backbone_semantic_layers", "backbone_without_semantic_layers",
                "pixel_decoder", "transformer_decoder", "semantic_head"):
        assert params[key] == int(ref["total_params" if key == "total" else key]), key
    # the official count includes criterion.empty_weight (K + 1 values), which we do not keep
    k = int(ref["num_classes"])
    assert params["state_dict_entries"] == int(ref["state_dict_entries"]) - 1
    assert params["state_dict_numel_incl_buffers"] == int(ref["state_dict_numel_incl_buffers"]) - (k + 1)
    assert ",".join({"windowed": "SWSeMaskBlock", "global": "SeMaskBlock"}[m]
                    for m in info["semantic_attention"]) == ref["semantic_layer_types"]


def test_large_ade20k_has_the_published_parameter_count(capsys):
    main(["info", "--config", "semask-large-ade20k", "--json"])
    assert json.loads(capsys.readouterr().out)["params"]["total"] == 222_632_383


def test_info_keys_tsv_round_trips(capsys):
    ref = _read_tsv(require_reference("keys_semask_tiny_ade20k.tsv"))
    assert main(["info", "--config", "semask-tiny-ade20k", "--keys"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    ours = {}
    for line in lines[1:]:
        key, shape, dtype = line.split("\t")
        ours[key] = (tuple(int(s) for s in shape.split(",")) if shape else (), dtype)
    assert lines[0] == "key\tshape\tdtype"
    assert ours == {k: v for k, v in ref.items() if k not in ALLOWED_EXTRA}


def test_every_preset_builds_and_cityscapes_presets_are_all_windowed():
    names = preset_names()
    for size in ("tiny", "small", "base", "large"):
        for ds in ("ade20k", "cityscapes"):
            assert f"semask-{size}-{ds}" in names
    for name in names:
        cfg = semask.load_config(name)
        modes = _meta_model(name).backbone.semantic_attention
        if cfg.model.num_classes == 150:
            assert modes == ("windowed", "windowed", "windowed", "global"), name
        else:
            assert modes == ("windowed",) * 4, name


def test_presets_of_large_equal_the_original_detectron2_configs():
    """The shipped large presets are the published detectron2 configs, field by field."""
    from semask.d2_config import load_detectron2_config

    root = require_reference("original_configs")
    pairs = {
        "semask-large-ade20k": root / "ade20k/semantic-segmentation/semask_swin/"
                                      "maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.yaml",
        "semask-large-cityscapes": root / "cityscapes/semantic-segmentation/semask_swin/"
                                          "maskformer2_semask_swin_large_IN21k_384_bs16_90k.yaml",
    }
    for preset, path in pairs.items():
        ours = semask.load_config(preset).to_dict()
        theirs = load_detectron2_config(path).to_dict()
        for section in ("model", "loss", "solver", "test"):
            a, b = dict(ours[section]), dict(theirs[section])
            if section == "model":
                a.pop("weights"), b.pop("weights")
            assert a == b, (preset, section, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)})
        for key in ("dataset", "min_size_train", "max_size_train", "crop_size", "size_divisibility",
                    "min_size_test", "max_size_test", "single_category_max_area", "color_aug_ssd"):
            assert ours["data"][key] == theirs["data"][key], (preset, key)
