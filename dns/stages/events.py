"""Log what the DfE filtering and monitoring standards ask for, without slowing the answer.

Blocked and special-name answers are logged in full (time, client IP, MAC, device, person,
role, name, type, verdict, rule). Allowed queries are logged at domain level: the stage counts
them per (minute, client, name) and, once the minute is over, hands one record per key to the
sink: one row per client and domain per minute, built once, not once per query (a record costs
more than answering the query did). The daemon calls `flush_due` a few times a second, which
hands over a bounded slice of the finished minutes, so no single call stalls the answers; a
flood of distinct names that would outgrow `max_folded` is handed over early instead.
The sink's `submit` never blocks (a bounded queue in schoolgate.store.events). Events are
handed over as compact tuples (schoolgate.store.events.record.CompactEvent) to a sink that takes
them (`submit_compact`: the EventWriter, whose thread makes the records): building a record here
cost more than deciding a blocked query did.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from schoolgate.clock import Clock
from schoolgate.dns.chain import Answer, Result, Stage, then
from schoolgate.dns.wire import Query, type_name
from schoolgate.policy.types import Client, Decision, Role, Verdict
from schoolgate.store.events.record import CompactEvent, EventRecord, from_compact

SPECIAL_VERDICTS = {"dns.special.appliance-name": Verdict.ALLOW.value}
SPECIAL_CLAUSE = "schoolgate DNS: names answered by the appliance itself"
MAX_FOLDED = 50_000  # distinct (minute, client, name) keys held before handing over early
FLUSH_SLICE = 500  # records handed over per flush_due call


def compact_event(
    decision: Decision, client: Client, host: str, qtype: int, *, site: str, ts: float, count: int = 1
) -> CompactEvent:
    """The event of one decision (or `count` folded ones) in compact form: the record
    EventRecord.from_decision makes, as record.COMPACT_FIELDS orders its values."""
    return (
        ts, site, "dns", client.ip, host, decision.verdict._value_, decision.rule_id, decision.role._value_,
        client.mac, client.device_id, client.device_name, client.person_id, client.person_name,
        type_name(qtype), None, None, decision.clause, decision.service, decision.category, decision.flags, count,
        client.identity_source,
    )


class EventSink(Protocol):
    def submit(self, record: EventRecord) -> bool: ...


def _compact_submitter(sink: EventSink) -> Callable[[CompactEvent], bool]:
    """How to hand a compact event to `sink`: as it is, if the sink takes them."""
    takes_compact = getattr(sink, "submit_compact", None)
    if takes_compact is not None:
        return takes_compact  # type: ignore[no-any-return]
    return lambda event: sink.submit(from_compact(event))


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
        self.logged = 0

    def _now(self) -> float:
        return self._clock.now().timestamp() if self._clock is not None else time.time()

    def set_sink(self, sink: EventSink) -> None:
        self.sink = sink
        self.submit = _compact_submitter(sink)

    def held(self) -> tuple[int, int]:
        """(rows, queries) folded in memory and not yet handed to the sink: what a kill loses.

        Read from the event writer's thread: a length and an int, never an iteration.
        """
        return len(self._folded), self._held_queries

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
        if decision.verdict is Verdict.BLOCK or decision.flags:
            self.submit(compact_event(
                decision, client or Client(ip=client_ip), qname, qtype, site=self.site, ts=ts,
            ))
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

    def flush(self) -> int:
        """Hand every folded allowed query to the sink (at shutdown, and in tests)."""
        folded, self._folded = self._folded, {}
        self._held_queries = 0
        for key, slot in folded.items():
            self._submit_folded(key, slot)
        return len(folded)

    def flush_due(self, now: datetime, limit: int = FLUSH_SLICE) -> int:
        """Hand over up to `limit` keys of the minutes before `now`'s; returns how many."""
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
        who = client if isinstance(client, Client) else Client(ip=key[1])
        assert isinstance(qtype, int)
        self.submit(compact_event(decision, who, key[2], qtype, site=self.site, ts=ts, count=count))
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
