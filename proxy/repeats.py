"""Repeated kills: a device opening again, within the minute, a connection the proxy just killed.

A blocked app does not give up: a pupil's tablet retries Facebook or a game's servers many
times a minute, each time the same device, the same SNI and the same address, and each is
killed at its ClientHello. The first goes the whole way (schoolgate.proxy.front): mitmproxy's
connection objects, the addons' hooks, `judge_tls` with the policy's `decide`, the event log
and the counters. What that produced is remembered here, and a repeat is killed from memory
with the same event (restamped) and the same counters, while nothing its verdict depends on
can have moved:

- the device: the recent identity of its address (`identify_cached`) is the one judged;
- the policy: its version (policy and database overlay: a reload, a new ban or a revoked
  exception moves it) is the one in force when it was judged;
- the time: the same minute (the policy's windows change on whole minutes, and the engine
  caches its decisions per minute too), and before the decision's `valid_until`;
- the address book does not enter: only a kill that the name decided is remembered, not one
  without a name (no SNI) or one for fronting (the name allowed, the address a blocked
  service's), which depend on what the book knows of the address.

Anything else (no identity on the loop yet, a different verdict, a full table) goes the whole
way. `tests/proxy/test_repeats.py` runs the same connections both ways and compares the events
and the counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schoolgate.policy.types import Client
from schoolgate.proxy.addons import ConnState, EventLog, Services, _ip_of
from schoolgate.proxy.judge import FLAG_FRONTING, Action, Judgement
from schoolgate.store.events.record import Ask

# (address, SNI, destination) kills remembered within one minute; a full table starts over (a
# miss costs one connection the whole way). Emptied when a new minute's first kill is stored.
REMEMBERED_LIMIT = 8192
_NEVER = float("inf")

Key = tuple[str, str, Any]  # (the device's address as accepted, the SNI as sent, the destination)


class Moment:
    """What the connections of one accepting wake-up share: the policy clock's instant and the
    policy's version, read once for them, before any of them is judged.

    A kill judged the whole way in that wake-up is remembered under its moment, and a repeat
    in a later wake-up is replayed only if its own moment has the same minute and version. A
    reload or a minute's turn in the microseconds between the moment and a judgement can only
    make the remembered kill stand for the rest of that one wake-up's connections, which are
    then answered as if they had come those microseconds later (as the DNS fast path answers
    the datagrams of one wake-up: schoolgate.dns.fastpath.Drain).
    """

    __slots__ = ("minute", "ts", "version")

    def __init__(self, ts: float, version: object) -> None:
        self.ts = ts
        self.minute = ts // 60
        self.version = version


class _Kill:
    __slots__ = ("_facts", "client", "judgement", "minute", "until", "version")

    def __init__(self, client: Client, judgement: Judgement, version: object, minute: float, until: float) -> None:
        self.client = client
        self.judgement = judgement
        self.version = version
        self.minute = minute
        self.until = until
        self._facts: tuple[Any, ...] | None = None

    def facts(self, services: Services) -> tuple[Any, ...]:
        """The facts of the kill's ask, as EventLog makes them: made at the first repeat (most
        kills are never repeated), then shared by every repeat's ask."""
        if self._facts is None:
            self._facts = EventLog(services).facts(self.client, self.judgement)
        return self._facts


class RepeatKills:
    """The kills of this minute, by (address, SNI, destination), and their replay."""

    def __init__(self, services: Services, limit: int = REMEMBERED_LIMIT) -> None:
        if services.submit_ask is None or services.policy_version is None or services.identify_cached is None:
            raise ValueError("remembering kills needs submit_ask, policy_version and identify_cached")
        self._services = services
        self._submit: Callable[[Ask], bool] = services.submit_ask
        self._version: Callable[[], object] = services.policy_version
        self._identify: Callable[[str], Client | None] = services.identify_cached
        self._limit = limit
        self._kills: dict[Key, _Kill] = {}
        self._minute = -1.0
        self.replayed = 0

    def moment(self) -> Moment:
        """The instant and policy version for the connections accepted now."""
        return Moment(self._services.now().timestamp(), self._version())

    def recall(self, moment: Moment, peer: Any, sni: str, destination: Any) -> _Kill | None:
        """The remembered kill that stands for this connection, or None."""
        kill = self._kills.get((peer[0], sni, destination))
        if kill is None or kill.minute != moment.minute or kill.version != moment.version or moment.ts >= kill.until:
            return None
        client = self._identify(_ip_of(peer) or "0.0.0.0")  # as IdentifyClient asks
        if client is None or not (client is kill.client or client == kill.client):
            return None
        return kill

    def replay(self, kill: _Kill, moment: Moment) -> None:
        """Log and count a kill carried out from memory, as the whole way does (IdentifyClient,
        TlsGate, UpstreamGate, EventLog and Counters, see addons)."""
        counters = self._services.counters
        counters.connections_seen += 1
        counters.tls_seen += 1
        counters.killed += 1
        counters.upstream_refused += 1
        counters.events_submitted += 1
        if not self._submit((moment.ts, kill.judgement.target.host, None, 1, kill.facts(self._services))):
            counters.events_refused += 1
        self.replayed += 1

    def note(self, moment: Moment, peer: Any, sni: str | None, destination: Any, conn_id: str) -> None:
        """Remember the kill just made the whole way, in the wake-up of `moment`, for connection
        `conn_id` (its state still held), if it may stand for its repeats (see the module
        docstring)."""
        state: ConnState | None = self._services.connections.get(conn_id)
        judgement = state.judgement if state is not None else None
        if state is None or judgement is None or judgement.action is not Action.KILL or not sni:
            return
        decision = judgement.decision
        if not judgement.target.host or judgement.fronted_host is not None or FLAG_FRONTING in decision.flags:
            return  # the address book had a say
        if moment.minute != self._minute or len(self._kills) >= self._limit:
            self._kills.clear()
            self._minute = moment.minute
        until = decision.valid_until.timestamp() if decision.valid_until is not None else _NEVER
        self._kills[(peer[0], sni, destination)] = _Kill(state.client, judgement, moment.version, moment.minute, until)

    def __len__(self) -> int:
        return len(self._kills)
