"""Label map -> one binary mask per present class, ignore excluded."""

from __future__ import annotations

import pytest
import torch

from semask.engine.targets import targets_from_label_maps


def test_one_mask_per_present_class():
    labels = torch.tensor([[[3, 3, 255], [0, 3, 7]], [[255, 255, 255], [255, 255, 255]]])
    t0, t1 = targets_from_label_maps(labels, num_classes=8)
    assert t0["labels"].tolist() == [0, 3, 7] and t0["labels"].dtype == torch.int64
    assert t0["masks"].dtype == torch.bool and t0["masks"].shape == (3, 2, 3)
    for cls, mask in zip(t0["labels"].tolist(), t0["masks"]):
        for y in range(2):
            for x in range(3):
                assert bool(mask[y, x]) == (int(labels[0, y, x]) == cls)
    assert not t0["masks"].any(0)[0, 2]  # the ignored pixel belongs to no mask
    assert t1["labels"].numel() == 0 and t1["masks"].shape == (0, 2, 3)


def test_values_outside_the_classes_are_reported():
    labels = torch.tensor([[[0, 9], [1, 255]]])
    with pytest.raises(ValueError, match=r"\[9\]"):
        targets_from_label_maps(labels, num_classes=5)
    assert targets_from_label_maps(labels)[0]["labels"].tolist() == [0, 1, 9]  # unchecked without num_classes


def test_other_ignore_value():
    labels = torch.tensor([[[0, 1], [1, 0]]])
    assert targets_from_label_maps(labels, 2, ignore_value=0)[0]["labels"].tolist() == [1]
