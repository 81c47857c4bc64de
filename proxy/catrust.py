"""What the proxy learns about each device: does it accept the school CA's certificates?

The proxy intercepts a blocked site's connection (to show the block page) only for devices the
register says trust the school CA. Whether the device then completes the handshake with the
school CA's certificate, or rejects it, is the evidence: a device registered as trusting that
rejects it shows no block page, only a broken connection. The coverage page shows what was
seen beside the register's flag (the proxy's status row carries it: schoolgate.services.coverage).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

REJECTIONS = ("does not trust the proxy's certificate", "unknown ca", "bad certificate", "certificate unknown")
LIMIT = 4096  # devices remembered (the most recent)


class CaTrustObserver:
    def __init__(self, now: Callable[[], datetime], limit: int = LIMIT) -> None:
        self._now = now
        self._limit = limit
        self._seen: OrderedDict[str, tuple[bool, str]] = OrderedDict()

    def _note(self, data: Any, trusted: bool) -> None:
        peer = getattr(data.conn, "peername", None)
        if not peer:
            return
        ip = str(peer[0]).removeprefix("::ffff:")
        self._seen.pop(ip, None)
        self._seen[ip] = (trusted, self._now().isoformat(timespec="seconds"))
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def tls_established_client(self, data: Any) -> None:
        self._note(data, True)

    def tls_failed_client(self, data: Any) -> None:
        error = str(getattr(data.conn, "error", "") or "").lower()
        if any(mark in error for mark in REJECTIONS):
            self._note(data, False)  # a client that merely hung up tells nothing

    def snapshot(self) -> dict[str, list[Any]]:
        return {ip: [trusted, at] for ip, (trusted, at) in self._seen.items()}
