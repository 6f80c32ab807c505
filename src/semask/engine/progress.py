"""Training progress: a tqdm bar (iteration, loss, lr, ETA) on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("semask.train")


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Reports iterations [start, total). `tty=None` decides from stderr; `enabled=False` is silent."""

    def __init__(self, start: int, total: int, log_period: int = 20, tty: bool | None = None,
                 enabled: bool = True) -> None:
        self.start, self.total = start, total
        self.log_period = max(int(log_period), 1)
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, file=sys.stderr)

    def eta(self, iteration: int) -> float:
        done = iteration - self.start
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.t0) / done * (self.total - iteration)

    def update(self, iteration: int, loss: float, lr: float, extra: str = "") -> None:
        """Call after iteration `iteration` (1-based count of finished iterations)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = iteration
            self.bar.set_postfix_str(f"loss {loss:.4g} lr {lr:.3g}{' ' + extra if extra else ''}", refresh=False)
            self.bar.refresh()
        elif iteration % self.log_period == 0 or iteration == self.total:
            eta = self.eta(iteration)
            eta_s = format_seconds(eta) if eta == eta else "?"
            log.info("iter %d/%d  loss %.4g  lr %.3g  eta %s%s", iteration, self.total, loss, lr, eta_s,
                     f"  {extra}" if extra else "")

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            log.info("%s", message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
