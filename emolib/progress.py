"""Progress of long computations, shown by the book runner while a chapter executes.

Library code calls :func:`report` as it goes, unconditionally::

    for i, batch in enumerate(batches, 1):
        ...
        report("capture", i, len(batches))

When the environment variable ``EMOLIB_PROGRESS`` names a file (the book runner sets it for the
kernels it starts: kernels inherit its environment), each call appends one JSON line
``{"stage": "capture", "done": 40, "total": 160, "t": 1767225600.25}`` to it: at most one line a
second per stage, plus the final one (``done >= total``). Without the variable it returns at once.

The runner reads the file with :class:`Follower` and shows it with :class:`StatusLine`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

__all__ = ["ENV", "report", "Update", "Follower", "StatusLine", "format_elapsed"]

ENV = "EMOLIB_PROGRESS"
MIN_INTERVAL_S = 1.0

_last_written: dict[str, float] = {}  # stage -> time of its last line, in this process


def report(stage: str, done: int, total: int) -> None:
    """Record that ``stage`` has done ``done`` of ``total`` steps (cheap; a no-op unless the runner listens)."""
    path = os.environ.get(ENV)
    if not path:
        return
    now = time.time()
    final = done >= total
    if not final and now - _last_written.get(stage, 0.0) < MIN_INTERVAL_S:
        return
    if final:
        # A stage name used again later (a second capture in the same chapter) starts afresh.
        _last_written.pop(stage, None)
    else:
        _last_written[stage] = now
    line = json.dumps({"stage": str(stage), "done": int(done), "total": int(total), "t": round(now, 3)})
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except OSError:
        pass  # progress is a convenience: a computation never fails for it


@dataclass(frozen=True)
class Update:
    stage: str
    done: int
    total: int
    t: float

    def __str__(self) -> str:
        return f"{self.stage}: {self.done}/{self.total}"


class Follower:
    """Reads the updates appended to a progress file since the previous :meth:`read` (whole lines only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0

    def read(self) -> list[Update]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except OSError:
            return []
        # A writer may be half-way through a line: leave it for the next read.
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        updates = []
        for raw in chunk[:end].splitlines():
            try:
                d = json.loads(raw)
                updates.append(Update(str(d["stage"]), int(d["done"]), int(d["total"]), float(d["t"])))
            except (ValueError, KeyError, TypeError):
                continue  # a malformed line is skipped, not fatal
        return updates


def format_elapsed(seconds: float) -> str:
    """``151`` -> ``"2:31"``; ``3725`` -> ``"1:02:05"``."""
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class StatusLine:
    """One running task's status, ``  [01_capture 2:31] capture: 40/160``, on a stream.

    On a terminal the line is rewritten in place (call :meth:`tick` often); elsewhere (a log, CI) a
    line is printed at most every ``every_s`` seconds, so a long chapter leaves a short trail.
    """

    def __init__(self, label: str, *, stream: TextIO | None = None, every_s: float = 60.0,
                 tty: bool | None = None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.tty = tty if tty is not None else _isatty(self.stream)
        self.start = time.monotonic()
        self.latest: Update | None = None
        self._printed: Update | None = None
        self._printed_at = self.start
        self._shown = False

    def text(self) -> str:
        what = str(self.latest) if self.latest is not None else "running"
        return f"  [{self.label} {format_elapsed(time.monotonic() - self.start)}] {what}"

    def tick(self, updates: list[Update] = ()) -> None:
        if updates:
            self.latest = updates[-1]
        now = time.monotonic()
        if self.tty:
            self._write("\r" + self.text() + "\x1b[K")
            self._shown = True
        else:
            since = now - self._printed_at
            # A line when something changed, else a slower heartbeat: a log shows the run is alive.
            if since >= (self.every_s if self.latest != self._printed else max(5 * self.every_s, 60.0)):
                self._write(self.text() + "\n")
                self._printed, self._printed_at = self.latest, now

    def close(self, final: str) -> None:
        """Replace the status with ``final`` (e.g. ``01_capture done in 14:39``)."""
        self._write(("\r\x1b[K" if self._shown else "") + final + "\n")
        self._shown = False

    def clear(self) -> None:
        """Erase the status from a terminal, printing nothing in its place."""
        if self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    def elapsed(self) -> str:
        return format_elapsed(time.monotonic() - self.start)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken stream must not stop the run it reports on


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
