"""The Python predictor: inputs of every kind, label maps and scores, batching, test size, TTA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import semask
from semask.engine.tta import TTAPredictor
from semask.predictor import Predictor, as_rgb_array
from semask.preprocess import resize_image, shortest_edge_size


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    from conftest import tiny_config

    torch.manual_seed(0)
    return semask.build_model(tiny_config(num_classes=5, **{"test.aug_min_sizes": [48, 64]})).eval()


def rgb(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def direct(model, image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.predict([torch.from_numpy(image).permute(2, 0, 1).float()])[0]


def test_label_and_scores_of_one_image(model, tmp_path):
    image = rgb(0, 64, 80)
    pred = Predictor(model).predict(image, return_scores=True)
    ref = direct(model, image)
    assert pred.scores.shape == (5, 64, 80) and pred.scores.dtype == np.float32
    np.testing.assert_allclose(pred.scores, ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pred.label, ref.argmax(0).numpy())
    assert pred.label.dtype == np.uint8
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    np.testing.assert_array_equal(Predictor(model)(path), pred.label)  # a path works the same
    np.testing.assert_array_equal(Predictor(model)(Image.open(path)), pred.label)
    assert Predictor(model).predict(image).scores is None


def test_batching_groups_equal_sizes_and_keeps_order(model):
    images = [rgb(1, 64, 80), rgb(2, 80, 64), rgb(3, 64, 80), rgb(4, 64, 80), rgb(5, 80, 64)]
    one = Predictor(model, batch_size=1).scores(images)
    calls = []
    original = model.predict

    def spy(batch, output_sizes=None):
        calls.append(tuple(batch.shape) if isinstance(batch, torch.Tensor) else [tuple(t.shape) for t in batch])
        return original(batch, output_sizes=output_sizes)

    model.predict = spy
    try:
        many = Predictor(model, batch_size=2).scores(images)
    finally:
        del model.predict
    assert sorted(calls) == sorted([(2, 3, 64, 80), (1, 3, 64, 80), (2, 3, 80, 64)])
    for a, b, im in zip(one, many, images):
        assert b.shape == (5,) + im.shape[:2]
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_test_size_resizes_and_maps_back(model):
    image = rgb(6, 70, 100)
    got = Predictor(model, test_size=64, max_size=90).scores([image])[0]
    h, w = shortest_edge_size(70, 100, 64, 90)
    assert (h, w) == (63, 90)  # the longer side is capped
    x = torch.from_numpy(np.array(resize_image(image, (h, w)))).permute(2, 0, 1).float()
    with torch.no_grad():
        ref = model.predict([x], output_sizes=[(70, 100)])[0]
    assert got.shape == (5, 70, 100)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_tta_option(model):
    image = rgb(7, 64, 80)
    expected = TTAPredictor(model, (48, 64), model.config.test.aug_max_size, True).scores(image)
    got = Predictor(model, tta=True).predict(image, return_scores=True)
    np.testing.assert_allclose(got.scores, expected.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(got.scores, direct(model, image).numpy(), atol=1e-4)
    custom = TTAPredictor(model, (64,), 1000, flip=False)
    np.testing.assert_allclose(Predictor(model, tta=custom).predict(image, True).scores,
                               direct(model, image).numpy(), rtol=1e-5, atol=1e-6)


def test_from_config_loads_weights(model, tmp_path):
    path = semask.save_weights(model, tmp_path / "m.safetensors", model.config)
    p = Predictor.from_config(None, path, test_size="config", tta=False)
    assert p.test_size == model.config.data.min_size_test
    image = rgb(8, 64, 64)
    np.testing.assert_allclose(p.predict(image, True).scores, Predictor(model, test_size=p.test_size)
                               .predict(image, True).scores, rtol=1e-5, atol=1e-6)


def test_as_rgb_array_conversions():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb_array(grey).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0] = 9
    assert as_rgb_array(rgba)[0, 0].tolist() == [9, 0, 0]
    assert as_rgb_array(np.ones((2, 2, 3), np.float32))[0, 0].tolist() == [255, 255, 255]
    assert as_rgb_array(np.full((2, 2), 65535, np.uint16))[0, 0].tolist() == [255, 255, 255]
    assert as_rgb_array(np.ones((2, 2), bool))[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ValueError, match="shape"):
        as_rgb_array(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(TypeError):
        as_rgb_array(3)


def test_paths_folders_and_globs(model, tmp_path):
    from semask.io import ImageReadError
    from semask.predictor import expand_image_paths

    (tmp_path / "d" / "sub").mkdir(parents=True)
    arrays = {"d/x.png": rgb(9, 64, 64), "d/sub/y.png": rgb(10, 64, 80), "z.png": rgb(11, 64, 64)}
    for name, arr in arrays.items():
        Image.fromarray(arr).save(tmp_path / name)
    (tmp_path / "d" / "readme.txt").write_text("not an image")
    paths = expand_image_paths([tmp_path / "d", str(tmp_path / "*.png"), tmp_path / "z.png"])
    assert paths == [tmp_path / "d" / "sub" / "y.png", tmp_path / "d" / "x.png", tmp_path / "z.png"]
    with pytest.raises(ImageReadError, match="matches no file"):
        expand_image_paths([str(tmp_path / "*.jpg")])
    results = list(Predictor(model, batch_size=2).predict_paths([tmp_path / "d", tmp_path / "z.png"], True))
    assert [p for p, _ in results] == paths
    for path, pred in results:
        arr = arrays[str(path.relative_to(tmp_path))]
        np.testing.assert_allclose(pred.scores, direct(model, arr).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(pred.label, pred.scores.argmax(0))
