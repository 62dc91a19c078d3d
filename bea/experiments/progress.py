"""Progress lines on stderr for long work; plain text, no extra dependency.

    progress = Progress(total=400, label="multitask quick")
    for step in range(1, 401):
        ...
        progress.update(step, loss=0.53)
    progress.done()

prints, at most every ``interval`` seconds (and always at the last step)::

    multitask quick: 120/400 (30%) 3.1s elapsed, eta 7.2s | loss=0.53
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Progress:
    """Throttled progress reporter (state: start time and the last print time).

    Args:
        total: number of units of work (steps, runs).
        label: text put in front of each line.
        enabled: print nothing when False.
        interval: minimum seconds between two lines.
        stream: where to print (stderr by default).
        start: units already done (a resumed run).
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        enabled: bool = True,
        interval: float = 2.0,
        stream: IO[str] | None = None,
        start: int = 0,
    ) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self.start = start
        self._t0 = time.perf_counter()
        self._last = -float("inf")

    def update(self, done: int, **info: Any) -> None:
        """Report ``done`` units out of ``total``; ``info`` is appended as key=value."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < self.interval and done < self.total:
            return
        self._last = now
        elapsed = now - self._t0
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        line = f"{self.label}: {done}/{self.total} ({100 * done / self.total:.0f}%) "
        line += f"{elapsed:.1f}s elapsed, eta {eta:.1f}s"
        if info:
            line += " | " + " ".join(f"{k}={_format(v)}" for k, v in info.items())
        print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Print one line (when enabled)."""
        if self.enabled:
            print(f"{self.label}: {text}" if self.label else text, file=self.stream, flush=True)

    def done(self) -> None:
        self.message(f"done in {time.perf_counter() - self._t0:.1f}s")
