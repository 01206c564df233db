"""Progress of long commands on stderr, with a time estimate per kind of work.

A run that mixes kinds of work of very different cost (RISE's 500 masked forwards vs Attention-ECLIP's
one backward) cannot be estimated from the overall mean: 88 % of the maps may be fast ones. ``Progress``
keeps the mean time of each kind (``step(kind)``) and estimates the rest as the sum over kinds of
remaining count x that kind's mean; a kind not yet seen is estimated with the slowest mean seen, and
said to be a guess.

On a terminal the line is redrawn in place; otherwise (a pipe, a log file) it writes a line per stage
(``stage``) and at most one progress line every ``interval`` seconds, never carriage-return redraws.
"""

from __future__ import annotations

import sys
import time
from typing import IO


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class Progress:
    """``plan``: how many steps of each kind are to come, e.g. ``{"rise": 50, "attention_eclip": 50}``."""

    def __init__(
        self,
        label: str,
        plan: dict[str, int],
        *,
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float = 10.0,
        clock=time.monotonic,
    ):
        self.label, self.enabled, self.interval, self.clock = label, enabled, interval, clock
        self.stream = stream if stream is not None else sys.stderr
        self.remaining = {kind: int(count) for kind, count in plan.items()}
        self.total = sum(self.remaining.values())
        self.done = 0
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.started = self.last = self.last_line = clock()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._drawn = False

    def skip(self, kind: str, count: int = 1) -> None:
        """Steps already done before this run (a resumed run): counted, not timed."""
        self.remaining[kind] = max(0, self.remaining.get(kind, 0) - count)
        self.done += count
        self.last = self.clock()

    def step(self, kind: str, note: str = "") -> None:
        """One step of ``kind`` finished now (its time: since the previous step)."""
        now = self.clock()
        self.seconds[kind] = self.seconds.get(kind, 0.0) + now - self.last
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.remaining[kind] = max(0, self.remaining.get(kind, 0) - 1)
        self.done += 1
        self.last = now
        if not self.enabled:
            return
        if self.tty:
            self._write("\r" + self.line(note)[:160].ljust(100), end="")
            self._drawn = True
        elif now - self.last_line >= self.interval or self.done == self.total:
            self._write(self.line(note))
            self.last_line = now

    def restart_clock(self) -> None:
        """Do not count the time since the last step (e.g. loading an image) towards the next step's kind."""
        self.last = self.clock()

    def eta(self) -> tuple[float, bool]:
        """Seconds left and whether part of it is a guess (a kind with no measured step yet)."""
        means = {kind: self.seconds[kind] / self.counts[kind] for kind in self.counts}
        slowest = max(means.values(), default=0.0)
        left, guessed = 0.0, False
        for kind, count in self.remaining.items():
            if count and kind not in means:
                guessed = True
            left += count * means.get(kind, slowest)
        return left, guessed

    def line(self, note: str = "") -> str:
        percent = 100.0 * self.done / self.total if self.total else 100.0
        left, guessed = self.eta()
        estimate = f"about {duration(left)} left" + (" (a guess until every kind has run once)" if guessed else "")
        elapsed = duration(self.clock() - self.started)
        text = f"{self.label}: {self.done}/{self.total} ({percent:.0f} %), {elapsed} elapsed, {estimate}"
        return text + (f" [{note}]" if note else "")

    def stage(self, message: str) -> None:
        """A line that is always written: the start or end of a stage."""
        if self.enabled:
            self._write(("\n" if self._drawn else "") + f"{self.label}: {message}")
            self._drawn = False

    def close(self) -> None:
        if self.enabled and self._drawn:
            self._write("")
            self._drawn = False

    def _write(self, text: str, end: str = "\n") -> None:
        self.stream.write(text + end)
        self.stream.flush()


def stage_logger(label: str, enabled: bool = True, stream: IO[str] | None = None):
    """A ``progress(message)`` callable for commands made of a few long stages: each message is written on
    its own line with the time since the command started (never a redrawn bar)."""
    started = time.monotonic()
    out = stream if stream is not None else sys.stderr

    def log(message: str) -> None:
        if enabled:
            out.write(f"{label}: [{duration(time.monotonic() - started)}] {message}\n")
            out.flush()

    return log


__all__ = ["Progress", "stage_logger", "duration"]
