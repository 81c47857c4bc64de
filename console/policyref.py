"""The compiled policy the console works with, reloaded when its files change.

Technicians edit `policy.toml` by hand; the console notices a new version at the next
request. A file that does not load keeps the last good version in use and the error is
shown on the policy page, exactly as the DNS and proxy daemons behave.
"""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from schoolgate.policy import CompiledPolicy


class PolicyUnavailable(RuntimeError):
    """No version of the policy file has ever loaded."""


class ConsolePolicy:
    def __init__(self, path: Path) -> None:
        from schoolgate.policy.loader import PolicyHolder

        self.path = path
        self._holder = PolicyHolder(path)
        self._lock = threading.Lock()
        self._loaded = False

    @property
    def error(self) -> str | None:
        return str(self._holder.error) if self._holder.error is not None else None

    def get(self) -> CompiledPolicy:
        """The file's policy (without the database's exceptions, bans and blocks)."""
        with self._lock:
            if not self._loaded:
                try:
                    self._holder.load()
                except Exception as err:
                    raise PolicyUnavailable(f"the policy file {self.path} does not load: {err}") from err
                self._loaded = True
            else:
                self._holder.reload_if_changed()
            policy = self._holder.policy
        assert policy is not None
        return policy

    def with_overlay(self, session: Session, site: str, now: datetime) -> CompiledPolicy:
        """The policy as DNS and the proxy apply it now: with exceptions, bans and site blocks."""
        from schoolgate.store.overlay import load_overlay

        overlay = load_overlay(session, site, now)
        return self.get().with_overlay(overlay.exceptions, overlay.bans, overlay.site_blocks)
