"""Log what the DfE filtering and monitoring standards ask for, without slowing the answer.

Blocked and special-name answers are logged in full (time, client IP, MAC, device, person,
role, name, type, verdict, rule); in the daemon a device's repeated asks of one blocked name (a
phone's A, AAAA and HTTPS) are one event with their count and types, folded until the next tick
(`fold_asks`). Allowed queries are logged at domain level: the stage counts
them per (minute, client, name) and, once the minute is over, hands one record per key to the
sink: one row per client and domain per minute, built once, not once per query (a record costs
more than answering the query did). The daemon calls `flush_due` a few times a second, which
hands over a bounded slice of the finished minutes, so no single call stalls the answers; a
flood of distinct names that would outgrow `max_folded` is handed over early instead.
The sink's `submit` never blocks (a bounded queue in schoolgate.store.events). Events are
handed over as asks (schoolgate.store.events.record.Ask: the time, name, type and count, and
the facts of the decision and client, a tuple made once per decision and client and shared) to
a sink that takes them (`submit_ask`: the EventChannel to the writing process), or as the
compact tuples they stand for (`submit_compact`: the EventWriter, whose thread makes the
records): building a record here cost more than deciding a blocked query did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from schoolgate.clock import Clock
from schoolgate.dns.chain import Answer, Result, Stage, then
from schoolgate.dns.wire import LONGEST_TYPE_NAME, Query, type_name
from schoolgate.policy.types import Client, Decision, Role, Verdict
from schoolgate.store.events.record import Ask, CompactEvent, EventRecord, decision_facts, from_ask, from_compact
from schoolgate.store.events.repeats import FOLD_WINDOW_S, QTYPES_WIDTH, add_types

SPECIAL_VERDICTS = {"dns.special.appliance-name": Verdict.ALLOW.value}
SPECIAL_CLAUSE = "schoolgate DNS: names answered by the appliance itself"
MAX_FOLDED = 50_000  # distinct (minute, client, name) keys held before handing over early
FLUSH_SLICE = 500  # records handed over per flush_due call
FACTS_LIMIT = 4096  # (decision, client) pairs whose ask facts are kept; a full table starts over
_BLOCK = Verdict.BLOCK  # a module global: an enum member read through its class costs more, every query
# An attempt of up to this many types always fits the events table's column, whatever the types:
# a new type is then appended without joining the names to measure them.
TYPES_THAT_ALWAYS_FIT = (QTYPES_WIDTH + 1) // (LONGEST_TYPE_NAME + 1)
TYPE_TEXTS_LIMIT = 256  # the texts of the type lists folded attempts had ("A,AAAA,HTTPS"), kept


def compact_event(
    decision: Decision, client: Client, host: str, qtype: int | str, *, site: str, ts: float, count: int = 1
) -> CompactEvent:
    """The event of one decision (or `count` folded ones) in compact form: the record
    EventRecord.from_decision makes, as record.COMPACT_FIELDS orders its values. `qtype` is the
    type asked, or the text of the types asked ("A,AAAA,HTTPS")."""
    asked = type_name(qtype) if type(qtype) is int else qtype
    return from_ask((ts, host, asked, count, decision_facts(decision, client, site=site, source="dns")))


class EventSink(Protocol):
    def submit(self, record: EventRecord) -> bool: ...


def _compact_submitter(sink: EventSink) -> Callable[[CompactEvent], bool]:
    """How to hand a compact event to `sink`: as it is, if the sink takes them."""
    takes_compact = getattr(sink, "submit_compact", None)
    if takes_compact is not None:
        return takes_compact  # type: ignore[no-any-return]
    return lambda event: sink.submit(from_compact(event))


def _ask_submitter(sink: EventSink, submit: Callable[[CompactEvent], bool]) -> Callable[[Ask], bool]:
    """How to hand an ask to `sink`: as it is, if the sink takes them, else as the compact
    event it stands for (through `submit`)."""
    takes_asks = getattr(sink, "submit_ask", None)
    if takes_asks is not None:
        return takes_asks  # type: ignore[no-any-return]
    return lambda ask: submit(from_ask(ask))


class EventsStage(Stage):
    name = "events"

    def __init__(
        self,
        sink: EventSink,
        site: str,
        role_for: Callable[[Client], Role] | None = None,
        default_role: Role = Role.GUEST,
        *,
        max_folded: int = MAX_FOLDED,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.sink = sink
        self.submit = _compact_submitter(sink)
        self.submit_ask = _ask_submitter(sink, self.submit)
        # (id of a decision, id of its client or the client's IP) -> (decision, client, their ask
        # facts): the facts of every event of one decision for one client are one shared tuple.
        # The entry holds the two objects, so their ids stay theirs while it is kept.
        self._facts: dict[tuple[int, int | str], tuple[Decision, Client | None, tuple[Any, ...]]] = {}
        # The daemon's clock, for answers given before the policy stage stamped the query (the
        # appliance's own names, the DoH and Private Relay canaries): every event of one daemon
        # is on one clock, as the alert scan that orders them by time expects.
        self._clock = clock
        self.max_folded = max_folded
        self.role_for = role_for
        self.site = site
        self.default_role = default_role
        # (minute, client ip, name, verdict) -> [count, query decision, client, qtype, first time]
        self._folded: dict[tuple[int, str, str, str], list[object]] = {}
        self._held_queries = 0  # the queries counted in _folded
        # Blocked and flagged attempts being folded (hold_asks): (client ip, name) -> an attempt (_hold).
        self.hold_asks = 0
        self._attempts: dict[tuple[str, str], list[Any]] = {}
        self._held_asks = 0  # the queries in _attempts
        self._type_texts: dict[tuple[int, ...], str] = {}  # a folded attempt's types -> their text
        self.logged = 0

    def _now(self) -> float:
        return self._clock.now().timestamp() if self._clock is not None else time.time()

    def set_sink(self, sink: EventSink) -> None:
        self.sink = sink
        self.submit = _compact_submitter(sink)
        self.submit_ask = _ask_submitter(sink, self.submit)

    def facts(self, decision: Decision, client: Client | None, client_ip: str) -> tuple[Any, ...]:
        """The facts (record.ASK_FACTS) of the events of `decision` for `client` (None: known
        by `client_ip` alone), made once per decision and client: compact_event's values but
        the time, name, type and count."""
        key = (id(decision), client_ip if client is None else id(client))
        known = self._facts.get(key)
        if known is not None and known[0] is decision and known[1] is client:
            return known[2]
        facts = decision_facts(
            decision, client if client is not None else Client(ip=client_ip), site=self.site, source="dns"
        )
        if len(self._facts) >= FACTS_LIMIT:
            self._facts = {}
        self._facts[key] = (decision, client, facts)
        return facts

    def held(self) -> tuple[int, int]:
        """(rows, queries) folded in memory and not yet handed to the sink: what a kill loses.

        Read from the event writer's thread: lengths and ints, never an iteration.
        """
        return len(self._folded) + len(self._attempts), self._held_queries + self._held_asks

    def fold_asks(self, rows: int) -> None:
        """Fold each device's repeated asks for a blocked or flagged name (a phone asks A, AAAA
        and HTTPS at once) into one event before it is handed over, holding at most `rows`
        attempts until the next ``flush_due`` (the daemon's tick) or ``flush``.

        The event is what the writer would have made of the asks (store.events.repeats: the
        same rule, a `count` and the types in the order asked, the first ask's time), but its
        tuple is built, sent, decoded and folded once per attempt instead of once per ask. The
        daemon hands its events over on that tick anyway (its channel sends then), so holding
        them there delays no event and a kill loses no more: what is held is counted in
        ``held``. 0: hand each ask over at once (the default)."""
        if rows < 0:
            raise ValueError("fold_asks: rows must be >= 0")
        if rows == 0:
            self.hand_over_attempts()
        self.hold_asks = rows

    def resolve(self, query: Query) -> Result:
        result = self.pass_on(query)
        if result is None or isinstance(result, bytes | bytearray):  # chain.is_ready, inlined: every query
            self._log(query)
            return result
        # Upstream may still change the verdict (a CNAME to a blocked name): log when answered.
        return then(result, lambda answer: self._logged(query, answer))

    def _logged(self, query: Query, answer: Answer) -> Answer:
        self._log(query)
        return answer

    def _log(self, query: Query) -> None:
        decision = query.decision
        if query.answered_by == "special":
            self._special(query)
        elif decision is not None:
            self.record(decision, query.client, query.client_ip, query.qname, query.qtype, ts=query.ts or self._now())

    def record(
        self, decision: Decision, client: Client | None, client_ip: str, qname: str, qtype: int, *, ts: float
    ) -> None:
        """Log one decided query: blocked and flagged ones in full, allowed ones folded per minute.
        (The chain's events come here, and the fast path's: schoolgate.dns.fastpath.)"""
        if decision.verdict is _BLOCK or decision.flags:
            if self.hold_asks:
                self._hold(decision, client, (client_ip, qname), qtype, ts)
                return
            self.submit_ask((ts, qname, type_name(qtype), 1, self.facts(decision, client, client_ip)))
            self.logged += 1
            return
        key = (int(ts) // 60, client_ip, qname, decision.verdict._value_)
        slot = self._folded.get(key)
        if slot is None:
            if len(self._folded) >= self.max_folded:
                self.flush()
            self._folded[key] = [1, decision, client, qtype, ts]
        else:
            slot[0] += 1  # type: ignore[operator]
        self._held_queries += 1

    def _hold(self, decision: Decision, client: Client | None, key: tuple[str, str], qtype: int, ts: float) -> None:
        """Fold a blocked or flagged ask into its attempt (see fold_asks); `key` is (client ip, name).

        An ask is the attempt's if it has the same decision and client (so every fact of its
        event but the time, type and count is the same) and came within FOLD_WINDOW_S of the
        attempt's first ask. An attempt is a list (the cheapest thing to make once per blocked
        name): [decision, client, the type asked or a list of the types, count, first ask, time].
        """
        attempt = self._attempts.get(key)
        if attempt is not None:
            if ((attempt[0] is decision or attempt[0] == decision)
                    and (attempt[1] is client or attempt[1] == client)
                    and -FOLD_WINDOW_S <= ts - attempt[4] <= FOLD_WINDOW_S  # within_window, inlined: every ask
                    and (attempt[2] == qtype or _with_type(attempt, qtype))):
                attempt[3] += 1
                if ts < attempt[5]:  # noqa: PLR1730 (min() is a call, for every folded ask)
                    attempt[5] = ts
                self._held_asks += 1
                return
            del self._attempts[key]
            self._hand_over({key: attempt})
        elif len(self._attempts) >= self.hold_asks:
            self.hand_over_attempts()
        self._attempts[key] = [decision, client, qtype, 1, ts, ts]
        self._held_asks += 1

    def hand_over_attempts(self) -> int:
        """Hand every attempt being folded to the sink; returns how many."""
        attempts, self._attempts = self._attempts, {}
        self._hand_over(attempts)
        return len(attempts)

    def _hand_over(self, attempts: dict[tuple[str, str], list[Any]]) -> None:
        """Submit `attempts` (no longer in self._attempts): one loop, as this runs for every
        blocked name."""
        submit, facts, texts = self.submit_ask, self.facts, self._type_texts
        asks = 0
        for (client_ip, qname), (decision, client, types, count, _, ts) in attempts.items():
            if type(types) is int:
                asked = type_name(types)
            else:  # a few lists of types recur (A,AAAA,HTTPS): their text is kept
                listed = tuple(types)
                known = texts.get(listed)
                if known is None:
                    known = ",".join(map(type_name, listed))
                    if len(texts) >= TYPE_TEXTS_LIMIT:
                        texts.clear()
                    texts[listed] = known
                asked = known
            submit((ts, qname, asked, count, facts(decision, client, client_ip)))
            asks += count
        self._held_asks -= asks
        self.logged += len(attempts)

    def flush(self) -> int:
        """Hand every folded allowed query and attempt to the sink (at shutdown, and in tests)."""
        attempts = self.hand_over_attempts()
        folded, self._folded = self._folded, {}
        self._held_queries = 0
        for key, slot in folded.items():
            self._submit_folded(key, slot)
        return len(folded) + attempts

    def flush_due(self, now: datetime, limit: int = FLUSH_SLICE) -> int:
        """Hand over the attempts being folded, and up to `limit` keys of the minutes before `now`'s;
        returns how many keys of minutes."""
        if self._attempts:
            self.hand_over_attempts()
        current = int(now.timestamp()) // 60
        folded = self._folded
        due: list[tuple[int, str, str, str]] = []
        for key in folded:  # oldest first: a dict keeps the order keys were first seen in
            if key[0] >= current or len(due) >= limit:
                break
            due.append(key)
        for key in due:
            slot = folded.pop(key)
            self._held_queries -= slot[0]  # type: ignore[operator]
            self._submit_folded(key, slot)
        return len(due)

    def _submit_folded(self, key: tuple[int, str, str, str], slot: list[object]) -> None:
        count, decision, client, qtype, ts = slot
        assert isinstance(decision, Decision) and isinstance(ts, float) and isinstance(count, int)
        assert isinstance(qtype, int) and (client is None or isinstance(client, Client))
        self.submit_ask((ts, key[2], type_name(qtype), count, self.facts(decision, client, key[1])))
        self.logged += 1

    def _special(self, query: Query) -> None:
        client = query.client or Client(ip=query.client_ip)
        role = self.role_for(client) if self.role_for is not None else client.role or self.default_role
        ts = query.ts or self._now()
        # Browsers and phones ask these names by themselves (Firefox's DoH canary, iCloud
        # Private Relay's check, resolver discovery): recorded, never taken for intent, so
        # without a category.
        verdict = SPECIAL_VERDICTS.get(query.special_rule, Verdict.BLOCK.value)
        self.submit((
            ts, self.site, "dns", client.ip, query.qname, verdict, query.special_rule, role._value_,
            client.mac, client.device_id, client.device_name, client.person_id, client.person_name,
            type_name(query.qtype), None, None, SPECIAL_CLAUSE, None, None, "special_name", 1, client.identity_source,
        ))
        self.logged += 1



def _with_type(attempt: list[Any], qtype: int) -> bool:
    """Add `qtype` to the attempt's types (each once, in the order asked); False if the types
    would not fit the events table's column: the ask is then an attempt of its own."""
    types = attempt[2]
    if types == qtype:
        return True
    if type(types) is int:
        attempt[2] = [types, qtype]
        return True
    if qtype in types:
        return True
    if len(types) < TYPES_THAT_ALWAYS_FIT:
        types.append(qtype)
        return True
    return add_types(types, (qtype,), type_name, longest_name=LONGEST_TYPE_NAME)
