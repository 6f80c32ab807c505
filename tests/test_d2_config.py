"""Reading the original detectron2 YAML configs: _BASE_ chains, the eval tag without eval, tuple strings."""

from __future__ import annotations

import pytest

from semask.config import ConfigError, load_config
from semask.d2_config import load_detectron2_config, read_detectron2_yaml, safe_eval_expression
from tests.conftest import require_reference

ADE = "original_configs/ade20k/semantic-segmentation/semask_swin/" \
      "maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640.yaml"
CITY = "original_configs/cityscapes/semantic-segmentation/semask_swin/maskformer2_semask_swin_large_IN21k_384_bs16_90k.yaml"


def test_safe_eval_handles_the_list_comprehension():
    assert safe_eval_expression("[int(x * 0.1 * 512) for x in range(5, 21)]") == \
        [int(x * 0.1 * 512) for x in range(5, 21)]
    assert safe_eval_expression("[x for x in range(10) if x % 3 == 0]") == [0, 3, 6, 9]


@pytest.mark.parametrize("expr", [
    "__import__('os').system('touch /tmp/pwned')",
    "open('/etc/passwd').read()",
    "[x.__class__ for x in range(3)]",
    "(lambda: 1)()",
    "globals()",
    "2 ** 10000",
])
def test_safe_eval_refuses_code(expr):
    with pytest.raises(ConfigError):
        safe_eval_expression(expr)


def test_original_ade20k_large_config():
    cfg = load_detectron2_config(require_reference(ADE))
    m = cfg.model
    assert m.num_classes == 150
    assert (m.backbone.embed_dim, m.backbone.depths, m.backbone.num_heads) == (192, (2, 2, 18, 2), (6, 12, 24, 48))
    assert (m.backbone.window_size, m.backbone.sem_window_size, m.backbone.num_sem_blocks) == (12, 12, 1)
    assert m.decoder.dec_layers == 10 and m.decoder.num_queries == 100 and m.decoder.nheads == 8
    assert m.pixel_decoder.transformer_enc_layers == 6 and m.pixel_decoder.transformer_dim_feedforward == 1024
    assert cfg.data.min_size_train == tuple(int(x * 0.1 * 640) for x in range(5, 21))
    assert cfg.data.crop_size == (640, 640) and cfg.data.min_size_test == 640
    assert cfg.loss.class_weight == 2.0 and cfg.loss.cate_weight == 0.4
    assert cfg.solver.lr_scheduler == "poly" and cfg.solver.max_iter == 160000 and cfg.solver.amp
    assert cfg.test.aug_min_sizes == (320, 480, 640, 800, 960, 1120)
    assert m.weights == "swin_large_patch4_window12_384_22k.pkl"


def test_original_cityscapes_config_defaults_sem_window_to_7():
    cfg = load_detectron2_config(require_reference(CITY))
    assert cfg.model.num_classes == 19 and cfg.data.dataset == "cityscapes"
    assert cfg.model.backbone.window_size == 12 and cfg.model.backbone.sem_window_size == 7
    assert cfg.data.crop_size == (512, 1024) and cfg.solver.max_iter == 90000


def test_golden_configs_chain_relative_bases(golden):
    cfg = load_config(golden.config)
    expected = golden.root / "config.yaml"
    merged = read_detectron2_yaml(expected)
    assert cfg.model.backbone.embed_dim == merged["MODEL"]["SWIN"]["EMBED_DIM"]
    assert cfg.model.decoder.num_queries == merged["MODEL"]["MASK_FORMER"]["NUM_OBJECT_QUERIES"]


def test_detectron2_overrides_use_detectron2_names(golden_ade):
    cfg = load_config(golden_ade.config, ["MODEL.MASK_FORMER.NUM_OBJECT_QUERIES=7", "solver.base_lr=0.5"])
    assert cfg.model.decoder.num_queries == 7 and cfg.solver.base_lr == 0.5
    with pytest.raises(ConfigError, match="detectron2"):
        load_config("semask-tiny-ade20k", ["MODEL.SWIN.EMBED_DIM=32"])


def test_evil_tag_in_yaml_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'MODEL:\n  WEIGHTS: !!python/object/apply:eval ["open(\'{marker}\', \'w\')"]\n')
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()
    other = tmp_path / "evil2.yaml"
    other.write_text('MODEL:\n  WEIGHTS: !!python/object/apply:os.system ["touch x"]\n')
    with pytest.raises(ConfigError):
        load_config(other)


def test_missing_base_names_the_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("_BASE_: nowhere.yaml\nMODEL:\n  SWIN:\n    EMBED_DIM: 16\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(path)
