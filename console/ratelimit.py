"""Sign-in attempts per client address, so one machine cannot spray passwords at many accounts.

Per-account lockout lives on the account row (schoolgate.console.accounts); this limiter
covers the other axis. Memory is bounded: old windows are pruned, and past `max_keys`
addresses the oldest are forgotten first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from datetime import datetime, timedelta


class AttemptLimiter:
    def __init__(self, max_attempts: int, window: timedelta, max_keys: int = 10_000) -> None:
        self.max_attempts = max_attempts
        self.window = window
        self._max_keys = max_keys
        self._attempts: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._lock = threading.Lock()

    def _prune(self, key: str, now: datetime) -> deque[datetime]:
        times = self._attempts.setdefault(key, deque())
        while times and now - times[0] >= self.window:
            times.popleft()
        return times

    def blocked_until(self, key: str, now: datetime) -> datetime | None:
        """When the key may try again, or None if it may try now."""
        with self._lock:
            times = self._prune(key, now)
            if len(times) >= self.max_attempts:
                return times[0] + self.window
            return None

    def record_failure(self, key: str, now: datetime) -> None:
        with self._lock:
            times = self._prune(key, now)
            times.append(now)
            self._attempts.move_to_end(key)
            while len(self._attempts) > self._max_keys:
                self._attempts.popitem(last=False)

    def reset(self, key: str) -> None:
        with self._lock:
            self._attempts.pop(key, None)
