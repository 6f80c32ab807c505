"""`semask info`: what a config builds (parameters per part, state_dict keys, FLOPs) or what a weights file holds."""

from __future__ import annotations

import argparse
import json

from . import CommandError

EXAMPLE = """examples:
  semask info --config semask-large-ade20k            # parameters per part
  semask info --config semask-tiny-ade20k --json --flops --size 512
  semask info --config semask-base-ade20k --keys > keys.tsv
  semask info --weights model_final.pth               # format, tensors, classes, embedded config
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="parameters per part, state_dict keys, FLOPs; or describe a weights file",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="preset name, our YAML or a detectron2 YAML")
    p.add_argument("--weights", "-w", help="describe this weights file instead of (or besides) a config")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--keys", action="store_true", help="print the state_dict as TSV: key, shape, dtype")
    p.add_argument("--flops", action="store_true", help="count FLOPs of one inference at --size (slow for L)")
    p.add_argument("--size", type=int, nargs="+", default=[512], metavar="N",
                   help="input size for --flops: N (square) or H W (default 512)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def parameter_counts(model) -> dict[str, int]:
    """Parameter counts per part, in the layout of the reference param_counts.tsv."""
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    backbone = count(model.backbone)
    semantic = sum(count(stage.semantic_layer) for stage in model.backbone.layers if stage.semantic_layer is not None)
    sd = model.state_dict()
    return {
        "total": count(model),
        "backbone": backbone,
        "backbone_semantic_layers": semantic,
        "backbone_without_semantic_layers": backbone - semantic,
        "pixel_decoder": count(model.sem_seg_head.pixel_decoder),
        "transformer_decoder": count(model.sem_seg_head.predictor),
        "semantic_head": count(model.semantic_head),
        "state_dict_entries": len(sd),
        "state_dict_numel_incl_buffers": sum(v.numel() for v in sd.values()),
    }


def keys_tsv(model) -> str:
    lines = ["key\tshape\tdtype"]
    for k, v in model.state_dict().items():
        lines.append(f"{k}\t{','.join(str(s) for s in v.shape)}\t{str(v.dtype).replace('torch.', '')}")
    return "\n".join(lines)


def count_flops(model, h: int, w: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x = torch.rand(3, h, w) * 255
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model.predict([x])
    return int(counter.get_total_flops())


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import build_model
    from ..weights import weights_summary

    if not args.config and not args.weights:
        raise CommandError("give --config and/or --weights")
    result: dict = {}
    if args.weights:
        result["weights"] = weights_summary(args.weights)
    if args.config:
        if args.flops:
            model = build_model(args.config, args.overrides)
        else:
            with torch.device("meta"):
                model = build_model(args.config, args.overrides)
        cfg = model.config
        if args.keys:
            print(keys_tsv(model))
            return 0
        result.update({
            "config": cfg.name or args.config,
            "num_classes": cfg.model.num_classes,
            "semantic_attention": list(model.backbone.semantic_attention),
            "params": parameter_counts(model),
        })
        if args.flops:
            size = args.size if len(args.size) == 2 else args.size * 2
            result["flops"] = {"input_hw": size, "total": count_flops(model, size[0], size[1])}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    if "weights" in result:
        w = result["weights"]
        print(f"weights     {w['path']}")
        print(f"format      {w['format']}   tensors {w['tensors']}   parameters {w['numel']:,}   dtypes "
              f"{', '.join(w['dtypes'])}")
        contents = {"semask-model": "SeMask Mask2Former model", "swin-backbone": "Swin backbone weights (for "
                    "training initialisation: model.weights=...)"}.get(w.get("contents"), "unrecognised tensors")
        print(f"contents    {contents}")
        if w.get("num_classes"):
            print(f"classes     {w['num_classes']}")
        if w.get("config"):
            print(f"config      {w['config']} (embedded)")
        for k, v in (w.get("metadata") or {}).items():
            if k != "contents":
                print(f"{k:11s} {v}")
        if w.get("iteration") is not None:
            print(f"iteration   {w['iteration']}")
    if "params" in result:
        print(f"config      {result['config']}   classes {result['num_classes']}   semantic attention "
              f"{'/'.join(result['semantic_attention'])}")
        for k, v in result["params"].items():
            print(f"  {k:34s} {v:>14,}")
        if "flops" in result:
            h, w = result["flops"]["input_hw"]
            print(f"  {'GFLOPs at ' + f'{h}x{w}':34s} {result['flops']['total'] / 1e9:>14,.1f}")
    return 0
