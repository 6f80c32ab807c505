"""The `semask` command line: a thin layer over the public API, one module per command.

Every command module defines `add_parser(subparsers)` and `run(args) -> int`, and keeps heavy
imports inside `run` so that `semask --help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# (command, module) in the order `semask --help` lists them
COMMANDS = [
    ("demo", "demo"),
    ("predict", "predict"),
    ("eval", "evaluate"),
    ("train", "train"),
    ("info", "info"),
    ("convert", "convert"),
    ("export", "export"),
    ("benchmark", "benchmark"),
    ("make-synthetic", "make_synthetic"),
    ("check-data", "check_data"),
]


class CommandError(Exception):
    """A user-facing failure of a command: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..config import ConfigError
    from ..io import ImageReadError
    from ..weights import WeightsError

    errors: list[type[BaseException]] = [CommandError, ConfigError, WeightsError, ImageReadError,
                                         FileNotFoundError, NotADirectoryError, PermissionError]
    try:
        from ..data import DataError  # type: ignore[attr-defined]

        errors.append(DataError)
    except ImportError:
        pass
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semask",
        description="SeMask Mask2Former semantic segmentation: predict, evaluate, train, convert, export.",
        epilog="Run `semask COMMAND --help` for the options and an example of each command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on the log")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS:
        try:
            mod = importlib.import_module(f".{module}", __name__)
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{module}":
                continue
            raise
        mod.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # positionals after options (`predict IMG --output DIR KEY=VALUE`): commands that accept them
        # name their list with set_defaults(trailing=...)
        trailing = getattr(args, "trailing", None)
        if trailing is None or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        setattr(args, trailing, list(getattr(args, trailing) or []) + extra)
    if not args.command:
        parser.print_help()
        return 1
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    debug = args.debug or os.environ.get("SEMASK_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("semask: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        details = getattr(e, "details", "")  # a longer report (e.g. every mismatching weights key)
        if debug:
            if details:
                print(details, file=sys.stderr)
            raise
        msg = str(e) if not isinstance(e, (FileNotFoundError, PermissionError)) or not e.filename else \
            f"{e.filename}: {e.strerror}"
        msg = msg.replace("\n", " ")  # one line, whatever the message
        if details:
            msg += " (`semask --debug ...` lists every difference)"
        print(f"semask {args.command}: error: {msg}", file=sys.stderr)
        return getattr(e, "code", 2)


def add_common_model_args(p: argparse.ArgumentParser, weights_required: bool = True) -> None:
    """--config / --weights / --device and trailing KEY=VALUE overrides, shared by several commands."""
    p.add_argument("--config", "-c", help="preset name (e.g. semask-tiny-ade20k), our YAML, or an original "
                                          "detectron2 YAML; optional when the weights file embeds its config")
    p.add_argument("--weights", "-w", required=weights_required,
                   help="weights file: detectron2 model_final.pth, a state_dict .pth, or our .safetensors")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")


def check_overrides(items: list[str]) -> list[str]:
    """Trailing positional arguments must all be KEY=VALUE config overrides."""
    bad = [o for o in items if "=" not in o]
    if bad:
        raise CommandError(f"unexpected argument(s) {' '.join(bad)}; config overrides look like KEY=VALUE")
    return items
