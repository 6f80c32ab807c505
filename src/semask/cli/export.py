"""`semask export`: the inference graph as ONNX, image in, per-class scores out.

Input "image": float32 (B, 3, H, W), RGB in 0..255 (or already normalised with --normalized-input);
output "scores": float32 (B, K, H, W), the per-class scores of `semask predict --save-scores` (argmax
gives the label map). Without --dynamic the graph takes exactly --size and --batch; with --dynamic
height, width and batch are free. Needs `pip install semask[export]` to check the result (--verify).
"""

from __future__ import annotations

import argparse

EXAMPLE = """examples:
  semask export --config semask-large-ade20k --weights model_final.pth --format onnx semask_l.onnx --size 640 640
  semask export --weights semask_l.safetensors --format onnx semask_l_dyn.onnx --dynamic --verify
  python -c "import onnxruntime as ort, numpy as np; s = ort.InferenceSession('semask_l_dyn.onnx'); \\
print(s.run(None, {'image': np.random.rand(1, 3, 480, 640).astype('float32') * 255})[0].shape)"
"""


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    from . import add_common_model_args

    p = sub.add_parser(name, help="export the inference graph (image -> per-class scores) to ONNX",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_model_args(p)
    p.add_argument("output", metavar="OUT.onnx", help="output file")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    p.add_argument("--size", type=int, nargs="+", default=[512], metavar="N",
                   help="input size of a static graph: N (square) or H W (default 512)")
    p.add_argument("--batch", type=int, default=1, help="batch size of a static graph (default 1)")
    p.add_argument("--dynamic", action="store_true", help="free height, width and batch size")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the newest the exporter has)")
    p.add_argument("--normalized-input", action="store_true",
                   help="the graph takes images already normalised with the config's mean/std")
    p.add_argument("--verify", action="store_true",
                   help="run the file with onnxruntime on a random image and compare with PyTorch")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import DEFAULT_OPSET, export_onnx, verify_onnx
    from ..weights import load_model
    from . import CommandError

    if args.device != "cpu":
        raise CommandError("export runs on the CPU; leave out --device")
    if len(args.size) not in (1, 2) or min(args.size) < 1:
        raise CommandError(f"--size takes N or H W (positive), got {' '.join(map(str, args.size))}")
    if args.batch < 1:
        raise CommandError(f"--batch must be >= 1, got {args.batch}")
    size = (args.size[0], args.size[-1])
    model = load_model(args.config, args.weights, "cpu", args.overrides)
    try:
        result = export_onnx(model, args.output, size=size, dynamic=args.dynamic,
                             opset=args.opset or DEFAULT_OPSET, normalized_input=args.normalized_input,
                             batch=args.batch)
    except (ValueError, ImportError) as e:
        raise CommandError(str(e)) from None
    shape = "B x 3 x H x W (dynamic)" if result.dynamic else f"{args.batch} x 3 x {size[0]} x {size[1]}"
    print(f"wrote {result.path} (opset {result.opset}): image {shape} -> scores with {result.num_classes} classes")
    if args.verify:
        try:
            h, w = result.input_size if not result.dynamic else (size[0], size[1])
            image = torch.rand(1 if result.dynamic else args.batch, 3, h, w) * 255
            if args.normalized_input:
                image = (image - model.pixel_mean) / model.pixel_std
            diff = verify_onnx(model, result.path, image, args.normalized_input)
        except ImportError as e:
            raise CommandError(str(e)) from None
        print(f"onnxruntime vs PyTorch on a random {h}x{w} image: max abs difference {diff:.2e}")
        if not diff < 1e-3:
            raise CommandError(f"the exported graph differs from PyTorch by {diff:.2e} (more than 1e-3)", code=1)
    return 0
