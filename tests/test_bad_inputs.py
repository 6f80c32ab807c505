"""Bad input through the command line: images, label maps, datasets, configs, weights and arguments.

Every case asserts the exit code, exactly one `semask CMD: error: ...` line naming the culprit (file or
config key) with what is wrong, and no traceback. A good part runs as real `python -m semask`
subprocesses (two at a time, started together), so that "no traceback on stderr" is what a user sees;
the others call `semask.cli.main` in this process, where an uncaught exception would fail the test.
Valid-but-unusual images (grey, RGBA, palette, 16-bit, CMYK, EXIF-rotated, in a folder with spaces and
unicode) must give the prediction of their plain RGB pixels. Config errors must come before any heavy
work: the model is never built, the weights never read, no image decoded.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import semask
from semask.cli import main

REPO = Path(__file__).resolve().parents[1]
NAMES = "a\nb\nc\nd\ne\n"  # five classes, as the tiny model
SMALL = {"data.min_size_train": [64], "data.max_size_train": 256, "data.crop_size": [64, 64],
         "data.size_divisibility": 64, "data.num_workers": 0, "data.min_size_test": 64, "test.eval_period": -1,
         "solver.ims_per_batch": 2, "loss.num_points": 128}


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the files


class Evil:
    """Unpickling this runs a command that leaves a marker file: loading must never do it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(path: Path, side: int = 30000) -> None:
    """A valid PNG header claiming side x side pixels (900 M for 30000) in a file of a few dozen bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


def ade_pair(root: Path, image: np.ndarray, label: np.ndarray | bytes | None, stem: str = "x",
             classes: str = NAMES) -> Path:
    """ROOT/images/validation/STEM.jpg and ROOT/annotations/validation/STEM.png (ADE20K layout)."""
    for sub in ("images", "annotations"):
        (root / sub / "validation").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / "validation" / f"{stem}.jpg", quality=95)
    target = root / "annotations" / "validation" / f"{stem}.png"
    if isinstance(label, bytes):
        target.write_bytes(label)
    elif label is not None:
        Image.fromarray(label).save(target)
    (root / "classes.txt").write_text(classes)
    return root


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """Weights, configs, images and datasets, good and bad, in one folder."""
    from conftest import tiny_config

    d = tmp_path_factory.mktemp("bad inputs")
    os.chmod(d, 0o755)  # the unreadable-file case runs without root's permission override
    torch.manual_seed(0)
    cfg = tiny_config(5, **SMALL)
    model = semask.build_model(cfg).eval()
    semask.save_weights(model, d / "tiny.safetensors", cfg)
    torch.save({"model": model.state_dict(), "iteration": 7}, d / "tiny.pth")
    (d / "tiny.yaml").write_text(cfg.to_yaml())

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "ok.png")
    (d / "zero.png").write_bytes(b"")
    Image.fromarray(rgb).save(d / "full.jpg", quality=95)
    data = (d / "full.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.png").write_text("a shopping list, not a picture\n")
    decompression_bomb(d / "bomb.png")
    Image.fromarray(rgb).save(d / "locked.png")
    os.chmod(d / "locked.png", 0)
    (d / "empty folder").mkdir()
    (d / "afile").write_text("a file where a folder is expected")

    data = (d / "tiny.pth").read_bytes()
    (d / "trunc.pth").write_bytes(data[: len(data) // 2])
    (d / "zero.pth").write_bytes(b"")
    (d / "random.safetensors").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Evil(d / "PWNED_pth")}, d / "evil.pth")
    (d / "evil.pkl").write_bytes(pickle.dumps({"model": {"w": np.zeros(1)}, "payload": Evil(d / "PWNED_pkl")}))

    (d / "typo.yaml").write_text("base: semask-tiny-ade20k\nmodel:\n  backbone:\n    embed_dims: 96\n")
    (d / "broken.yaml").write_text("model: [unclosed\n")

    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    lab = rng.integers(0, 6, (32, 40)).astype(np.uint8)  # ADE20K storage: 0 = other, k = class k-1
    out_of_range = lab.copy()
    out_of_range[3, 4] = 9
    ade_pair(d / "data" / "rgb label", img, np.dstack([lab] * 3))
    ade_pair(d / "data" / "values", img, out_of_range)
    ade_pair(d / "data" / "size", img, lab[:, :30])
    ade_pair(d / "data" / "no label", img, None)
    ade_pair(d / "data" / "zero label", img, b"")
    ade_pair(d / "data" / "six", img, lab, classes=NAMES + "f\n")
    for stem in ("t1", "t2"):
        ade_pair(d / "data" / "good", img, lab, stem)
    return d


# ----------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """One bad input: the command line ({d} = the fixture folder), the exit code, text the error line
    must contain (the culprit first), and whether it runs as a real subprocess."""
    kind: str
    argv: tuple[str, ...]
    code: int
    expect: tuple[str, ...]
    subprocess: bool = False


def predict(*args: str) -> tuple[str, ...]:
    return ("predict", "--weights", "{d}/tiny.safetensors", "--output", "{d}/out", *args)


def evaluate(data: str, *args: str) -> tuple[str, ...]:
    return ("eval", "--weights", "{d}/tiny.safetensors", "--data", "{d}/data/" + data, *args)


def train(*args: str, data: str = "{d}/data/good", output: str = "{d}/run") -> tuple[str, ...]:
    return ("train", "--config", "{d}/tiny.yaml", "--data", data, "--output", output, *args)


def with_weights(weights: str, *args: str, config: str | None = "{d}/tiny.yaml") -> tuple[str, ...]:
    cfg = ("--config", config) if config else ()
    return ("predict", "--weights", weights, *cfg, "{d}/ok.png", "--output", "{d}/out", *args)


CASES = [
    # images
    Case("image: missing file", predict("{d}/missing.png"), 1, ("{d}/missing.png", "file not found")),
    Case("image: zero bytes", predict("{d}/zero.png"), 1, ("{d}/zero.png", "empty (0 bytes)")),
    Case("image: truncated JPEG", predict("{d}/cut.jpg"), 1, ("{d}/cut.jpg", "truncated")),
    Case("image: text file named .png", predict("{d}/text.png"), 1, ("{d}/text.png", "not an image")),
    Case("image: decompression bomb", predict("{d}/bomb.png"), 1, ("{d}/bomb.png", "too large to decode safely")),
    # (a chmod 000 image is in the subprocess batch below: this process may be root, who reads it anyway)
    Case("image: folder without images", predict("{d}/empty folder"), 2, ("{d}/empty folder", "no input images")),
    Case("image: pattern matching nothing", predict("{d}/nothing/*.jpg"), 2, ("{d}/nothing/*.jpg", "matches no")),
    # label maps (lazy checks during evaluation)
    Case("label: RGB colour annotation", evaluate("rgb label"), 2,
         ("{d}/data/rgb label/annotations/validation/x.png", "single-channel", "got mode RGB"), True),
    Case("label: values out of range", evaluate("values"), 2,
         ("{d}/data/values/annotations/validation/x.png", "label value(s) 9 not accepted")),
    Case("label: size differs from the image", evaluate("size"), 2,
         ("{d}/data/size/annotations/validation/x.png", "label map is 30x32 but its image x.jpg is 40x32")),
    Case("label: missing for an image", evaluate("no label"), 2,
         ("{d}/data/no label/images/validation/x.jpg", "has no label map")),
    Case("label: zero bytes", evaluate("zero label"), 2,
         ("{d}/data/zero label/annotations/validation/x.png", "empty (0 bytes)")),
    # datasets
    Case("dataset: missing folder", train(data="{d}/data/nowhere"), 2, ("{d}/data/nowhere", "not found")),
    Case("dataset: class count differs from the config", train(data="{d}/data/six"), 2,
         ("{d}/data/six", "has 6 classes", "model.num_classes is 5", "set model.num_classes=6")),
    # configs
    Case("config: unknown key", predict("{d}/ok.png", "solver.nope=1"), 2,
         ("solver.nope", "unknown config key", "Accepted keys in 'solver'")),
    Case("config: wrong type", predict("{d}/ok.png", "solver.base_lr=fast"), 2,
         ("solver.base_lr", "expected a number, got 'fast'")),
    Case("config: heads do not divide the width", predict("{d}/ok.png", "model.backbone.num_heads=[1,3,2,4]"), 2,
         ("model.backbone.num_heads[1]=3", "does not divide the stage width 32")),
    Case("config: crop larger than the padding", train("data.crop_size=[96,96]"), 2,
         ("data.crop_size [96, 96]", "data.size_divisibility=64", "at least 96"), True),
    Case("config: non-finite learning rate", train("solver.base_lr=nan"), 2, ("solver.base_lr", "finite")),
    Case("config: unknown key in a YAML file", ("train", "--config", "{d}/typo.yaml", "--data", "{d}/data/good",
                                                "--output", "{d}/run"), 2,
         ("model.backbone.embed_dims", "Accepted keys in 'model.backbone': ", "embed_dim,")),
    Case("config: invalid YAML", ("info", "--config", "{d}/broken.yaml"), 2,
         ("{d}/broken.yaml", "not valid YAML at line 2, column 1: expected ',' or ']'")),
    Case("config: no such preset or file", ("info", "--config", "{d}/nope.yaml"), 2,
         ("{d}/nope.yaml", "neither a preset")),
    # weights
    Case("weights: missing file", with_weights("{d}/nope.pth"), 2, ("{d}/nope.pth", "not found")),
    Case("weights: a folder", with_weights("{d}/empty folder"), 2, ("{d}/empty folder", "is a folder")),
    Case("weights: zero bytes", with_weights("{d}/zero.pth"), 2, ("{d}/zero.pth", "empty (0 bytes)")),
    Case("weights: truncated .pth", with_weights("{d}/trunc.pth"), 2, ("{d}/trunc.pth", "truncated")),
    Case("weights: random bytes .safetensors", with_weights("{d}/random.safetensors", config=None), 2,
         ("{d}/random.safetensors", "cannot read safetensors file")),
    Case("weights: wrong architecture", with_weights("{d}/tiny.pth", "model.backbone.depths=[2,2,4,2]"), 2,
         ("{d}/tiny.pth", "weights do not fit the model (", " missing, 0 unexpected, 0 with another shape; e.g. "
          "backbone.layers.2.blocks.2.", "is missing from the file", "closest", "--debug")),
    Case("weights: wrong class count", with_weights("{d}/tiny.pth", "model.num_classes=7"), 2,
         ("{d}/tiny.pth", "trained for 5 classes, the config has 7: set model.num_classes=5",
          "fine-tune with a new head via `semask train ... model.weights={d}/tiny.pth`"), True),
    Case("weights: malicious .pth", with_weights("{d}/evil.pth"), 2,
         ("{d}/evil.pth", "refused to load", "system"), True),
    Case("weights: malicious .pkl", with_weights("{d}/evil.pkl"), 2, ("{d}/evil.pkl", "refused to load", "system")),
    Case("weights: .pth without a config", with_weights("{d}/tiny.pth", config=None), 2,
         ("{d}/tiny.pth", "holds no config", "--config")),
    # arguments and outputs
    Case("output: under a file", ("predict", "--weights", "{d}/tiny.safetensors", "{d}/ok.png", "--output",
                                  "{d}/afile/out"), 2, ("{d}/afile/out", "cannot write to the output folder")),
    Case("output: training into a file", train(output="{d}/afile"), 1,
         ("the output folder {d}/afile is a file",)),
    Case("argument: --opacity out of range", predict("{d}/ok.png", "--opacity", "1.5"), 2, ("--opacity", "[0, 1]")),
    Case("argument: --batch-size 0", predict("{d}/ok.png", "--batch-size", "0"), 2, ("--batch-size", ">= 1")),
]


def _fill(items, d: Path) -> list[str]:
    return [s.replace("{d}", str(d)) for s in items]


def _drop_file_permission_override() -> None:
    """In the child, before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set so
    that root, too, is refused a chmod 000 file (no effect for other users, who are refused anyway)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _run_subprocess(argv: list[str], drop: bool = False) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("SEMASK_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "semask", *argv], capture_output=True, text=True, env=env,
                          timeout=300, preexec_fn=_drop_file_permission_override if drop and os.geteuid() == 0
                          else None)
    return proc.returncode, proc.stderr


UNUSUAL = "odd inputs ü ñ 图"  # spaces and unicode in the folder name


@pytest.fixture(scope="module")
def unusual(fx) -> tuple[Path, dict[str, np.ndarray]]:
    """Images in unusual containers and the RGB pixels each one must be read as (built independently)."""
    folder = fx / UNUSUAL
    folder.mkdir()
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (36, 52, 3), dtype=np.uint8)
    grey = rgb[:, :, 1]
    expected = {}
    Image.fromarray(grey).save(folder / "grey.png")
    expected["grey"] = np.repeat(grey[:, :, None], 3, 2)
    Image.fromarray(np.dstack([rgb, np.full(grey.shape, 255, np.uint8)]), "RGBA").save(folder / "rgba.png")
    expected["rgba"] = rgb
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    pal.save(folder / "palette.png")
    expected["palette"] = np.asarray(pal.getpalette()[: 3 * 32], np.uint8).reshape(32, 3)[np.asarray(pal)]
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "sixteen bit.png")  # 16-bit, full range
    expected["sixteen bit"] = np.repeat(grey[:, :, None], 3, 2)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: display rotated 90 degrees clockwise
    Image.fromarray(rgb).save(folder / "rotated.png", exif=exif)
    expected["rotated"] = np.rot90(rgb, k=-1)
    cmyk = np.dstack([255 - rgb, np.zeros(grey.shape, np.uint8)])  # C,M,Y = 255 - R,G,B and K = 0
    Image.fromarray(cmyk, "CMYK").save(folder / "cmyk.tif")
    expected["cmyk"] = rgb
    return folder, expected


class Results:
    """(exit code, stderr) of the subprocess runs by kind, waiting for each one when asked."""

    def __init__(self, futures: dict) -> None:
        self.futures = futures

    def __getitem__(self, kind: str) -> tuple[int, str]:
        return self.futures[kind].result(timeout=600)


@pytest.fixture(scope="module")
def subprocess_results(fx, unusual):
    """Every subprocess case (and one good run on the unusual images), two at a time, started at once
    so that the in-process cases run meanwhile."""
    jobs = {c.kind: (_fill(c.argv, fx), False) for c in CASES if c.subprocess}
    jobs["image batch"] = (_fill(("predict", "--weights", "{d}/tiny.safetensors", "--output", "{d}/batch out",
                                  *(f"{{d}}/{name}" for name in IMAGE_BATCH)), fx), True)
    jobs["good: unusual images"] = (_fill(("predict", "--weights", "{d}/tiny.safetensors", str(unusual[0]),
                                           "--output", "{d}/unusual out (subprocess)"), fx), False)
    pool = ThreadPoolExecutor(max_workers=2)
    yield Results({kind: pool.submit(_run_subprocess, argv, drop) for kind, (argv, drop) in jobs.items()})
    pool.shutdown(wait=True)


def check_error_output(case: Case, code: int, err: str, fx: Path) -> None:
    command = case.argv[0]
    assert code == case.code, err
    assert "Traceback" not in err and not any(line.startswith('  File "') for line in err.splitlines()), err
    errors = [line for line in err.splitlines() if line.startswith(f"semask {command}: error:")]
    assert len(errors) == 1, err  # one line, naming the culprit
    for fragment in _fill(case.expect, fx):
        assert fragment in errors[0], (fragment, errors[0])


@pytest.mark.parametrize("case", CASES, ids=[c.kind for c in CASES])
def test_bad_input_gives_one_line_naming_the_culprit(case: Case, fx, subprocess_results, capsys):
    if case.subprocess:
        code, err = subprocess_results[case.kind]
    else:
        capsys.readouterr()
        code = main(_fill(case.argv, fx))
        err = capsys.readouterr().err
    check_error_output(case, code, err, fx)


IMAGE_BATCH = {"missing.png": "file not found", "zero.png": "empty (0 bytes)", "cut.jpg": "truncated",
               "text.png": "not an image", "bomb.png": "too large to decode safely",
               "locked.png": "cannot open the file (Permission denied)", "ok.png": None}


def test_bad_images_in_one_subprocess_each_get_their_line(fx, subprocess_results):
    """Six bad images and a good one in one `semask predict`: one error line per bad file, a summary,
    exit code 1, and the good image is still segmented."""
    code, err = subprocess_results["image batch"]
    assert code == 1 and "Traceback" not in err, err
    lines = err.splitlines()
    for name, fragment in IMAGE_BATCH.items():
        mine = [line for line in lines if line.startswith(f"semask predict: error: {fx / name}:")]
        if fragment is None:
            assert not mine, err
        else:
            assert len(mine) == 1 and fragment in mine[0], (name, err)
    assert lines[-1] == "semask predict: 6 of 7 input(s) could not be read", err
    assert sorted(p.name for p in (fx / "batch out").iterdir()) == ["ok.png", "ok_overlay.png"]


def test_the_cases_cover_every_area():
    areas = {c.kind.split(":")[0] for c in CASES}
    assert {"image", "label", "dataset", "config", "weights", "output", "argument"} <= areas
    assert len(CASES) >= 20 and sum(c.subprocess for c in CASES) >= 4


def test_no_pickled_code_ran(fx, subprocess_results):
    assert subprocess_results["weights: malicious .pth"][0] == 2
    assert not (fx / "PWNED_pth").exists() and not (fx / "PWNED_pkl").exists()
    assert (fx / "locked.png").stat().st_mode & 0o777 == 0


# ----------------------------------------------------------------------------- valid but unusual images


def test_unusual_images_give_the_prediction_of_their_pixels(fx, unusual, subprocess_results, capsys):
    from semask.predictor import Predictor

    folder, expected = unusual
    out = fx / "unusual out"
    assert main(["predict", "--weights", str(fx / "tiny.safetensors"), str(folder), "--output", str(out)]) == 0
    code, err = subprocess_results["good: unusual images"]
    assert code == 0 and "error" not in err, err
    model = semask.load_model(None, fx / "tiny.safetensors")
    predictor = Predictor(model)
    for stem, pixels in expected.items():
        want = predictor.predict(pixels).label
        for where in (out, fx / "unusual out (subprocess)"):
            got = np.asarray(Image.open(where / f"{stem}.png"))
            assert got.shape == pixels.shape[:2], stem
            np.testing.assert_array_equal(got, want, err_msg=f"{stem} in {where.name}")
    assert np.asarray(Image.open(out / "rotated.png")).shape == (52, 36)  # EXIF rotation applied


# ----------------------------------------------------------------------------- the weights report


def test_mismatch_message_is_one_line_and_names_the_preset_that_fits(fx, capsys):
    from semask.weights import _preset_shapes, mismatch_error

    tiny = {k: tuple(v.shape) for k, v in torch.load(fx / "tiny.pth", weights_only=True)["model"].items()}
    err = mismatch_error(tiny, _preset_shapes("semask-tiny-ade20k"), Path("swin_t.pth"))
    assert "\n" not in str(err)
    assert str(err).startswith("swin_t.pth: weights do not fit the model (")
    assert "These weights fit the preset 'semask-tiny-ade20k': use --config semask-tiny-ade20k." in str(err)
    assert "unexpected in the file:" in err.details and len(err.details.splitlines()) > 500  # every key
    # --debug prints the whole report (every key) and the traceback
    argv = _fill(with_weights("{d}/tiny.pth", "model.backbone.depths=[2,2,4,2]"), fx)
    with pytest.raises(semask.WeightsError):
        main(["--debug", *argv])
    report = capsys.readouterr().err
    from conftest import tiny_config

    from semask.modeling import build_from_config

    with torch.device("meta"):
        deeper = build_from_config(tiny_config(5, **SMALL, **{"model.backbone.depths": [2, 2, 4, 2]})).state_dict()
    missing = set(deeper) - set(torch.load(fx / "tiny.pth", weights_only=True)["model"])
    assert missing and all(f"    {k}\n" in report for k in missing)  # every key, none left out
    assert "missing in the file:" in report and "more" not in report


# ----------------------------------------------------------------------------- config errors come first


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Building a model, reading weights or decoding an image fails the test."""
    import semask.data.checks
    import semask.modeling
    import semask.weights

    def forbidden(*args, **kwargs):
        raise AssertionError("heavy work started before the config was checked")

    monkeypatch.setattr(semask.modeling, "build_from_config", forbidden)
    monkeypatch.setattr(semask.weights, "read_checkpoint", forbidden)
    monkeypatch.setattr(semask.data.checks, "read_image", forbidden)
    monkeypatch.setattr(semask.data.checks, "read_label", forbidden)


@pytest.mark.parametrize("argv, fragment", [
    (predict("{d}/ok.png", "model.decoder.nheads=5"), "model.decoder.nheads=5"),
    (with_weights("{d}/tiny.pth", "data.crop_size=[128,128]"), "data.crop_size"),
    (evaluate("good", "model.num_classes=6"), "has 5 classes"),
    (evaluate("good", "data.on_error=ignore"), "data.on_error"),
    (train(data="{d}/data/six"), "has 6 classes"),
    (train("solver.ims_per_batch=3", "solver.grad_accum_steps=2"), "solver.ims_per_batch=3"),
    (train("model.backbone.semantic_attention=[windowed,local,windowed,global]"), "semantic_attention"),
], ids=["predict-heads", "predict-crop", "eval-classes", "eval-on_error", "train-classes", "train-batch",
        "train-semantic"])
def test_config_errors_come_before_any_heavy_work(argv, fragment, fx, no_heavy_work, capsys):
    code = main(_fill(argv, fx))
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err
