"""The policy in force, for every daemon and command: one reloader.

    live = LivePolicy.from_config(config, sessions=sessions, clock=clock)
    live.load()                      # the first load: ConfigError if the policy is broken
    live.start()                     # a thread that checks every second (or call live.check())
    decision = live.decide(client, target, now)

It watches three things and keeps the answer current:

- the policy file and its local list files (modification time and size): recompiled;
- the list manifest (schoolgate.lists.state): the list versions it names are mapped read-only
  (shared with every other process through the page cache) and the policy recompiled with them;
- the database's change counter (exceptions, bans, site blocks): the overlay laid over the
  compiled policy again, and once a minute regardless, as exceptions start and end with time.

A swap is one attribute assignment, so readers in other threads never wait and never see half
of a change. Whatever goes wrong on a reload (a typo in the policy, a damaged list version, the
database away) keeps the last good state in force, and `error` says why.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schoolgate.clock import Clock, SystemClock
from schoolgate.policy.types import Ban, Client, Decision, PolicyException, Role, SiteBlock, Target
from schoolgate.tomlpos import ConfigError

if TYPE_CHECKING:
    from schoolgate.lists.state import Installed
    from schoolgate.policy.engine import CompiledPolicy

log = logging.getLogger(__name__)

OVERLAY_REFRESH_S = 60.0  # exceptions start and end with time, not only when the counter moves


@dataclass(frozen=True)
class _Compiled:
    """A policy compiled by `preload`, with what it was compiled from."""

    path: Path
    manifest_stamp: tuple[int, int, int]
    seed: int | None
    files: tuple[Path, ...]
    file_stamp: tuple[tuple[int, int], ...]
    policy: CompiledPolicy


_preloaded: _Compiled | None = None
_preloaded_lock = threading.Lock()  # two reloaders' first loads in two threads: one takes it


def _stamp(files: Iterable[Path]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for file in files:
        try:
            st = os.stat(file)
        except OSError:
            out.append((-1, -1))
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass(frozen=True)
class Overlaid:
    exceptions: tuple[PolicyException, ...] = ()
    bans: tuple[Ban, ...] = ()
    blocks: tuple[SiteBlock, ...] = ()
    skipped: tuple[str, ...] = ()


class LivePolicy:
    """The compiled policy with the installed list versions and the database overlay."""

    def __init__(
        self,
        path: str | Path,
        *,
        lists_dir: Path | None = None,
        sessions: Any | None = None,  # a sqlalchemy sessionmaker, or None: no database overlay
        site: str = "",
        clock: Clock | None = None,
        poll_s: float = 1.0,
        on_change: Callable[[], None] | None = None,
        also_poll: Callable[[], object] | None = None,
        overlay_refresh_s: float = OVERLAY_REFRESH_S,
    ) -> None:
        self.path = Path(path)
        self.lists_dir = lists_dir
        self.sessions = sessions
        self.site = site
        self.clock = clock or SystemClock()
        self.poll_s = poll_s
        self.on_change = on_change
        self.also_poll = also_poll
        self.overlay_refresh_s = overlay_refresh_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._installed: Installed | None = None
        if lists_dir is not None:
            from schoolgate.lists.state import Installed, ListState

            self._installed = Installed(ListState(lists_dir))
        self._compiled: CompiledPolicy | None = None
        self._overlay = Overlaid()
        self._files: list[Path] = [self.path]
        self._file_stamp: tuple[tuple[int, int], ...] = ()
        self._manifest_stamp: tuple[int, int, int] = (0, 0, 0)
        self._seed: int | None = None  # the list state's seed the policy was compiled with
        self._db_generation = -1
        self._overlay_at = float("-inf")
        self.policy: CompiledPolicy | None = None  # what readers use: compiled + overlay
        self.policy_error: str | None = None  # why the files on disk are not in force
        self.lists_error: str | None = None  # why a list version is not in force
        self.overlay_error: str | None = None  # why the database overlay could not be read
        self.generation = 0  # moves whenever the policy in force changes
        self.reloads = 0  # successful compiles after the first
        self.overlay_generation = -1

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> LivePolicy:
        """The reloader for an appliance: its policy file, list state folder and site."""
        from schoolgate.lists.state import state_dir_of

        return cls(config.policy, lists_dir=state_dir_of(config), site=config.site.id, **kwargs)

    # -- what readers use ---------------------------------------------------------------------
    @property
    def compiled(self) -> CompiledPolicy:
        policy = self.policy
        if policy is None:
            raise RuntimeError("the policy has not been loaded")
        return policy

    @property
    def error(self) -> str | None:
        """Everything that keeps the files on disk or the database from being in force."""
        errors = [e for e in (self.policy_error, self.lists_error, self.overlay_error) if e]
        return "; ".join(errors) if errors else None

    @property
    def last_error(self) -> str | None:
        return self.error

    def decide(self, client: Client, target: Target, now: datetime, *, named: bool = True) -> Decision:
        # Every DNS query comes here: the policy in force and the engine, without the property
        # and the import statement that cost more than a cached decision does. `named`: see
        # schoolgate.policy.engine.decide.
        policy = self.policy
        if policy is None:
            raise RuntimeError("the policy has not been loaded")
        return _engine_decide()(policy, client, target, now, named=named)

    def role_for(self, client: Client) -> Role:
        if client.role is not None:
            return client.role
        return self.compiled.role_for_ip(client.ip)

    @property
    def block_ipv4(self) -> str:
        return self.compiled.school.block_ipv4

    @property
    def block_ipv6(self) -> str | None:
        return self.compiled.school.block_ipv6

    # -- loading ------------------------------------------------------------------------------
    def load(self) -> CompiledPolicy:
        """The first load. A broken policy raises ConfigError (a daemon cannot start without
        one); an unreadable list state or database only leaves `error` set."""
        with self._lock:
            self._recompile(raise_errors=True)
            self._refresh_overlay(force=True)
            self._apply()
        return self.compiled

    def _recompile(self, *, raise_errors: bool = False) -> bool:
        from schoolgate.lists.state import ListStateError
        from schoolgate.policy.loader import list_files, load_policy

        manifest_stamp = self._installed.state.stamp() if self._installed is not None else (0, 0, 0)
        file_stamp = _stamp([self.path])
        seed: int | None = None
        if self._installed is not None:
            try:
                self._installed.refresh()
                seed = self._installed.state.seed()
                errors = self._installed.errors
                self.lists_error = (
                    "; ".join(f"list {k}: {v} (the version before stays in force)" for k, v in errors.items())
                    or None
                )
            except ListStateError as err:
                self.lists_error = f"{err} (the list versions in use stay in force)"
        reused = _take_preloaded(self.path, manifest_stamp, seed)
        if reused is not None:
            self._files = list(reused.files)
            self._file_stamp = reused.file_stamp
            self._manifest_stamp = manifest_stamp
            self._seed = seed
            self._compiled = reused.policy
            self.policy_error = None
            return True
        try:
            compiled = load_policy(self.path, installed=self._installed, seed=seed or secrets.randbits(64))
        except ConfigError as err:
            self._file_stamp = file_stamp + _stamp(self._files[1:])  # not recompiled every poll
            self._manifest_stamp = manifest_stamp
            self.policy_error = str(err)
            if raise_errors:
                raise
            log.error("policy %s not reloaded, keeping the last good one: %s", self.path, err)
            return False
        self._files = list_files(self.path, compiled)
        self._file_stamp = file_stamp + _stamp(self._files[1:])
        self._manifest_stamp = manifest_stamp
        self._seed = seed
        self._compiled = compiled
        self.policy_error = None
        return True

    def _refresh_overlay(self, *, force: bool = False) -> bool:
        if self.sessions is None:
            return False
        from schoolgate.store.overlay import load_overlay, read_generation

        stale = time.monotonic() - self._overlay_at > self.overlay_refresh_s
        try:
            with self.sessions() as session:
                generation = read_generation(session, self.site)
                if generation == self._db_generation and not stale and not force:
                    return False
                overlay = load_overlay(session, self.site, self.clock.now())
        except Exception as err:  # the database away must not stop filtering
            self.overlay_error = f"the database overlay could not be read: {err}"
            log.warning("%s", self.overlay_error)
            return False
        self.overlay_error = None
        self._overlay_at = time.monotonic()
        self._db_generation = generation
        self.overlay_generation = overlay.generation
        fresh = Overlaid(overlay.exceptions, overlay.bans, overlay.site_blocks, overlay.skipped)
        changed = fresh != self._overlay
        self._overlay = fresh
        return changed or force

    def set_overlay(
        self,
        exceptions: Iterable[PolicyException] = (),
        bans: Iterable[Ban] = (),
        blocks: Iterable[SiteBlock] = (),
    ) -> None:
        """Lay an overlay given by the caller (commands and tests without a database)."""
        with self._lock:
            self._overlay = Overlaid(tuple(exceptions), tuple(bans), tuple(blocks))
            self._apply()

    @property
    def overlay_skipped(self) -> tuple[str, ...]:
        return self._overlay.skipped

    def _apply(self) -> None:
        compiled = self._compiled
        if compiled is None:
            return
        overlay = self._overlay
        if overlay.exceptions or overlay.bans or overlay.blocks:
            self.policy = compiled.with_overlay(overlay.exceptions, overlay.bans, overlay.blocks)
        else:
            self.policy = compiled
        self.generation += 1

    # -- watching -----------------------------------------------------------------------------
    def files_changed(self) -> bool:
        if _stamp(self._files) != self._file_stamp:
            return True
        return self._installed is not None and self._installed.state.stamp() != self._manifest_stamp

    def check(self) -> bool:
        """Reload what changed; True if the policy in force changed."""
        with self._lock:
            recompiled = False
            if self.files_changed():
                recompiled = self._recompile()
                if recompiled:
                    self.reloads += 1
                    log.info("policy %s reloaded (lists: %s)", self.path, self._versions())
            overlaid = self._refresh_overlay()
            if not (recompiled or overlaid):
                return False
            self._apply()
        if self.on_change is not None:
            self.on_change()
        return True

    def _versions(self) -> str:
        if self._installed is None:
            return "no list state"
        return ", ".join(f"{k} {v.name}" for k, v in self._installed.mapped().items()) or "none installed"

    def start(self, name: str = "schoolgate-policy") -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
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


def preload(live: LivePolicy) -> None:
    """Compile the policy once in a process that then forks the daemons (with the reloader
    they will make: `LivePolicy.from_config(config)`).

    `schoolgate run` calls this before forking: each daemon's first load takes this compiled
    policy, if the policy file, its list files and the installed list versions are still what it
    was compiled from, instead of compiling its own. Its pages then stay shared between the
    daemons rather than each daemon building (and writing) a copy of its own. Taken once per
    process: a second reloader in the same process compiles its own, so no two share one object.
    A broken policy raises ConfigError here, and each daemon reports it as usual.
    """
    global _preloaded
    with live._lock:
        live._recompile(raise_errors=True)
    assert live._compiled is not None
    _preloaded = _Compiled(live.path, live._manifest_stamp, live._seed, tuple(live._files), live._file_stamp,
                           live._compiled)


def _take_preloaded(path: Path, manifest_stamp: tuple[int, int, int], seed: int | None) -> _Compiled | None:
    """The preloaded policy if it is of this file and still current; it is taken only once."""
    global _preloaded
    with _preloaded_lock:
        found = _preloaded
        if found is None or found.path != path or found.manifest_stamp != manifest_stamp or found.seed != seed:
            return None
        if _stamp(found.files) != found.file_stamp:
            return None  # edited since: compile what is on disk now
        _preloaded = None
        return found


@functools.cache
def _engine_decide() -> Callable[..., Decision]:
    from schoolgate.policy.engine import decide

    return decide


def load_current(config: Any, *, sessions: Any | None = None, clock: Clock | None = None) -> LivePolicy:
    """For commands: the appliance's policy as the daemons have it now, loaded once."""
    live = LivePolicy.from_config(config, sessions=sessions, clock=clock)
    live.load()
    return live
