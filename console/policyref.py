"""The compiled policy the console works with: the appliance's one reloader (schoolgate.live).

Technicians edit `policy.toml` by hand and list versions arrive overnight; the console notices
a new version at the next request (looking at most once a second). A file that does not load
keeps the last good version in use and the error is shown on the policy page, exactly as the
DNS and proxy daemons behave. The database overlay is laid on per request, in the request's
own session, so a page always shows what DNS and the proxy apply now.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from schoolgate.policy import CompiledPolicy

CHECK_EVERY_S = 1.0


class PolicyUnavailable(RuntimeError):
    """No version of the policy file has ever loaded."""


class ConsolePolicy:
    def __init__(self, config: Any) -> None:
        from schoolgate.live import LivePolicy

        self.path = config.policy
        self._live = LivePolicy.from_config(config)
        self._lock = threading.Lock()
        self._loaded = False
        self._checked_at = float("-inf")

    @property
    def error(self) -> str | None:
        return self._live.error

    @property
    def live(self) -> Any:
        return self._live

    def get(self) -> CompiledPolicy:
        """The file's policy with the installed lists (without the database's overlay)."""
        with self._lock:
            if not self._loaded:
                try:
                    self._live.load()
                except Exception as err:
                    raise PolicyUnavailable(f"the policy file {self.path} does not load: {err}") from err
                self._loaded = True
                self._checked_at = time.monotonic()
            elif time.monotonic() - self._checked_at >= CHECK_EVERY_S:
                self._live.check()
                self._checked_at = time.monotonic()
            return self._live.compiled

    def with_overlay(self, session: Session, site: str, now: datetime) -> CompiledPolicy:
        """The policy as DNS and the proxy apply it now: with exceptions, bans and site blocks."""
        from schoolgate.store.overlay import load_overlay

        overlay = load_overlay(session, site, now)
        return self.get().with_overlay(overlay.exceptions, overlay.bans, overlay.site_blocks)
