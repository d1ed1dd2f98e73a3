"""Clocks. The daemon reads the time only through `interfaces.Clock`, so tests and the simulator can drive it.

`SystemClock` is the real one. `FakeClock` stands still until told to move: nothing in a test sleeps to wait for
a tick, it advances the clock instead.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only by `advance` (thread-safe: the daemon reads it from its worker threads)."""

    def __init__(self, start: datetime | None = None) -> None:
        start = start if start is not None else datetime(2025, 1, 1, tzinfo=UTC)
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> datetime:
        """Move forward by `seconds` (never back: time that runs backwards is a bug we do not model)."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now
