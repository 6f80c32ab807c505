"""Stored label values -> train ids (0..K-1, 255 = ignore) through a lookup table.

Each dataset stores labels its own way: ADE20K keeps 0 for "other" and 1..150 for the classes,
Cityscapes stores its 34 label ids (or, after its own conversion script, the train ids), a user's
folder stores train ids directly. A `LabelMapping` turns any of them into train ids and reports the
stored values it does not know, so that a bad annotation is an error and never a silent class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255
INVALID = -1

# Cityscapes label id -> train id (the 19 evaluated classes; everything else is ignored).
CITYSCAPES_ID_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}
CITYSCAPES_NUM_IDS = 34  # label ids 0..33 (license plate, -1, is never stored in gtFine PNGs)


@dataclass(frozen=True, eq=False)
class LabelMapping:
    """A lookup table from stored values to train ids; INVALID (-1) marks values that must not occur."""
    lut: np.ndarray       # int64 (M,)
    valid: str            # the accepted stored values, for error messages

    def apply(self, raw: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """(train ids int64, sorted list of stored values that are not accepted)."""
        raw = np.asarray(raw)
        lo, hi = int(raw.min(initial=0)), int(raw.max(initial=0))
        if lo < 0 or hi >= len(self.lut):  # values beyond the table (negative, 16-bit) are invalid too
            outside = (raw < 0) | (raw >= len(self.lut))
            out = np.where(outside, INVALID, self.lut[np.clip(raw, 0, len(self.lut) - 1)])
        else:
            out = self.lut[raw]
        invalid = out == INVALID
        bad: list[int] = []
        if invalid.any():
            bad = [int(v) for v in np.unique(raw[invalid])]
            out = np.where(invalid, IGNORE, out)
        return out.astype(np.int64, copy=False), bad


def _lut(size: int) -> np.ndarray:
    return np.full(max(size, IGNORE + 1), INVALID, dtype=np.int64)


def identity_mapping(num_classes: int) -> LabelMapping:
    """Train ids stored directly: 0..K-1 are classes, 255 is ignored."""
    if num_classes > IGNORE:
        raise ValueError("more than 255 classes cannot use 255 as the ignore value")
    lut = _lut(num_classes)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE] = IGNORE
    return LabelMapping(lut, f"0..{num_classes - 1} (classes) and 255 (ignore)")


def ade20k_mapping(num_classes: int = 150) -> LabelMapping:
    """ADEChallengeData2016: stored 0 ("other") -> 255, k -> k-1 for k in 1..K."""
    lut = _lut(num_classes + 1)
    lut[0] = IGNORE
    lut[1: num_classes + 1] = np.arange(num_classes)
    lut[IGNORE] = IGNORE
    return LabelMapping(lut, f"0 (other, ignored) and 1..{num_classes} (classes)")


def cityscapes_label_ids_mapping() -> LabelMapping:
    """gtFine *_labelIds.png: the 34 label ids -> 19 train ids, the others ignored."""
    lut = _lut(CITYSCAPES_NUM_IDS)
    lut[:CITYSCAPES_NUM_IDS] = IGNORE
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    lut[IGNORE] = IGNORE
    return LabelMapping(lut, f"Cityscapes label ids 0..{CITYSCAPES_NUM_IDS - 1} and 255")


def cityscapes_train_ids_mapping() -> LabelMapping:
    """gtFine *_labelTrainIds.png: train ids 0..18 and 255 stored directly."""
    m = identity_mapping(19)
    return LabelMapping(m.lut, "Cityscapes train ids 0..18 and 255")
