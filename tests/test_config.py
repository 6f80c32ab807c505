"""Typed configs: presets, our YAML with `base:`, dotted overrides, errors naming the key."""

from __future__ import annotations

import pytest

from semask.config import Config, ConfigError, load_config, preset_names, save_config


def test_defaults_are_the_paper_recipe():
    cfg = Config()
    assert cfg.solver.base_lr == 1e-4 and cfg.solver.weight_decay == 0.05
    assert cfg.solver.backbone_multiplier == 0.1 and cfg.solver.poly_power == 0.9
    assert cfg.solver.clip_value == 0.01 and cfg.solver.ims_per_batch == 16
    assert (cfg.loss.class_weight, cfg.loss.mask_weight, cfg.loss.dice_weight) == (2.0, 5.0, 5.0)
    assert cfg.loss.cate_weight == 0.4 and cfg.loss.no_object_weight == 0.1
    assert cfg.loss.num_points == 12544 and cfg.loss.oversample_ratio == 3.0
    assert cfg.loss.importance_sample_ratio == 0.75
    assert cfg.model.decoder.dec_layers == 10 and cfg.model.decoder.num_queries == 100


def test_overrides_are_typed():
    cfg = load_config("semask-tiny-ade20k", ["solver.base_lr=0.001", "model.backbone.depths=[2, 2, 2, 2]",
                                             "data.crop_size=(256, 320)", "solver.amp=false",
                                             "model.backbone.semantic_attention=[global, global, global, global]"])
    assert cfg.solver.base_lr == 0.001
    assert cfg.model.backbone.depths == (2, 2, 2, 2)
    assert cfg.data.crop_size == (256, 320)
    assert cfg.solver.amp is False
    assert cfg.model.backbone.semantic_attention == ("global",) * 4
    assert load_config("semask-tiny-ade20k", {"model.num_classes": 7}).model.num_classes == 7


@pytest.mark.parametrize("override, fragment", [
    ("solver.base_rate=0.1", "solver.base_rate"),
    ("solver.base_lr=fast", "solver.base_lr"),
    ("model.backbone.num_heads=[3, 5, 12, 24]", "num_heads[1]"),
    ("model.backbone.semantic_attention=[windowed, local, windowed, global]", "semantic_attention"),
    ("model.decoder.nheads=7", "model.decoder.nheads"),
    ("data.on_error=ignore", "data.on_error"),
    ("solver", "KEY=VALUE"),
    ("model=3", "model"),
])
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config("semask-tiny-ade20k", [override])
    assert fragment in str(err.value)


def test_yaml_round_trip_and_base(tmp_path):
    cfg = load_config("semask-base-ade20k", ["solver.max_iter=123"])
    path = tmp_path / "resolved.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    child = tmp_path / "child.yaml"
    child.write_text("base: resolved.yaml\nsolver:\n  base_lr: 0.0002\n")
    loaded = load_config(child)
    assert loaded.solver.base_lr == 0.0002 and loaded.solver.max_iter == 123
    assert loaded.model == cfg.model
    preset_child = tmp_path / "p.yaml"
    preset_child.write_text("base: semask-tiny-cityscapes\nmodel:\n  num_classes: 4\n")
    assert load_config(preset_child).model.backbone.embed_dim == 96


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backbone:\n    embed_dims: 96\n")
    with pytest.raises(ConfigError, match="model.backbone.embed_dims"):
        load_config(path)


def test_missing_config_lists_presets():
    with pytest.raises(ConfigError, match="semask-tiny-ade20k"):
        load_config("semask-huge-ade20k")


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(path)


def test_presets_load():
    for name in preset_names():
        assert load_config(name).name == name
