"""The live policy: the policy file compiled, with the database's exceptions, bans and blocks.

A watcher thread checks every second whether the policy file changed (modification time, size)
or the database's change counter moved, and swaps in a new compiled policy: a change applies
within about a second, without a restart. A policy file that does not compile keeps the last
good one in force and says why in the log (and in `last_error`). The resolver thread only ever
reads one attribute, so a swap is atomic.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schoolgate.clock import Clock
from schoolgate.policy.types import Client, Decision, Role, Target

if TYPE_CHECKING:
    from schoolgate.policy.engine import CompiledPolicy
    from schoolgate.policy.loader import PolicyHolder

log = logging.getLogger(__name__)


class LivePolicy:
    """The policy in force for the resolver (a PolicyHolder plus the database overlay)."""

    def __init__(
        self,
        path: Path,
        clock: Clock,
        site: str,
        *,
        sessions: Any | None = None,  # sqlalchemy sessionmaker, or None: no database overlay
        on_change: Callable[[], None] | None = None,
        poll_s: float = 1.0,
        also_poll: Callable[[], object] | None = None,
        holder: PolicyHolder | None = None,
    ) -> None:
        from schoolgate.policy import decide

        self.clock = clock
        self.site = site
        self.sessions = sessions
        self.on_change = on_change
        self.poll_s = poll_s
        self.also_poll = also_poll
        self._decide = decide
        if holder is None:
            from schoolgate.policy.loader import PolicyHolder

            holder = PolicyHolder(path)
            holder.load()  # a broken policy at start-up is fatal: ConfigError propagates
        self._holder = holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db_generation = -1
        self.reloads = 0
        self.generation = 0  # moves whenever the policy in force changes
        try:
            self._refresh_overlay()
        except Exception as err:
            log.warning("could not read the policy overlay at start-up: %s", err)

    # -- what the resolver reads ------------------------------------------------------------
    @property
    def compiled(self) -> CompiledPolicy:
        policy = self._holder.policy
        assert policy is not None  # load() succeeded in __init__, and reloads only replace it
        return policy

    @property
    def last_error(self) -> str | None:
        error = self._holder.error
        return None if error is None else str(error)

    @property
    def block_ipv4(self) -> str | None:
        value: str | None = self.compiled.school.block_ipv4
        return value

    @property
    def block_ipv6(self) -> str | None:
        value: str | None = self.compiled.school.block_ipv6
        return value

    def decide(self, client: Client, target: Target, now: datetime) -> Decision:
        decision: Decision = self._decide(self.compiled, client, target, now)
        return decision

    def role_for(self, client: Client) -> Role:
        if client.role is not None:
            return client.role
        role: Role = self.compiled.role_for_ip(client.ip)
        return role

    # -- reloading --------------------------------------------------------------------------
    def _refresh_overlay(self) -> bool:
        if self.sessions is None:
            return False
        from schoolgate.store.overlay import load_overlay, read_generation

        with self.sessions() as session:
            generation = read_generation(session, self.site)
            if generation == self._db_generation:
                return False
            overlay = load_overlay(session, self.site, self.clock.now())
        self._holder.set_overlay(overlay.exceptions, overlay.bans, overlay.site_blocks)
        self._db_generation = generation
        return True

    def check(self) -> bool:
        """Reload what changed; True if the policy in force changed."""
        changed = False
        error_before = self._holder.error
        if self._holder.reload_if_changed():
            log.info("policy %s reloaded", self._holder.path)
            changed = True
        elif self._holder.error is not None and self._holder.error is not error_before:
            log.error("policy %s not reloaded, keeping the last good one: %s", self._holder.path,
                      self._holder.error)
        try:
            if self._refresh_overlay():
                log.info("policy overlay reloaded (database generation %d)", self._db_generation)
                changed = True
        except Exception as err:  # the database being away must not stop resolving
            log.warning("could not read the policy overlay: %s", err)
        if changed:
            self.generation += 1
            self.reloads += 1
            if self.on_change is not None:
                self.on_change()
        return changed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="schoolgate-dns-policy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception:
                log.exception("policy watcher failed; trying again")
            if self.also_poll is not None:
                try:
                    self.also_poll()
                except Exception as err:
                    log.warning("device register reload failed: %s", err)
