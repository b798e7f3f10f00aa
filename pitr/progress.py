"""A small progress line for long transfers (backup, restore, verify).

On a terminal it redraws one stderr line (bytes done, throughput, and the
percentage and ETA when a total is known); elsewhere (systemd, cron, pipes) it
stays silent, so logs hold only the final summary the caller prints.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    """
    >>> human_bytes(0), human_bytes(1536), human_bytes(3 * 1024**3)
    ('0 B', '1.5 KiB', '3.0 GiB')
    """
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_rate(bytes_per_s: float) -> str:
    """Throughput in decimal MB/s, the unit disk and network figures are quoted in."""
    return f"{bytes_per_s / 1e6:.1f} MB/s"


def human_duration(seconds: float) -> str:
    """
    >>> human_duration(5.25), human_duration(3725)
    ('5.2 s', '1:02:05')
    """
    if seconds < 60:
        return f"{seconds:.1f} s"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Count bytes of one transfer; draw on a tty at most every ``interval`` seconds.

    ``total`` may be an estimate (``estimate=True``): the percentage then stops
    at 99 % rather than lying, and the ETA is shown with a tilde.
    """

    def __init__(self, what: str, total: int | None = None, *, estimate: bool = False,
                 stream: TextIO | None = None, enabled: bool | None = None,
                 interval: float = 0.5) -> None:
        self.what = what
        self.total = total
        self.estimate = estimate
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.interval = interval
        self.done = 0
        self.started = time.monotonic()
        self.finished: float | None = None
        self._last_draw = 0.0
        self._drawn = False

    def start(self) -> None:
        """(Re)start the clock: when the transfer really begins, after any set-up."""
        self.started = time.monotonic()
        self.done = 0

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled:
            now = time.monotonic()
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self._draw(self.line())

    def line(self) -> str:
        text = f"{self.what}: {human_bytes(self.done)}  {human_rate(self.rate)}"
        if self.total:
            fraction = self.done / self.total
            if self.estimate:
                fraction = min(fraction, 0.99)
            text += f"  {fraction:4.0%}"
            rate = self.rate
            if rate > 0 and fraction < 1:
                eta = max(self.total - self.done, 0) / rate
                text += f"  ETA {'~' if self.estimate else ''}{human_duration(eta)}"
        return text

    def summary(self) -> str:
        return (f"{self.what}: {human_bytes(self.done)} in {human_duration(self.elapsed)} "
                f"({human_rate(self.rate)})")

    def _draw(self, text: str) -> None:
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._drawn = True

    def close(self, final: str | None = None) -> None:
        """Stop the clock; on a tty replace the line with ``final`` (or the summary)."""
        if self.finished is None:
            self.finished = time.monotonic()
        if self.enabled:
            self._draw(final if final is not None else self.summary())
            self.stream.write("\n")
            self.stream.flush()

    def abandon(self) -> None:
        """Clear the line (on errors) so the error message starts at column 0."""
        if self.finished is None:
            self.finished = time.monotonic()
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
