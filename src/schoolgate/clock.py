"""Where daemons get "now" from.

Policy depends on the time of day, so tests and the network lab must be able to set the
clock of a running daemon. In production the clock is the system clock. A daemon started
with a clock file (never in a shipped config) reads an instant from that file and lets it
run on in real time from the moment the file was written; rewriting the file moves time.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, aware, in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FileClock:
    """Reads an ISO-8601 instant from a file; time advances from the file's modification time.

    The file is re-read when it changes (checked at most every `recheck` seconds), so a test
    can jump the clock of a running daemon by rewriting one small file.
    """

    def __init__(self, path: str | Path, recheck: float = 0.2) -> None:
        self._path = Path(path)
        self._recheck = recheck
        self._checked_at = -1.0
        self._mtime_ns = -1
        self._base: datetime | None = None
        self._written_at = 0.0  # wall-clock seconds when the file was written

    def _refresh(self) -> None:
        monotonic = time.monotonic()
        if monotonic - self._checked_at < self._recheck:
            return
        self._checked_at = monotonic
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            self._base = None
            return
        if stat.st_mtime_ns == self._mtime_ns:
            return
        text = self._path.read_text(encoding="utf-8").strip()
        instant = datetime.fromisoformat(text)
        if instant.tzinfo is None:
            raise ValueError(f"{self._path}: the clock file needs a time zone offset, got {text!r}")
        self._mtime_ns = stat.st_mtime_ns
        self._base = instant.astimezone(UTC)
        # Time runs on from when the file was written, not from when we noticed it.
        self._written_at = stat.st_mtime_ns / 1e9

    def now(self) -> datetime:
        self._refresh()
        if self._base is None:
            return datetime.now(UTC)
        return self._base + timedelta(seconds=max(0.0, time.time() - self._written_at))


def set_clock_file(path: str | Path, instant: datetime) -> None:
    """Write `instant` to a clock file atomically (used by tests and `schoolgate lab clock`)."""
    if instant.tzinfo is None:
        raise ValueError("the instant must be aware (have a time zone)")
    target = Path(path)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(instant.isoformat() + "\n", encoding="utf-8")
    os.replace(tmp, target)


def clock_from_env() -> Clock:
    """SCHOOLGATE_CLOCK_FILE selects a FileClock; otherwise the system clock."""
    path = os.environ.get("SCHOOLGATE_CLOCK_FILE")
    return FileClock(path) if path else SystemClock()
