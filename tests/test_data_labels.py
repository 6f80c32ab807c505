"""Stored label values -> train ids, and the report of values that must not occur."""

from __future__ import annotations

import numpy as np
import pytest

from semask.data.labels import (ade20k_mapping, cityscapes_label_ids_mapping, cityscapes_train_ids_mapping,
                                identity_mapping)


def test_ade20k_mapping() -> None:
    raw = np.array([[0, 1, 150], [151, 255, 7]])
    out, bad = ade20k_mapping().apply(raw)
    assert bad == [151]
    assert out.dtype == np.int64 and out.tolist() == [[255, 0, 149], [255, 255, 6]]


def test_identity_mapping_and_16_bit_values() -> None:
    m = identity_mapping(4)
    out, bad = m.apply(np.array([0, 3, 255, 4, 1000], dtype=np.int64))
    assert out.tolist() == [0, 3, 255, 255, 255] and bad == [4, 1000]
    out, bad = m.apply(np.array([-1, 2]))
    assert bad == [-1] and out.tolist() == [255, 2]
    with pytest.raises(ValueError):
        identity_mapping(300)


def test_cityscapes_mappings() -> None:
    out, bad = cityscapes_label_ids_mapping().apply(np.arange(34))
    assert not bad and sorted(set(out.tolist()) - {255}) == list(range(19))
    assert (out == 255).sum() == 34 - 19
    out, bad = cityscapes_train_ids_mapping().apply(np.array([0, 18, 19, 255]))
    assert bad == [19] and out.tolist() == [0, 18, 255, 255]


def test_clean_labels_report_nothing() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 151, (50, 60))
    out, bad = ade20k_mapping().apply(raw)
    assert bad == [] and np.array_equal(out, np.where(raw == 0, 255, raw - 1))
