"""`metrics.jsonl`: one JSON object per line, appended during training.

Training lines: {"iteration", "total_loss", every loss term by name, "lr", "time", "data_time", ...}.
Evaluation lines: {"iteration", "eval": {"mIoU": ..., ...}}. Written by rank 0 only; after a resume the
lines beyond the resumed iteration (written after the last checkpoint of an interrupted run) are dropped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 1)() == 1:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Inf
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All records of a metrics file (a truncated last line is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsWriter:
    """Appends records to a metrics.jsonl file; `enabled=False` (ranks other than 0) writes nothing."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_plain(record)) + "\n")

    def records(self) -> list[dict]:
        return read_metrics(self.path)

    def truncate_after(self, iteration: int) -> None:
        """Drop records of iterations after `iteration` (used when resuming)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if int(r.get("iteration", 0)) <= iteration]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)


def series(records: Iterable[dict], key: str) -> list[tuple[int, float]]:
    """(iteration, value) pairs of `key`; a key inside "eval" is looked up as "eval/<name>"."""
    out = []
    for r in records:
        value: Any = r
        for part in key.split("/"):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((int(r.get("iteration", 0)), float(value)))
    return out
