"""What the kernel refused or redirected becomes an event, recorded for what it is.

Seed 001 §9: "Attempts made to circumvent the network's firewalls will result in a ban". A
ban is a claim about a child, so only what shows intent is flagged `circumvention`:

- DNS over TLS or QUIC (port 853), and HTTPS to a known DNS-over-HTTPS resolver's address:
  refused, flagged `circumvention`, in the circumvention category;
- QUIC (UDP 443/80) to a watched service: refused quietly. Every browser tries HTTP/3 once a
  site advertises it and falls back to TCP, where the proxy judges the connection; so it is
  recorded with the verdict `refused` and the flag `quic` only, counted per device, never
  flagged circumvention;
- DNS sent to another resolver on port 53: answered by schoolgate anyway (the verdict is
  `redirect`), flagged `foreign_resolver`. Printers, televisions and phones do this by design;
  it is evidence beside an intent signal, and an alert of its own only where the technician
  turns that on (`[alerts] foreign_resolver_alerts`).

The gateway cannot see a hostname for these attempts, so the event names the destination
address and port; the client is identified like any other.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schoolgate.gateway.blocked import BlockedSets
from schoolgate.gateway.nflog import Attempt
from schoolgate.gateway.ruleset import KIND_DNS_BYPASS, KIND_DOH, KIND_DOT, KIND_QUIC
from schoolgate.gateway.sets import watched_family
from schoolgate.policy.model import DynamicClauses
from schoolgate.policy.types import Client, Role

log = logging.getLogger(__name__)

STATUS_NAME = "gateway"  # net watch's daemon_status row
# The longest a read of the NFLOG group waits before the loop polls the register, the overlay
# and the census again.
NFLOG_READ_TIMEOUT_S = 1.0
# A retrying client sends many packets for one attempt: one event per attempt and this long.
DEDUP_WINDOW_S = 5.0
# `keep_watching`'s pauses before it starts a failed watcher again, by failures in a row: the
# kernel's NFLOG group or nft may be missing until `schoolgate net apply` has run.
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
STABLE_AFTER_S = 60.0  # a watcher that ran this long before failing starts the back-off afresh
BLOCKED_RESYNC_S = 300.0  # the blocked sets are rewritten at least this often (a re-applied ruleset empties them)
CATEGORY = "circumvention"
FLAG_CIRCUMVENTION = "circumvention"
FLAG_QUIC = "quic"
FLAG_FOREIGN_RESOLVER = "foreign_resolver"
# What a refused DoT/DoH attempt cites when no policy is loaded; the watcher passes the school's
# own `[dynamic] circumvention_clause` (PolicyRoles.circumvention_clause).
CLAUSE = DynamicClauses().circumvention
QUIC_CLAUSE = "HTTP/3 (QUIC) to a watched service is refused so that the browser uses HTTPS, which the filter judges"
DNS_CLAUSE = "every DNS query on the school network is answered by schoolgate"

VERDICT_REFUSED = "refused"  # the kernel refused it quietly; not a blocked site
VERDICT_REDIRECT = "redirect"  # answered by schoolgate instead of where it was sent


@dataclass(frozen=True)
class AttemptKind:
    rule_id: str
    verdict: str
    flags: frozenset[str]
    category: str | None
    clause: str


KINDS: dict[str, AttemptKind] = {
    KIND_DOT: AttemptKind("gateway.refuse.dot", "block", frozenset({FLAG_CIRCUMVENTION, KIND_DOT}), CATEGORY, CLAUSE),
    KIND_DOH: AttemptKind("gateway.refuse.doh", "block", frozenset({FLAG_CIRCUMVENTION, KIND_DOH}), CATEGORY, CLAUSE),
    KIND_QUIC: AttemptKind("gateway.refuse.quic", VERDICT_REFUSED, frozenset({FLAG_QUIC}), None, QUIC_CLAUSE),
    KIND_DNS_BYPASS: AttemptKind(
        "gateway.redirect.dns", VERDICT_REDIRECT, frozenset({FLAG_FOREIGN_RESOLVER}), None, DNS_CLAUSE
    ),
}


def attempt_event(attempt: Attempt, client: Client, *, site: str, ts: datetime,
                  role: Role | None = None, circumvention_clause: str | None = None) -> Any:
    """The EventRecord for one attempt (every DfE field the gateway can know).

    `role` is the client's effective role under the policy (a ban makes it supervised, an
    unknown device gets its network's role); without a policy, the register's role or guest.
    `circumvention_clause` is what a refused circumvention attempt cites: the school's policy's
    `[dynamic] circumvention_clause`.
    """
    from schoolgate.store.events import EventRecord

    kind = KINDS[attempt.kind]
    role = role or client.role or Role.GUEST
    return EventRecord(
        ts=ts,
        site=site,
        source="gateway",
        client_ip=attempt.client_ip,
        mac=client.mac or attempt.mac,
        device_id=client.device_id,
        device_name=client.device_name,
        person_id=client.person_id,
        person_name=client.person_name,
        role=role.value,
        host=attempt.dest_ip,
        url=f"{attempt.protocol}://{_hostport(attempt.dest_ip, attempt.dest_port)}",
        verdict=kind.verdict,
        rule_id=kind.rule_id,
        clause=circumvention_clause if circumvention_clause and kind.clause == CLAUSE else kind.clause,
        category=kind.category,
        flags=kind.flags,
        identity_source=client.identity_source,
    )


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class PolicyRoles:
    """The effective role of a client: the policy decides (bans, networks of unknown devices).

    The policy, its lists and the database overlay (bans) come from the appliance's one
    reloader (schoolgate.live); if the policy cannot be read at all, the register's role is
    used, so a broken policy never stops circumvention logging.
    """

    def __init__(self, config: Any, sessions: Any, clock: Any) -> None:
        from schoolgate.live import LivePolicy

        self.live = LivePolicy.from_config(config, sessions=sessions, clock=clock)
        try:
            self.live.load()
        except Exception as err:
            log.error("policy not loaded, roles come from the device register: %s", err)

    def poll(self) -> None:
        if self.live.policy is None:
            try:
                self.live.load()
            except Exception as err:
                log.debug("policy still not loadable: %s", err)
            return
        self.live.check()

    def circumvention_clause(self) -> str | None:
        """The school's clause for refusing ways round the filter (None: no policy loaded)."""
        policy = self.live.policy
        return policy.dynamic.circumvention if policy is not None else None

    def role(self, client: Client, attempt: Attempt, now: datetime) -> Role | None:
        from schoolgate.policy import Target, decide

        policy = self.live.policy
        if policy is None:
            return client.role
        return decide(policy, client, Target(host=attempt.dest_ip), now).role


class AttemptDeduplicator:
    """A retrying client sends many packets for one attempt: keep one event per few seconds."""

    def __init__(self, window_s: float = DEDUP_WINDOW_S, max_entries: int = 100_000) -> None:
        self._window = window_s
        self._max = max_entries
        self._last: dict[tuple[str, str, str, int, str], float] = {}

    def first(self, attempt: Attempt, now: float) -> bool:
        key = (attempt.kind, attempt.client_ip, attempt.dest_ip, attempt.dest_port, attempt.protocol)
        last = self._last.get(key)
        if last is not None and now - last < self._window:
            return False
        if len(self._last) >= self._max:
            self._last.clear()
        self._last[key] = now
        return True


def run_watcher(config: Any, *, stop: threading.Event | None = None,
                ready: Callable[[], None] | None = None) -> int:
    """`schoolgate net watch`: read the NFLOG group until SIGTERM (or `stop`), write events.

    Raises if it cannot start (the NFLOG group refused, the database unreadable); what it had
    opened is closed first, so that `keep_watching` can start it again in the same process."""
    import time

    from schoolgate.clock import clock_from_env
    from schoolgate.gateway.census import CensusTaker
    from schoolgate.gateway.nflog import NflogSocket
    from schoolgate.identity.neighbours import NeighbourTable
    from schoolgate.identity.resolver import IdentityResolver, RegisterReloader
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.events import StatusTarget, make_event_writer

    stop = stop or threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        if threading.current_thread() is threading.main_thread():
            signal.signal(signum, lambda *_: stop.set())
    clock = clock_from_env()
    site = config.site.id
    group = getattr(config.network, "nflog_group", 7)
    counts = {"attempts": 0, "recorded": 0}
    engine = make_engine(config.database_url)
    nflog: Any = None
    writer: Any = None
    writing = False
    try:
        sessions = session_factory(engine)
        resolver = IdentityResolver(neighbours=NeighbourTable(), now=clock.now)
        reloader = RegisterReloader(sessions, site, resolver)
        writer = make_event_writer(
            engine, config, status=StatusTarget(site=site, name=STATUS_NAME, extra=lambda: dict(counts))
        )
        nflog = NflogSocket(group)
        nflog.settimeout(NFLOG_READ_TIMEOUT_S)
        dedup = AttemptDeduplicator()
        roles = PolicyRoles(config, sessions, clock)
        blocked = None if config.network.mode == "dns-only" else BlockedSets(family=watched_family(config.network.mode))
        synced_generation, next_resync = -1, 0.0
        census = CensusTaker(config, sessions, clock)  # which devices the gateway forwards for
        writer.start()
        writing = True
        log.info("reading circumvention attempts from NFLOG group %d", group)
        if ready is not None:
            ready()
        next_poll = 0.0
        while not stop.is_set():
            monotonic = time.monotonic()
            if monotonic >= next_poll:
                try:
                    reloader.poll()
                    roles.poll()
                except Exception as err:  # the database may be briefly away; keep watching
                    log.warning("device register or overlay not reloaded: %s", err)
                live = roles.live
                due = monotonic >= next_resync  # also after the ruleset was applied afresh
                if blocked is not None and live.policy is not None and (live.generation != synced_generation or due):
                    try:
                        networks = [network for network, _ in live.compiled.entries.networks()]
                        if blocked.sync(networks, force=due):
                            log.info("blocked address sets written (%d writes)", blocked.writes)
                        synced_generation, next_resync = live.generation, monotonic + BLOCKED_RESYNC_S
                    except Exception as err:  # nft missing or the table not applied yet
                        log.warning("blocked address sets not written: %s", err)
                        next_resync = monotonic + BLOCKED_RESYNC_S
                next_poll = monotonic + 1.0
            census.poll(monotonic)
            try:
                attempts = nflog.receive()
            except TimeoutError:
                continue
            except OSError as err:  # ENOBUFS: the kernel dropped messages under a flood
                log.warning("NFLOG receive: %s", err)
                continue
            for attempt in attempts:
                counts["attempts"] += 1
                if not dedup.first(attempt, time.monotonic()):
                    continue
                client = resolver.resolve(attempt.client_ip, attempt.mac)
                now = clock.now()
                try:
                    role = roles.role(client, attempt, now)
                except Exception as err:  # never lose the event over the role
                    log.warning("role for %s not decided: %s", client.ip, err)
                    role = None
                event = attempt_event(
                    attempt, client, site=site, ts=now, role=role, circumvention_clause=roles.circumvention_clause()
                )
                if writer.submit(event):
                    counts["recorded"] += 1
    finally:
        if nflog is not None:
            nflog.close()
        if writing:
            writer.stop()
        engine.dispose()
    return 0


def keep_watching(config: Any, stop: threading.Event, *, retry_s: Sequence[float] = RETRY_S) -> None:
    """net watch in a thread of a process that does other work (the event-writing process of
    `schoolgate run`, beside the DNS daemon's and the proxy's channels), until `stop`: a watcher
    that fails (the NFLOG group refused, the database away) is started again after a back-off,
    its status row saying why meanwhile (schoolgate.companions). Under systemd (`schoolgate net
    watch`) the watcher is a process of its own and the unit restarts it."""
    from schoolgate.companions import keep_running

    def watch(stopping: threading.Event) -> None:
        run_watcher(config, stop=stopping)

    keep_running("net watch", STATUS_NAME, config, watch, stop, retry_s=retry_s, stable_after_s=STABLE_AFTER_S)
