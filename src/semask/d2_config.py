"""Reader for the original detectron2 YAML configs of SeMask / Mask2Former.

Handles `_BASE_` chains (paths relative to the including file), detectron2's tuple strings
("(512, 512)") and the `!!python/object/apply:eval` tag, whose list comprehension is evaluated by a
small whitelist interpreter (numbers, arithmetic, range/int/float/round, list comprehensions):
never by Python's eval. Keys that do not affect semantic segmentation are ignored.
"""

from __future__ import annotations

import ast
import copy
import operator
from pathlib import Path
from typing import Any, Iterable

import yaml

from .config import Config, ConfigError, from_dict, validate

# Defaults of detectron2 + add_maskformer2_config (SeMask) for every key we read.
D2_DEFAULTS: dict[str, Any] = {
    "MODEL": {
        "WEIGHTS": "",
        "PIXEL_MEAN": [103.530, 116.280, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "SWIN": {
            "PRETRAIN_IMG_SIZE": 224, "PATCH_SIZE": 4, "EMBED_DIM": 96, "DEPTHS": [2, 2, 6, 2],
            "NUM_HEADS": [3, 6, 12, 24], "WINDOW_SIZE": 7, "MLP_RATIO": 4.0, "QKV_BIAS": True, "QK_SCALE": None,
            "DROP_RATE": 0.0, "ATTN_DROP_RATE": 0.0, "DROP_PATH_RATE": 0.3, "APE": False, "PATCH_NORM": True,
            "OUT_FEATURES": ["res2", "res3", "res4", "res5"], "USE_CHECKPOINT": False,
            "SEM_WINDOW_SIZE": 7, "NUM_SEM_BLOCKS": 1,
        },
        "SEM_SEG_HEAD": {
            "NUM_CLASSES": 54, "IGNORE_VALUE": 255, "CONVS_DIM": 256, "MASK_DIM": 256, "NORM": "GN",
            "COMMON_STRIDE": 4, "TRANSFORMER_ENC_LAYERS": 0,
            "IN_FEATURES": ["res2", "res3", "res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES": ["res3", "res4", "res5"],
            "DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS": 4,
        },
        "MASK_FORMER": {
            "DEEP_SUPERVISION": True, "NO_OBJECT_WEIGHT": 0.1, "CLASS_WEIGHT": 1.0, "DICE_WEIGHT": 1.0,
            "MASK_WEIGHT": 20.0, "CATE_WEIGHT": 0.4, "NHEADS": 8, "DROPOUT": 0.1, "DIM_FEEDFORWARD": 2048,
            "DEC_LAYERS": 6, "PRE_NORM": False, "HIDDEN_DIM": 256, "NUM_OBJECT_QUERIES": 100,
            "ENFORCE_INPUT_PROJ": False, "SIZE_DIVISIBILITY": 32, "TRAIN_NUM_POINTS": 112 * 112,
            "OVERSAMPLE_RATIO": 3.0, "IMPORTANCE_SAMPLE_RATIO": 0.75,
        },
    },
    "INPUT": {
        "MIN_SIZE_TRAIN": [800], "MIN_SIZE_TRAIN_SAMPLING": "choice", "MAX_SIZE_TRAIN": 1333,
        "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "FORMAT": "BGR", "COLOR_AUG_SSD": False,
        "SIZE_DIVISIBILITY": -1,
        "CROP": {"ENABLED": False, "TYPE": "relative_range", "SIZE": [0.9, 0.9], "SINGLE_CATEGORY_MAX_AREA": 1.0},
    },
    "DATASETS": {"TRAIN": [], "TEST": []},
    "DATALOADER": {"NUM_WORKERS": 4},
    "SOLVER": {
        "IMS_PER_BATCH": 16, "BASE_LR": 0.001, "MAX_ITER": 40000, "OPTIMIZER": "ADAMW",
        "WEIGHT_DECAY": 0.0001, "WEIGHT_DECAY_NORM": 0.0, "WEIGHT_DECAY_EMBED": 0.0, "BACKBONE_MULTIPLIER": 0.1,
        "LR_SCHEDULER_NAME": "WarmupMultiStepLR", "POLY_LR_POWER": 0.9, "WARMUP_ITERS": 1000,
        "WARMUP_FACTOR": 0.001, "WARMUP_METHOD": "linear", "CHECKPOINT_PERIOD": 5000,
        "CLIP_GRADIENTS": {"ENABLED": False, "CLIP_TYPE": "value", "CLIP_VALUE": 1.0, "NORM_TYPE": 2.0},
        "AMP": {"ENABLED": False},
    },
    "TEST": {"EVAL_PERIOD": 0, "AUG": {"ENABLED": False, "MIN_SIZES": [400, 500, 600, 700, 800, 900, 1000, 1100,
                                                                       1200], "MAX_SIZE": 4000, "FLIP": True}},
    "SEED": -1,
}

_SCHEDULERS = {"WarmupPolyLR": "poly", "WarmupCosineLR": "cosine", "WarmupMultiStepLR": "multistep"}

# --------------------------------------------------------------------------- safe evaluation of the eval tag

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CALLS = {"range": range, "int": int, "float": float, "round": round, "list": list, "tuple": tuple}


def safe_eval_expression(text: str) -> Any:
    """Evaluate a restricted Python expression: literals, arithmetic, a few builtins, list comprehensions.

    Anything else (attribute access, imports, other names or calls) raises ConfigError.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise ConfigError(f"cannot parse expression {text!r}: {e.msg}") from None

    def ev(node: ast.AST, env: dict[str, Any]) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body, env)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [ev(e, env) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = ev(node.left, env), ev(node.right, env)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ConfigError(f"exponent too large in {text!r}")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand, env))
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            raise ConfigError(f"name {node.id!r} is not allowed in {text!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS \
                and not node.keywords:
            args = [ev(a, env) for a in node.args]
            if node.func.id == "range" and len(range(*args)) > 100000:
                raise ConfigError(f"range too long in {text!r}")
            return _CALLS[node.func.id](*args)
        if isinstance(node, ast.ListComp) and len(node.generators) == 1:
            gen = node.generators[0]
            if not isinstance(gen.target, ast.Name) or gen.is_async:
                raise ConfigError(f"unsupported comprehension in {text!r}")
            out = []
            for item in ev(gen.iter, env):
                local = dict(env, **{gen.target.id: item})
                if all(ev(c, local) for c in gen.ifs):
                    out.append(ev(node.elt, local))
            return out
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            ops = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
                   ast.Eq: operator.eq, ast.NotEq: operator.ne}
            if type(node.ops[0]) in ops:
                return ops[type(node.ops[0])](ev(node.left, env), ev(node.comparators[0], env))
        raise ConfigError(f"expression {text!r} uses {type(node).__name__}, which is not allowed")

    return ev(tree, {})


class _D2Loader(yaml.SafeLoader):
    """SafeLoader that understands `!!python/object/apply:eval ["<expr>"]` through safe_eval_expression."""


def _construct_eval(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    args = loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else [loader.construct_scalar(node)]
    if len(args) != 1 or not isinstance(args[0], str):
        raise ConfigError("!!python/object/apply:eval expects one string argument")
    return safe_eval_expression(args[0])


_D2Loader.add_constructor("tag:yaml.org,2002:python/object/apply:eval", _construct_eval)


def _merge(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_detectron2_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged dict of a detectron2 YAML and its `_BASE_` chain (no defaults applied)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"detectron2 config {path} includes itself through _BASE_")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read detectron2 config {path}: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_D2Loader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"detectron2 config {path} is not valid YAML (or uses an unsupported tag): {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"detectron2 config {path} must hold a mapping")
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    base_path = Path(base)
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    if not base_path.exists():
        raise ConfigError(f"_BASE_ of {path} points to {base_path}, which does not exist")
    return _merge(read_detectron2_yaml(base_path, _seen + (path,)), data)


def _tuple(value: Any) -> Any:
    """detectron2 spells some tuples as strings: "(512, 512)", "('ade20k_sem_seg_train',)"."""
    if isinstance(value, str) and value.strip().startswith("("):
        try:
            return list(ast.literal_eval(value))
        except (ValueError, SyntaxError):
            raise ConfigError(f"cannot read tuple {value!r}") from None
    return value


def _set_path(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"detectron2 override {dotted}: {p} is not a section")
    d[parts[-1]] = value


def detectron2_to_config(d2: dict[str, Any], name: str = "") -> Config:
    """Map a merged detectron2 dict (defaults applied) onto our Config."""
    m, sw, head, mf = d2["MODEL"], d2["MODEL"]["SWIN"], d2["MODEL"]["SEM_SEG_HEAD"], d2["MODEL"]["MASK_FORMER"]
    inp, sol, test = d2["INPUT"], d2["SOLVER"], d2["TEST"]
    if sw.get("APE"):
        raise ConfigError("MODEL.SWIN.APE: absolute position embeddings are not used by SeMask and not supported")
    if m.get("BACKBONE", {}).get("NAME", "D2SeMaskSwinTransformer") not in ("D2SeMaskSwinTransformer",):
        raise ConfigError(f"MODEL.BACKBONE.NAME={m['BACKBONE']['NAME']!r}: only D2SeMaskSwinTransformer is supported")
    pd_name = head.get("PIXEL_DECODER_NAME", "MSDeformAttnPixelDecoder")
    if pd_name != "MSDeformAttnPixelDecoder":
        raise ConfigError(f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={pd_name!r}: only MSDeformAttnPixelDecoder "
                          "is supported")
    datasets = _tuple(d2["DATASETS"]["TRAIN"]) or [""]
    ds = str(datasets[0])
    dataset = "cityscapes" if ds.startswith("cityscapes") else "ade20k" if ds.startswith("ade20k") else "folder"
    crop = inp["CROP"]
    crop_size = [int(v) for v in _tuple(crop["SIZE"])]
    if crop.get("ENABLED") and crop.get("TYPE", "absolute") != "absolute":
        raise ConfigError(f"INPUT.CROP.TYPE={crop['TYPE']!r}: only 'absolute' crops are supported")
    clip = sol["CLIP_GRADIENTS"]
    ours = {
        "name": name,
        "seed": max(int(d2.get("SEED", -1)), 0),
        "model": {
            "num_classes": head["NUM_CLASSES"],
            "pixel_mean": m["PIXEL_MEAN"], "pixel_std": m["PIXEL_STD"],
            "size_divisibility": mf["SIZE_DIVISIBILITY"],
            "weights": m.get("WEIGHTS", "") or "",
            "backbone": {
                "embed_dim": sw["EMBED_DIM"], "depths": sw["DEPTHS"], "num_heads": sw["NUM_HEADS"],
                "window_size": sw["WINDOW_SIZE"], "sem_window_size": sw["SEM_WINDOW_SIZE"],
                "num_sem_blocks": sw["NUM_SEM_BLOCKS"], "patch_size": sw["PATCH_SIZE"],
                "mlp_ratio": sw["MLP_RATIO"], "qkv_bias": sw["QKV_BIAS"], "qk_scale": sw["QK_SCALE"],
                "drop_rate": sw["DROP_RATE"], "attn_drop_rate": sw["ATTN_DROP_RATE"],
                "drop_path_rate": sw["DROP_PATH_RATE"], "patch_norm": sw["PATCH_NORM"],
                "use_checkpoint": sw["USE_CHECKPOINT"],
            },
            "pixel_decoder": {
                "conv_dim": head["CONVS_DIM"], "mask_dim": head["MASK_DIM"], "norm": head["NORM"],
                "transformer_enc_layers": head["TRANSFORMER_ENC_LAYERS"],
                # Mask2Former uses MASK_FORMER.NHEADS / DROPOUT for its deformable encoder, and FFN 1024
                "transformer_nheads": mf["NHEADS"], "transformer_dropout": mf["DROPOUT"],
                "transformer_dim_feedforward": 1024,
                "n_points": head["DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS"],
                "transformer_in_features": _tuple(head["DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES"]),
                "common_stride": head["COMMON_STRIDE"],
            },
            "decoder": {
                "hidden_dim": mf["HIDDEN_DIM"], "num_queries": mf["NUM_OBJECT_QUERIES"], "nheads": mf["NHEADS"],
                "dim_feedforward": mf["DIM_FEEDFORWARD"], "dec_layers": mf["DEC_LAYERS"],
                "enforce_input_proj": mf["ENFORCE_INPUT_PROJ"], "pre_norm": mf["PRE_NORM"],
            },
        },
        "loss": {
            "class_weight": mf["CLASS_WEIGHT"], "mask_weight": mf["MASK_WEIGHT"], "dice_weight": mf["DICE_WEIGHT"],
            "cate_weight": mf["CATE_WEIGHT"], "no_object_weight": mf["NO_OBJECT_WEIGHT"],
            "deep_supervision": mf["DEEP_SUPERVISION"], "num_points": mf["TRAIN_NUM_POINTS"],
            "oversample_ratio": mf["OVERSAMPLE_RATIO"], "importance_sample_ratio": mf["IMPORTANCE_SAMPLE_RATIO"],
        },
        "data": {
            "dataset": dataset,
            "min_size_train": _tuple(inp["MIN_SIZE_TRAIN"]),
            "min_size_train_sampling": inp["MIN_SIZE_TRAIN_SAMPLING"],
            "max_size_train": inp["MAX_SIZE_TRAIN"],
            "crop_enabled": crop["ENABLED"], "crop_size": crop_size,
            "single_category_max_area": crop["SINGLE_CATEGORY_MAX_AREA"],
            "color_aug_ssd": inp["COLOR_AUG_SSD"], "size_divisibility": inp["SIZE_DIVISIBILITY"],
            "min_size_test": inp["MIN_SIZE_TEST"], "max_size_test": inp["MAX_SIZE_TEST"],
            "ignore_value": head["IGNORE_VALUE"], "num_workers": d2["DATALOADER"]["NUM_WORKERS"],
        },
        "solver": {
            "ims_per_batch": sol["IMS_PER_BATCH"], "base_lr": sol["BASE_LR"], "max_iter": sol["MAX_ITER"],
            "optimizer": str(sol["OPTIMIZER"]).lower(), "weight_decay": sol["WEIGHT_DECAY"],
            "weight_decay_norm": sol["WEIGHT_DECAY_NORM"], "weight_decay_embed": sol["WEIGHT_DECAY_EMBED"],
            "backbone_multiplier": sol["BACKBONE_MULTIPLIER"],
            "lr_scheduler": _SCHEDULERS.get(sol["LR_SCHEDULER_NAME"], str(sol["LR_SCHEDULER_NAME"]).lower()),
            "poly_power": sol["POLY_LR_POWER"], "warmup_iters": sol["WARMUP_ITERS"],
            "warmup_factor": sol["WARMUP_FACTOR"],
            "clip_gradients": clip["ENABLED"], "clip_type": clip["CLIP_TYPE"], "clip_value": clip["CLIP_VALUE"],
            "clip_norm_type": clip["NORM_TYPE"], "amp": sol["AMP"]["ENABLED"],
            "checkpoint_period": sol["CHECKPOINT_PERIOD"],
        },
        "test": {
            "eval_period": test["EVAL_PERIOD"], "aug_enabled": test["AUG"]["ENABLED"],
            "aug_min_sizes": test["AUG"]["MIN_SIZES"], "aug_max_size": test["AUG"]["MAX_SIZE"],
            "aug_flip": test["AUG"]["FLIP"],
        },
    }
    if inp.get("FORMAT", "RGB") != "RGB":
        raise ConfigError(f"INPUT.FORMAT={inp['FORMAT']!r}: SeMask Mask2Former models take RGB input")
    return validate(from_dict(Config, ours))


def load_detectron2_config(path: str | Path, overrides: Iterable[tuple[str, Any]] = ()) -> Config:
    """Read a detectron2 YAML (with its _BASE_ chain) into a Config; `overrides` use detectron2 keys."""
    merged = _merge(D2_DEFAULTS, read_detectron2_yaml(path))
    for key, value in overrides:
        _set_path(merged, key, value)
    return detectron2_to_config(merged, name=Path(path).stem)
