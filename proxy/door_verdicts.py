"""Verdicts at the front door: a ClientHello that its name alone blocks killed, and one that is
passed spliced, without mitmproxy's objects or the hooks.

Most connections the proxy kills are a blocked app's: a pupil's tablet tries Facebook or a
game's servers again and again, each time the same device, SNI and address. The whole way
through the addons (schoolgate.proxy.front: mitmproxy's connection objects, each member's
hooks, then the event log and the counters) cost more than twice what judging it did. Here a
connection whose device was identified lately (`identify_cached`, as IdentifyClient asks) is
judged by the one judge as TlsGate asks it (addons.judge_hello); if the verdict is a kill that
the name decided, it is carried out at once, with the event and the counters the whole way
gives (`replay`), and remembered for the device's repeats of this minute.

What is remembered stands while nothing its verdict depends on can have moved:

- the device: the recent identity of its address is the one judged;
- the policy: its version (policy and database overlay: a reload, a new ban or a revoked
  exception moves it) is the one read before judging;
- the time: the same minute (the policy's windows change on whole minutes, and the engine
  caches its decisions per minute too), and before the decision's `valid_until`;
- the address book does not enter: only a kill that the name decided is carried out here,
  not one without a name (no SNI) or for fronting (the name allowed, the address a blocked
  service's), which depend on what the book knows of the address.

A pass is carried out at the door too (`DoorPass`), judged afresh for every connection and
never remembered: whether the dialled address is a blocked service's (fronting) is the address
book's to say, and what it knows changes as names are resolved and expire. The whole way's
work for a pass came to about a quarter of a passthrough's instructions (mitmproxy's client,
context and server objects, the hooks, a ClientHello judged a second time): `replay_pass` does
what its hooks do (the counters, the event or the minute's fold, and the connection's state,
which Rejudge reads to close it if its verdict turns to a block), and `pass_ended` what they
do at its end.

Anything else goes the whole way: a device not identified lately, the block page, a kill the
address book had a say in, a judge that failed. So that a device's
connections that go the whole way are not judged twice each, such a verdict is remembered
too, as "the whole way", for the same minute and version.

`tests/proxy/test_door_verdicts.py` runs the same connections both ways and compares the events and
the counters, and has Rejudge close a pass carried out either way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from schoolgate.policy.types import Client, Decision
from schoolgate.proxy.addons import ConnState, EventLog, Services, _ip_of, judge_hello
from schoolgate.proxy.allowed import is_plain_allow
from schoolgate.proxy.judge import FLAG_FRONTING, Action, Judgement
from schoolgate.store.events.record import Ask

# (address, SNI, destination) verdicts remembered within one minute; a full table starts over (a
# miss costs one judgement). Emptied when a new minute's first verdict is stored.
REMEMBERED_LIMIT = 8192
_NEVER = float("inf")

Key = tuple[str, str, Any]  # (the device's address as accepted, the SNI as sent, the destination)


class Moment:
    """What the connections of one accepting wake-up share: the policy clock's instant and the
    policy's version, read once for them, before any of them is judged.

    A verdict judged in that wake-up is remembered under its moment, and stands for a later
    connection only if that connection's own moment has the same minute and version. A reload
    or a minute's turn in the microseconds between the moment and a judgement can only make
    the verdict stand for the rest of that one wake-up's connections, which are then answered
    as if they had come those microseconds later (as the DNS fast path answers the datagrams
    of one wake-up: schoolgate.dns.fastpath.Drain).
    """

    __slots__ = ("minute", "now", "ts", "version")

    def __init__(self, ts: float, version: object, now: datetime | None = None) -> None:
        self.ts = ts
        self.minute = ts // 60
        self.version = version
        # The instant as the judge takes it (`ts` as an aware datetime): read from the clock once
        # for the wake-up's connections, not once for each connection judged.
        self.now = now if now is not None else datetime.fromtimestamp(ts, UTC)


class _Verdict:
    """A remembered verdict: a kill (its judgement), or None: the whole way."""

    __slots__ = ("client", "facts", "judgement", "minute", "until", "version")

    def __init__(
        self, client: Client, judgement: Judgement | None, version: object, minute: float, until: float
    ) -> None:
        self.client = client
        self.judgement = judgement
        self.version = version
        self.minute = minute
        self.until = until
        # The facts of the kill's ask, once made (DoorVerdicts.replay): shared by every repeat's.
        self.facts: tuple[Any, ...] | None = None


class DoorPass:
    """A connection the door's judgement passes: spliced there, with no mitmproxy object and no
    hook, then logged, counted and put in the connections' state (for Rejudge) as the whole way
    does (`DoorVerdicts.replay_pass`). Judged afresh for each connection, never remembered: a
    pass depends on what the address book knows of the dialled address (fronting), which can
    change at any moment."""

    __slots__ = ("client", "dialled_ip", "judgement", "sni")

    def __init__(self, client: Client, judgement: Judgement, sni: str, dialled_ip: str) -> None:
        self.client = client
        self.judgement = judgement
        self.sni = sni
        self.dialled_ip = dialled_ip


class DoorVerdicts:
    """The front door's verdicts: kills judged there or remembered from this minute, and
    passes judged there; each carried out there."""

    def __init__(self, services: Services, limit: int = REMEMBERED_LIMIT) -> None:
        if services.submit_ask is None or services.policy_version is None or services.identify_cached is None:
            raise ValueError("killing at the front door needs submit_ask, policy_version and identify_cached")
        self._services = services
        self._submit: Callable[[Ask], bool] = services.submit_ask
        self._version: Callable[[], object] = services.policy_version
        self._identify: Callable[[str], Client | None] = services.identify_cached
        self._limit = limit
        self._verdicts: dict[Key, _Verdict] = {}
        # The facts of this minute's kills by (client, decision), the two objects kept with them
        # (so neither id is reused while it is here): a device's kills of many names of one
        # blocked service or list entry share one decision (the engine's, per kind of match), and
        # so one facts tuple, which the channel sends once per batch and the writer checks once.
        self._facts: dict[tuple[int, int], tuple[Client, Decision, tuple[Any, ...]]] = {}
        self._minute = -1.0
        self.judged = 0  # kills judged at the front door
        self.replayed = 0  # kills carried out from memory (repeats of a kill of this minute)
        self.passed = 0  # connections passed through at the front door

    def moment(self) -> Moment:
        """The instant and policy version for the connections accepted now."""
        now = self._services.now()
        return Moment(now.timestamp(), self._version(), now)

    def judge(self, moment: Moment, peer: Any, sni: str, destination: Any) -> _Verdict | DoorPass | None:
        """The verdict for this connection (a ClientHello naming `sni`, from `peer`, to
        `destination`) that the door carries out: a kill, remembered from this minute or judged
        now; or a pass, judged now; None: the whole way."""
        key = (peer[0], sni, destination)
        known = self._verdicts.get(key)
        fresh = (
            known is not None and known.minute == moment.minute and known.version == moment.version
            and moment.ts < known.until
        )
        if fresh and known is not None and known.judgement is None:
            return None  # the whole way, as this minute's last verdict for it said
        client = self._identify(_ip_of(peer) or "0.0.0.0")  # as IdentifyClient asks
        if client is None:
            return None  # to be looked up off the loop: the whole way
        if fresh and known is not None and (client is known.client or client == known.client):
            self.replayed += 1
            return known
        try:
            judgement = judge_hello(self._services, client, sni, destination, moment.now)
        except Exception:  # the whole way judges it again, and logs and counts the failure
            return None
        if judgement.action is Action.PASS:
            dialled_ip = _ip_of(destination)
            if dialled_ip is None:  # dialled by name (not the transparent proxy's case): the whole way
                return None
            self.passed += 1
            return DoorPass(client, judgement, sni, dialled_ip)
        decision = judgement.decision
        by_name = (
            judgement.action is Action.KILL and bool(judgement.target.host) and judgement.fronted_host is None
            and FLAG_FRONTING not in decision.flags
        )
        verdict = self._remember(key, moment, client, judgement if by_name else None)
        if not by_name:
            return None
        self.judged += 1
        return verdict

    def _remember(self, key: Key, moment: Moment, client: Client, judgement: Judgement | None) -> _Verdict:
        if moment.minute != self._minute or len(self._verdicts) >= self._limit:
            self._verdicts.clear()
            self._facts.clear()
            self._minute = moment.minute
        until = _NEVER
        if judgement is not None and judgement.decision.valid_until is not None:
            until = judgement.decision.valid_until.timestamp()
        verdict = self._verdicts[key] = _Verdict(client, judgement, moment.version, moment.minute, until)
        return verdict

    def replay(self, kill: _Verdict, moment: Moment) -> None:
        """Log and count a kill carried out at the front door, as the whole way does
        (IdentifyClient, TlsGate, UpstreamGate, EventLog and Counters, see addons)."""
        assert kill.judgement is not None
        counters = self._services.counters
        counters.connections_seen += 1
        counters.tls_seen += 1
        counters.killed += 1
        counters.upstream_refused += 1
        counters.events_submitted += 1
        facts = kill.facts
        if facts is None:
            facts = kill.facts = self._facts_of(kill.client, kill.judgement)
        if not self._submit((moment.ts, kill.judgement.target.host, None, 1, facts)):
            counters.events_refused += 1

    def _facts_of(self, client: Client, judgement: Judgement) -> tuple[Any, ...]:
        """The facts of the ask of a kill at the door, as EventLog makes them; shared by the kills
        of this minute whose client and decision are the same objects. (A kill at the door is a
        ClientHello's: its target is a name, never a URL, so nothing else enters the facts.)"""
        decision = judgement.decision
        key = (id(client), id(decision))
        known = self._facts.get(key)
        if known is not None and known[0] is client and known[1] is decision:
            return known[2]
        facts = EventLog(self._services).facts(client, judgement)
        self._facts[key] = (client, decision, facts)
        return facts

    def replay_pass(self, door_pass: DoorPass, conn_id: str) -> None:
        """Log and count a pass carried out at the front door, and keep its state under
        `conn_id` (Rejudge closes it if its verdict turns to a block), as the whole way does
        (IdentifyClient, TlsGate, UpstreamGate, EventLog and Counters, see addons)."""
        services = self._services
        judgement = door_pass.judgement
        state = ConnState(client=door_pass.client, judgement=judgement, sni=door_pass.sni,
                          dialled_ip=door_pass.dialled_ip, passthrough=True)
        services.connections.put(conn_id, state)
        counters = services.counters
        counters.connections_seen += 1
        counters.tls_seen += 1
        counters.passed_through += 1
        fold = services.fold_allowed
        if fold is not None and is_plain_allow(judgement.decision):
            counters.events_submitted += 1
            fold(judgement.decision, door_pass.client, judgement.target.host, services.now())
        else:
            EventLog(services).submit(state, judgement)

    def pass_ended(self, conn_id: str) -> None:
        """A pass carried out at the front door has ended: its state goes (as Forget does)."""
        self._services.connections.pop(conn_id)

    def __len__(self) -> int:
        return len(self._verdicts)
