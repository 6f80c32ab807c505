"""Inputs of any size and format: odd sizes, grey/RGBA/palette/16-bit/CMYK/EXIF-rotated images, batches
of different sizes; the predicted label map always has the input image's size. bf16 autocast runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from semask import Predictor
from semask.io import ImageReadError, read_image, read_label


@pytest.fixture(scope="module")
def predictor():
    from tests.conftest import Golden, require_reference

    model = Golden("golden_mini_ade", require_reference("golden_mini_ade")).model()
    return Predictor(model)


@pytest.mark.parametrize("hw", [(33, 47), (1, 1), (5, 200), (97, 13), (64, 64), (130, 31)])
def test_label_map_has_input_size(predictor, hw):
    img = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    pred = predictor.predict(img, return_scores=True)
    assert pred.label.shape == hw
    assert pred.scores.shape == (150, *hw)
    assert np.array_equal(pred.label, pred.scores.argmax(0))


def _rgb(seed=0, hw=(40, 56)):
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def test_image_modes_are_read_correctly(tmp_path, predictor):
    rgb = _rgb()
    grey = rgb[:, :, 0]
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=64).save(tmp_path / "pal.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)

    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, 2))
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "g16.png"), np.repeat(grey[:, :, None], 3, 2))
    pal = read_image(tmp_path / "pal.png")
    assert pal.shape == rgb.shape and np.abs(pal.astype(int) - rgb).mean() < 40
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.shape == rgb.shape and np.abs(cmyk.astype(int) - rgb).mean() < 12
    # the same pixels give the same prediction whatever the container
    ref = predictor(rgb)
    for name in ("rgb.png", "rgba.png"):
        assert np.array_equal(predictor(tmp_path / name), ref)
    assert np.array_equal(predictor(tmp_path / "g16.png"), predictor(tmp_path / "grey.png"))


def test_exif_orientation_is_applied(tmp_path, predictor):
    rgb = _rgb(1, (30, 50))
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    im.save(tmp_path / "rot.jpg", exif=exif, quality=100)
    arr = read_image(tmp_path / "rot.jpg")
    assert arr.shape == (50, 30, 3)
    assert predictor(tmp_path / "rot.jpg").shape == (50, 30)


def test_pil_and_numpy_variants(predictor):
    rgb = _rgb(2)
    ref = predictor(rgb)
    assert np.array_equal(predictor(Image.fromarray(rgb)), ref)
    assert np.array_equal(predictor(rgb.astype(np.float32) / 255.0), ref)
    assert np.array_equal(predictor(np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])), ref)
    assert predictor(rgb[:, :, 0]).shape == rgb.shape[:2]


def test_batch_of_different_sizes(predictor):
    images = [_rgb(3, (20, 70)), _rgb(4, (65, 33)), _rgb(5, (32, 32))]
    predictor.batch_size = 3
    try:
        preds = predictor.predict_batch(images)
    finally:
        predictor.batch_size = 1
    assert [p.label.shape for p in preds] == [(20, 70), (65, 33), (32, 32)]


def test_test_size_resizes_and_maps_back(golden_ade):
    p = Predictor(golden_ade.model(), test_size=64, max_size=100)
    img = _rgb(6, (90, 123))
    pred = p.predict(img, return_scores=True)
    assert pred.label.shape == (90, 123) and pred.scores.shape == (150, 90, 123)


def test_bf16_autocast_runs_and_is_close(golden_ade):
    model = golden_ade.model()
    img = golden_ade.expected["image"]
    ref = golden_ade.expected["sem_seg"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        scores = model.predict([img])[0]
    assert scores.shape == ref.shape and torch.isfinite(scores.float()).all()
    # bf16 keeps ~3 significant digits: close, not exact
    assert (scores.float() - ref).abs().mean() < 0.05


@pytest.mark.parametrize("content, fragment", [(b"", "empty"), (b"not an image at all", "not an image"),
                                              (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "")])
def test_unreadable_images_raise_a_clear_error(tmp_path, content, fragment):
    path = tmp_path / "bad image ü.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_truncated_jpeg_is_refused(tmp_path):
    Image.fromarray(_rgb(7, (64, 64))).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        read_image(tmp_path / "cut.jpg")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import semask.io as io

    monkeypatch.setattr(io, "MAX_IMAGE_PIXELS", 1000)
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "big.png")


def test_read_label_refuses_rgb(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "lab.png")
    with pytest.raises(ImageReadError, match="single-channel"):
        read_label(tmp_path / "lab.png")
    Image.fromarray(np.array([[0, 3], [255, 7]], np.uint8)).save(tmp_path / "ok.png")
    assert read_label(tmp_path / "ok.png").tolist() == [[0, 3], [255, 7]]
