"""`semask predict`: files, folders and globs in; palette PNG, overlay and scores out; bad inputs skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import semask
from semask.cli import main
from semask.io import read_image
from semask.predictor import Predictor


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from conftest import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config(num_classes=5)
    model = semask.build_model(cfg).eval()
    path = semask.save_weights(model, tmp_path_factory.mktemp("w") / "tiny.safetensors", cfg)
    return path, model


def rgb(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(rgb(0, 64, 80)).save(folder / "a.png")
    Image.fromarray(rgb(1, 80, 64)).save(folder / "sub" / "b.jpg", quality=95)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image, not an image extension")
    more = tmp_path / "more"
    more.mkdir()
    Image.fromarray(rgb(2, 64, 64)).save(more / "c.png")
    Image.fromarray(rgb(3, 72, 64)).save(more / "a.png")  # same stem as imgs/a.png
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb(4, 64, 96)).save(tmp_path / "e.jpg", exif=exif, quality=95)
    return tmp_path


def run_predict(weights_path, args, capsys):
    rc = main(["predict", "--weights", str(weights_path), *args])
    return rc, capsys.readouterr()


def test_outputs_folders_globs_and_a_bad_input(weights, inputs, capsys):
    path, model = weights
    out = inputs / "out"
    rc, cap = run_predict(path, [str(inputs / "imgs"), str(inputs / "more" / "*.png"), str(inputs / "e.jpg"),
                                 str(inputs / "missing.jpg"), "--output", str(out), "--save-scores"], capsys)
    assert rc == 1
    assert "broken.png" in cap.err and "missing.jpg" in cap.err and "2 of 7 input(s)" in cap.err
    sources = {"a": inputs / "imgs" / "a.png", "b": inputs / "imgs" / "sub" / "b.jpg",
               "a_1": inputs / "more" / "a.png", "c": inputs / "more" / "c.png", "e": inputs / "e.jpg"}
    assert sorted(p.name for p in out.glob("*.png") if "_overlay" not in p.name) == sorted(f"{s}.png" for s in sources)
    predictor = Predictor(model)
    for stem, src in sources.items():
        image = read_image(src)
        h, w = image.shape[:2]
        label = Image.open(out / f"{stem}.png")
        assert label.mode == "P" and label.size == (w, h)
        expected = predictor.predict(image, return_scores=True)
        np.testing.assert_array_equal(np.asarray(label), expected.label)
        scores = np.load(out / f"{stem}.scores.npy")
        assert scores.shape == (5, h, w) and scores.dtype == np.float32
        np.testing.assert_allclose(scores, expected.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(scores.argmax(0), np.asarray(label))
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size[0] > w and overlay.size[1] == h
    assert Image.open(out / "e.png").size == (64, 96)  # EXIF rotation applied: 96 wide -> 96 tall


def test_batch_size_tta_and_overrides(weights, inputs, capsys):
    path, _ = weights
    one, two, tta = inputs / "one", inputs / "two", inputs / "tta"
    folder = str(inputs / "more")
    assert run_predict(path, [folder, "--output", str(one)], capsys)[0] == 0
    assert run_predict(path, [folder, "--output", str(two), "--batch-size", "2"], capsys)[0] == 0
    for p in one.glob("*.png"):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), np.asarray(Image.open(two / p.name)))
    # TTA with one scale equal to the image's shorter side and no flip is the plain prediction
    rc, _ = run_predict(path, [str(inputs / "more" / "c.png"), "--output", str(tta), "--tta",
                               "test.aug_min_sizes=[64]", "test.aug_flip=false"], capsys)
    assert rc == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tta / "c.png")), np.asarray(Image.open(one / "c.png")))


def test_user_errors_are_one_line(weights, inputs, capsys):
    path, _ = weights
    rc, cap = run_predict(path, [str(inputs / "nothing" / "*.jpg"), "--output", str(inputs / "o")], capsys)
    assert rc == 2 and "matches no file" in cap.err and "Traceback" not in cap.err
    rc, cap = run_predict(path, [str(inputs / "e.jpg"), "--output", str(inputs / "o"), "--opacity", "2"], capsys)
    assert rc == 2 and "--opacity" in cap.err
    rc, cap = run_predict(path, [str(inputs / "e.jpg"), "--output", str(inputs / "o"), "model.nope=1"], capsys)
    assert rc == 2 and "model.nope" in cap.err and len(cap.err.strip().splitlines()) == 1
