"""Multi-scale + flip TTA: equal to the average of the augmented predictions computed by hand here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import semask
from semask.engine.tta import TTAPredictor


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    from conftest import tiny_config

    torch.manual_seed(0)
    m = semask.build_model(tiny_config(num_classes=5))
    return m.eval()


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    im = rng.integers(0, 256, (64, 90, 3), dtype=np.uint8)
    im[:, :30] //= 3  # left/right asymmetry, so a flip changes the input
    return im


def augmented_by_hand(model, image: np.ndarray, sizes, max_size) -> dict:
    """{(size, flipped): scores}: resize with PIL (shorter side s, longer side capped), predict at the
    original size, flip the scores of flipped inputs back."""
    h, w = image.shape[:2]
    out = {}
    for s in sizes:
        scale = s / min(h, w)
        nh, nw = h * scale, w * scale
        if max(nh, nw) > max_size:
            nh, nw = nh * max_size / max(nh, nw), nw * max_size / max(nh, nw)
        nh, nw = int(nh + 0.5), int(nw + 0.5)
        resized = np.array(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)) if (nh, nw) != (h, w) else image
        for arr, flipped in ((resized, False), (resized[:, ::-1], True)):
            x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
            with torch.no_grad():
                pred = model.predict([x], output_sizes=[(h, w)])[0]
            out[(s, flipped)] = torch.flip(pred, dims=[2]) if flipped else pred
    return out


def mean(preds: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(preds).mean(0)


def test_tta_is_the_mean_of_the_augmented_predictions(model, image):
    sizes, max_size = (48, 64, 80), 100  # 80 -> 80x113 exceeds 100: capped to 71x100
    each = augmented_by_hand(model, image, sizes, max_size)
    ref = mean(list(each.values()))
    got = TTAPredictor(model, sizes, max_size, flip=True).scores(image)
    assert got.shape == (5, 64, 90)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    no_flip = mean([v for (s, f), v in each.items() if not f])
    torch.testing.assert_close(TTAPredictor(model, sizes, max_size, flip=False).scores(image), no_flip,
                               rtol=1e-5, atol=1e-6)
    # the flips and the scales matter: dropping them gives something else
    assert (no_flip - ref).abs().max() > 1e-4
    assert (mean([each[(48, False)], each[(48, True)]]) - ref).abs().max() > 1e-4


def test_one_scale_without_flip_is_single_scale(model, image):
    from semask.config import load_config
    from semask.engine.evaluator import EvalItems

    for size in (64, 50):  # the image's own size (no resize) and a real resize
        tta = TTAPredictor(model, (size,), 2048, flip=False)
        cfg = load_config(model.config, {"data.min_size_test": size})

        class One:
            def load(self, i):
                from types import SimpleNamespace
                return SimpleNamespace(image=image, label=np.zeros(image.shape[:2], np.int64), path="x.jpg",
                                       label_path="x.png")

        # the evaluator's single-scale input for this image, predicted back at the original size
        _, x, *_ = EvalItems(One(), [0], cfg.data.min_size_test, cfg.data.max_size_test, raw=False)[0]
        with torch.no_grad():
            single = model.predict([x], output_sizes=[image.shape[:2]])[0]
        torch.testing.assert_close(tta.scores(image), single, rtol=0, atol=0)


def test_augmentations_run_one_at_a_time(model, image):
    calls = []
    original = model.predict

    def spy(images, output_sizes=None):
        calls.append(([tuple(t.shape) for t in images], list(output_sizes)))
        return original(images, output_sizes=output_sizes)

    model.predict = spy
    try:
        TTAPredictor(model, (48, 64), 2048, flip=True).scores(image)
    finally:
        del model.predict
    assert len(calls) == 4
    assert all(len(shapes) == 1 and sizes == [(64, 90)] for shapes, sizes in calls)
    assert [shapes[0][1:] for shapes, _ in calls] == [(48, 68), (48, 68), (64, 90), (64, 90)]


def test_from_config_and_bad_arguments(model):
    from semask.config import load_config

    cfg = load_config(model.config, {"test.aug_min_sizes": [32, 64], "test.aug_max_size": 100,
                                     "test.aug_flip": False})
    tta = TTAPredictor.from_config(model, cfg)
    assert (tta.min_sizes, tta.max_size, tta.flip) == ((32, 64), 100, False)
    assert tta.augmentations() == [(32, False), (64, False)]
    assert TTAPredictor(model, (8,), 10).augmentations() == [(8, False), (8, True)]
    with pytest.raises(ValueError, match="at least one"):
        TTAPredictor(model, (), 100)
    with pytest.raises(ValueError, match="uint8"):
        TTAPredictor(model, (8,), 100).scores(np.zeros((4, 4), np.float32))


def test_default_sizes_follow_the_paper_ratios():
    cfg = semask.load_config("semask-tiny-ade20k")
    base = cfg.data.min_size_test
    assert cfg.test.aug_min_sizes == tuple(int(r * base) for r in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75))
    assert cfg.test.aug_flip
