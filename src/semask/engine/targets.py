"""Training targets for semantic segmentation: one binary mask per class present in a label map.

As the original dataset mapper does: the classes are the sorted unique label values without the
ignore value, and mask i is `label == class_i` (bool). Mask2Former matches these masks to its queries.
"""

from __future__ import annotations

import torch


def targets_from_label_maps(label_maps: torch.Tensor, num_classes: int | None = None,
                            ignore_value: int = 255) -> list[dict[str, torch.Tensor]]:
    """label_maps (B, H, W) int64 -> [{"labels": (n,) int64 ascending, "masks": (n, H, W) bool}] per image.

    Raises ValueError naming the image and the values when a label is neither a class in
    [0, num_classes) nor `ignore_value`.
    """
    if label_maps.dim() != 3:
        raise ValueError(f"label maps must be (B, H, W), got {tuple(label_maps.shape)}")
    targets = []
    for b, label in enumerate(label_maps):
        classes = torch.unique(label)
        classes = classes[classes != ignore_value]
        if num_classes is not None and classes.numel():
            bad = classes[(classes < 0) | (classes >= num_classes)]
            if bad.numel():
                raise ValueError(f"label map {b} of the batch has values {bad.tolist()} outside the "
                                 f"{num_classes} classes (and not the ignore value {ignore_value})")
        masks = label[None] == classes[:, None, None]
        targets.append({"labels": classes.to(torch.int64), "masks": masks})
    return targets
