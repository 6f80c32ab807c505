"""Training transforms: determinism, sizes, the crop's category-area constraint, padding, flips, and
property tests (hypothesis) that image and label stay aligned and label values stay valid."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semask.config import ConfigError, DataConfig
from semask.data.transforms import TrainTransform, crop_window, resize_label_nearest

IGNORE = 255


def data_cfg(**kw) -> DataConfig:
    return dataclasses.replace(DataConfig(), **kw)


def colour_of(label: np.ndarray) -> np.ndarray:
    """An image whose colour encodes the label: class c -> (30c + 10, 200 - 25c, 60); ignore -> (250, 250, 0)."""
    lab = label.astype(np.int64)
    img = np.stack([30 * lab + 10, 200 - 25 * lab, np.full_like(lab, 60)], -1)
    img[lab == IGNORE] = (250, 250, 0)
    return img.clip(0, 255).astype(np.uint8)


def blocks(h: int, w: int, grid: np.ndarray) -> np.ndarray:
    gh, gw = grid.shape
    ys = np.minimum(np.arange(h) * gh // h, gh - 1)
    xs = np.minimum(np.arange(w) * gw // w, gw - 1)
    return grid[ys[:, None], xs[None, :]]


def sample_pair(h: int = 48, w: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    grid = np.random.default_rng(seed).integers(0, 5, (3, 4))
    label = blocks(h, w, grid)
    return colour_of(label), label


# ----------------------------------------------------------------------------------------- unit tests


def test_same_rng_same_output_other_rng_other_output() -> None:
    t = TrainTransform(data_cfg(min_size_train=(32, 40, 48, 56, 64), max_size_train=256, crop_size=(32, 32),
                                size_divisibility=32))
    image, label = sample_pair()
    a = t(image, label, np.random.default_rng(5))
    b = t(image, label, np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outs = [t(image, label, np.random.default_rng(s)) for s in range(6)]
    assert any(not torch.equal(outs[0][0], o[0]) for o in outs[1:])


def test_output_types_and_padded_size() -> None:
    t = TrainTransform(data_cfg(min_size_train=(24, 28), max_size_train=256, crop_size=(20, 20),
                                size_divisibility=32))
    image, label = sample_pair(30, 50)
    img, lab = t(image, label, np.random.default_rng(0))
    assert img.dtype == torch.float32 and img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 255
    assert lab.dtype == torch.int64 and lab.shape == (32, 32)


def test_cityscapes_style_crop_without_padding() -> None:
    t = TrainTransform(data_cfg(min_size_train=(32, 40, 48), max_size_train=400, crop_size=(32, 64),
                                size_divisibility=-1))
    image, label = sample_pair(64, 128)
    for s in range(5):
        img, lab = t(image, label, np.random.default_rng(s))
        assert img.shape == (3, 32, 64) and lab.shape == (32, 64)


def test_shortest_edge_resize_and_max_size() -> None:
    plain = dict(crop_enabled=False, color_aug_ssd=False, hflip=False, size_divisibility=-1)
    image, label = sample_pair(60, 90)
    out = TrainTransform(data_cfg(min_size_train=(30,), max_size_train=1000, **plain)).augment(
        image, label, np.random.default_rng(0))
    assert out.image.shape == (30, 45, 3) and out.label.shape == (30, 45) and out.params.resized == (30, 45)
    image, label = sample_pair(50, 200)
    out = TrainTransform(data_cfg(min_size_train=(100,), max_size_train=120, **plain)).augment(
        image, label, np.random.default_rng(0))
    assert out.image.shape[:2] == (30, 120)
    sizes = {TrainTransform(data_cfg(min_size_train=(20, 40), min_size_train_sampling="range", max_size_train=999,
                                     **plain)).augment(image, label, np.random.default_rng(s)).image.shape[0]
             for s in range(60)}
    assert sizes <= set(range(20, 41)) and len(sizes) > 5


def test_label_resize_is_torch_nearest() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        ih, iw, oh, ow = (int(v) for v in rng.integers(1, 200, 4))
        label = rng.integers(0, 150, (ih, iw))
        ref = F.interpolate(torch.from_numpy(label).float()[None, None], (oh, ow), mode="nearest")[0, 0]
        assert np.array_equal(resize_label_nearest(label, (oh, ow)), ref.long().numpy())


class Recorder:
    """A numpy Generator stand-in that records every integers() draw."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.draws: list[int] = []

    def integers(self, *args, **kw):
        v = self.rng.integers(*args, **kw)
        self.draws.append(int(v))
        return v


def _accepted(window: np.ndarray, max_area: float) -> bool:
    values, counts = np.unique(window, return_counts=True)
    counts = counts[values != IGNORE]
    return len(counts) > 1 and counts.max() < counts.sum() * max_area


def test_crop_category_area_constraint_tries_up_to_ten_windows() -> None:
    label = np.zeros((60, 60), np.int64)
    label[:15, :15] = 1          # a small second class in one corner
    label[40:, :] = IGNORE       # ignored pixels do not count
    outcomes = []
    for seed in range(40):
        rec = Recorder(seed)
        y0, x0, h, w = crop_window(label, (20, 20), 0.75, rec)
        windows = list(zip(rec.draws[::2], rec.draws[1::2]))
        assert (h, w) == (20, 20) and windows[-1] == (y0, x0) and 1 <= len(windows) <= 10
        for wy, wx in windows[:-1]:  # every earlier window was rejected
            assert not _accepted(label[wy: wy + 20, wx: wx + 20], 0.75)
        ok = _accepted(label[y0: y0 + 20, x0: x0 + 20], 0.75)
        assert ok or len(windows) == 10
        outcomes.append(ok)
    plain = [_accepted(label[y: y + 20, x: x + 20], 0.75)
             for y, x, _, _ in (crop_window(label, (20, 20), 1.0, np.random.default_rng(s)) for s in range(40))]
    assert sum(outcomes) > sum(plain)  # the constraint changes which windows are used
    rec = Recorder(0)
    crop_window(label, (20, 20), 1.0, rec)
    assert len(rec.draws) == 2  # without the constraint: one plain random crop


def test_crop_larger_than_image_takes_the_whole_side() -> None:
    assert crop_window(np.zeros((10, 30)), (20, 20), 1.0, np.random.default_rng(0))[2:] == (10, 20)


def test_padding_values() -> None:
    t = TrainTransform(data_cfg(min_size_train=(20,), max_size_train=100, crop_size=(20, 20), color_aug_ssd=False,
                                size_divisibility=32))
    image, label = sample_pair(20, 30)
    aug = t.augment(image, label, np.random.default_rng(1))
    img, lab = t(image, label, np.random.default_rng(1))
    h, w = aug.label.shape
    assert (h, w) == (20, 20) and img.shape[-2:] == (32, 32)
    assert (img[:, h:, :] == 128).all() and (img[:, :, w:] == 128).all()
    assert (lab[h:, :] == IGNORE).all() and (lab[:, w:] == IGNORE).all()
    assert np.array_equal(img[:, :h, :w].permute(1, 2, 0).numpy(), aug.image)
    assert np.array_equal(lab[:h, :w].numpy(), aug.label)


def test_flip_moves_image_and_label_together() -> None:
    cfg = dict(min_size_train=(40, 48, 56), max_size_train=200, crop_size=(32, 40), size_divisibility=-1)
    flip, no_flip = TrainTransform(data_cfg(hflip=True, **cfg)), TrainTransform(data_cfg(hflip=False, **cfg))
    image, label = sample_pair()
    flipped = 0
    for s in range(12):
        a = flip.augment(image, label, np.random.default_rng(s))
        b = no_flip.augment(image, label, np.random.default_rng(s))  # same draws up to the flip
        if a.params.flip:
            flipped += 1
            assert np.array_equal(a.image, b.image[:, ::-1]) and np.array_equal(a.label, b.label[:, ::-1])
        else:
            assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert 0 < flipped < 12


def test_colour_distortion_leaves_the_label_alone() -> None:
    cfg = dict(min_size_train=(48,), max_size_train=200, crop_size=(32, 32), hflip=False, size_divisibility=-1)
    image, label = sample_pair()
    for s in range(5):
        a = TrainTransform(data_cfg(color_aug_ssd=True, **cfg)).augment(image, label, np.random.default_rng(s))
        b = TrainTransform(data_cfg(color_aug_ssd=False, **cfg)).augment(image, label, np.random.default_rng(s))
        assert np.array_equal(a.label, b.label) and a.params.photometric is not None


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="min_size_train_sampling"):
        TrainTransform(data_cfg(min_size_train_sampling="uniform"))
    with pytest.raises(ConfigError, match="min_size_train"):
        TrainTransform(data_cfg(min_size_train=()))


def test_recipe_sizes_from_the_ade20k_preset() -> None:
    t = TrainTransform(data_cfg())  # 512 crops padded to 512
    image, label = sample_pair(96, 128)
    img, lab = t(image, label, np.random.default_rng(0))
    assert img.shape == (3, 512, 512) and lab.shape == (512, 512)


# ------------------------------------------------------------------------------------- property tests


def check_alignment(image: np.ndarray, label: np.ndarray, t: TrainTransform, seed: int) -> int:
    """Run the transform; assert alignment, padding and label values. Returns the number of pixels checked."""
    aug = t.augment(image, label, np.random.default_rng(seed))
    img_t, lab_t = t(image, label, np.random.default_rng(seed))
    img = img_t.permute(1, 2, 0).numpy()
    lab = lab_t.numpy()
    allowed = set(np.unique(label).tolist()) | {IGNORE}
    assert set(np.unique(lab).tolist()) <= allowed
    h, w = aug.label.shape
    if t.size_divisibility > 0:
        assert lab.shape[0] % t.size_divisibility == 0 and lab.shape[1] % t.size_divisibility == 0
    else:
        assert lab.shape == (h, w)
    assert (lab[h:] == IGNORE).all() and (lab[:, w:] == IGNORE).all()
    assert (img[h:] == 128).all() and (img[:, w:] == 128).all()
    if t.crop_size is not None:
        assert h == min(t.crop_size[0], aug.params.resized[0]) and w == min(t.crop_size[1], aug.params.resized[1])
    # where the label is uniform around a pixel (far enough for the bilinear image kernel), the image colour is
    # the colour of that label: image and label went through the same geometry
    scale = max(aug.params.resized[0] / label.shape[0], aug.params.resized[1] / label.shape[1])
    r = math.ceil(1.5 * max(scale, 1.0) + 1.5)
    content = lab[:h, :w]
    checked = 0
    for y in range(r, h - r):
        for x in range(r, w - r):
            window = content[y - r: y + r + 1, x - r: x + r + 1]
            c = content[y, x]
            if (window == c).all():
                expected = colour_of(np.array([[c]]))[0, 0].astype(np.float32)
                assert np.abs(img[y, x] - expected).max() <= 1, (y, x, c, img[y, x], expected)
                checked += 1
    return checked


@st.composite
def cases(draw):
    h, w = draw(st.integers(6, 40)), draw(st.integers(6, 40))
    k = draw(st.integers(1, 6))
    grid = np.array(draw(st.lists(st.sampled_from(list(range(k)) + [IGNORE]), min_size=1, max_size=16)))
    gh = draw(st.integers(1, len(grid)))
    grid = np.resize(grid, (gh, max(1, len(grid) // gh)))
    label = blocks(h, w, grid)
    cfg = data_cfg(
        min_size_train=tuple(draw(st.lists(st.integers(4, 72), min_size=1, max_size=3))),
        max_size_train=draw(st.integers(72, 160)),
        crop_enabled=draw(st.booleans()),
        crop_size=(draw(st.integers(4, 48)), draw(st.integers(4, 48))),
        single_category_max_area=draw(st.sampled_from([1.0, 0.6])),
        color_aug_ssd=False,
        hflip=True,
        size_divisibility=draw(st.sampled_from([-1, 0, 16, 32])),
    )
    return label, cfg, draw(st.integers(0, 2 ** 32 - 1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_property_image_and_label_stay_aligned(case) -> None:
    label, cfg, seed = case
    check_alignment(colour_of(label), label, TrainTransform(cfg), seed)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.sampled_from([-1, 32]))
def test_property_labels_stay_valid_with_colour_distortion(seed: int, divisor: int) -> None:
    rng = np.random.default_rng(seed)
    label = rng.choice([0, 3, 7, IGNORE], size=(int(rng.integers(8, 40)), int(rng.integers(8, 40))))
    image = rng.integers(0, 256, (*label.shape, 3), dtype=np.uint8)
    t = TrainTransform(data_cfg(min_size_train=(16, 24, 48), max_size_train=96, crop_size=(24, 24),
                                single_category_max_area=0.5, size_divisibility=divisor))
    img, lab = t(image, label, np.random.default_rng(seed))
    assert set(np.unique(lab.numpy()).tolist()) <= {0, 3, 7, IGNORE}
    assert img.dtype == torch.float32 and img.min() >= 0 and img.max() <= 255


def test_alignment_check_sees_many_pixels_and_catches_a_misalignment() -> None:
    label = blocks(40, 60, np.array([[0, 1, 2], [3, 4, 0]]))
    t = TrainTransform(data_cfg(min_size_train=(40, 60, 80), max_size_train=400, crop_size=(40, 48),
                                color_aug_ssd=False, size_divisibility=64))
    assert all(check_alignment(colour_of(label), label, t, s) > 200 for s in range(8))
    shifted = np.roll(colour_of(label), 6, axis=1)  # image and label no longer agree
    with pytest.raises(AssertionError):
        for s in range(8):
            check_alignment(shifted, label, t, s)
