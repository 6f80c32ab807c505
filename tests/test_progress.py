"""Progress reporting: plain log lines at the log period without a terminal, ETA formatting."""

from __future__ import annotations

import logging

from semask.engine.progress import Progress, format_seconds


def test_plain_lines_at_the_log_period(caplog):
    caplog.set_level(logging.INFO, logger="semask.train")
    p = Progress(start=0, total=10, log_period=4, tty=False)
    for it in range(1, 11):
        p.update(it, loss=1.0 / it, lr=1e-4)
    p.close()
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split()[1] for line in lines] == ["4/10", "8/10", "10/10"]
    assert "loss 0.25" in lines[0] and "lr 0.0001" in lines[0] and "eta" in lines[0]


def test_silent_when_disabled(caplog):
    caplog.set_level(logging.INFO, logger="semask.train")
    p = Progress(0, 5, 1, tty=False, enabled=False)
    p.update(1, 1.0, 1.0)
    p.write("x")
    assert not caplog.records


def test_format_seconds():
    assert format_seconds(59) == "00:59" and format_seconds(3600 + 61) == "1:01:01" and format_seconds(-3) == "00:00"
