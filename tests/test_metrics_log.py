"""metrics.jsonl: append, read back (tolerating a torn last line), truncate on resume, series."""

from __future__ import annotations

import torch

from semask.engine.metrics_log import MetricsWriter, read_metrics, series


def test_write_read_truncate_and_series(tmp_path):
    w = MetricsWriter(tmp_path / "metrics.jsonl")
    for it in range(1, 6):
        w.write({"iteration": it, "total_loss": torch.tensor(10.0 - it), "lr": 0.1 * it})
    w.write({"iteration": 5, "eval": {"mIoU": 42.0, "per_class_ok": True}})
    w.write({"iteration": 6, "total_loss": float("nan")})
    with open(w.path, "a") as f:
        f.write('{"iteration": 7, "total_lo')  # a line cut short by a crash
    records = read_metrics(w.path)
    assert len(records) == 7 and records[0]["total_loss"] == 9.0 and records[-1]["total_loss"] == "nan"
    assert series(records, "total_loss") == [(i, 10.0 - i) for i in range(1, 6)]  # NaN left out
    assert series(records, "eval/mIoU") == [(5, 42.0)]
    w.truncate_after(3)
    assert [r["iteration"] for r in read_metrics(w.path)] == [1, 2, 3]


def test_disabled_writer_writes_nothing(tmp_path):
    w = MetricsWriter(tmp_path / "m.jsonl", enabled=False)
    w.write({"iteration": 1})
    w.truncate_after(0)
    assert not (tmp_path / "m.jsonl").exists() and read_metrics(tmp_path / "m.jsonl") == []
