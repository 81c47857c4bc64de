"""One access attempt as the ``events`` table stores it, in plain values.

The DNS daemon, the proxy and the gateway's watcher all make their records here (``from_decision``
for a policy decision), so every source logs the DfE fields the same way.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, TypeAlias

from schoolgate.policy.types import Client, Decision, Target, Verdict


def flags_text(flags: frozenset[str] | str) -> str:
    """The flags as the events table stores them: sorted, comma-separated, no blanks."""
    try:
        return _remembered_flags_text(flags)
    except TypeError:  # a set or list from a caller outside the types: not hashable, still valid
        return _flags_text(flags)


def _flags_text(flags: Iterable[str] | str) -> str:
    items: Iterable[str] = flags.split(",") if isinstance(flags, str) else flags
    return ",".join(sorted({f.strip() for f in items if f.strip()}))


# Flags come from a handful of names the daemons set, so a few sets cover every event: remembering
# their text took a quarter of the writer's flush of blocked queries down to a dictionary lookup.
# Bounded, as a flags string read back from a spool may be anything.
_remembered_flags_text = functools.lru_cache(maxsize=256)(_flags_text)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One access attempt, as the ``events`` table stores it (see models.AccessEvent)."""

    ts: datetime  # aware
    site: str
    source: str  # dns, proxy, console
    client_ip: str
    host: str
    verdict: str  # schoolgate.policy.types.Verdict value
    rule_id: str
    role: str
    mac: str | None = None
    device_id: str | None = None
    device_name: str | None = None
    person_id: str | None = None
    person_name: str | None = None
    qtype: str | None = None
    url: str | None = None
    search_term: str | None = None
    clause: str = ""
    service: str | None = None
    category: str | None = None
    flags: frozenset[str] | str = frozenset()
    count: int = 1
    uid: str | None = None  # None: the EventWriter gives it one
    identity_source: str | None = None  # which source identified the client (schoolgate.identity.evidence)

    def __post_init__(self) -> None:
        if self.ts.tzinfo is None:
            raise ValueError("EventRecord.ts must be an aware datetime")

    @classmethod
    def from_decision(
        cls,
        decision: Decision,
        client: Client,
        target: Target,
        *,
        site: str,
        source: str,
        ts: datetime,
        qtype: str | None = None,
        search_term: str | None = None,
        count: int = 1,
    ) -> EventRecord:
        """The record for one policy decision, so that DNS and proxy log identically.

        ``count`` > 1: the allowed queries of one client and name in one minute, folded."""
        return cls(
            ts=ts,
            site=site,
            source=source,
            client_ip=client.ip,
            mac=client.mac,
            device_id=client.device_id,
            device_name=client.device_name,
            person_id=client.person_id,
            person_name=client.person_name,
            role=decision.role.value,
            host=target.host,
            qtype=qtype,
            url=target.url,
            search_term=search_term,
            verdict=decision.verdict.value,
            rule_id=decision.rule_id,
            clause=decision.clause,
            service=decision.service,
            category=decision.category,
            flags=frozenset(decision.flags),
            count=count,
            identity_source=client.identity_source,
        )

    @property
    def flag_set(self) -> frozenset[str]:
        text = flags_text(self.flags)
        return frozenset(text.split(",")) if text else frozenset()

    @property
    def is_plain_allow(self) -> bool:
        """Allowed and not flagged: the kind of traffic that is logged per domain per minute."""
        return self.verdict in (Verdict.ALLOW.value, Verdict.SAFE_SEARCH.value) and not self.flag_set

    def row(self) -> dict[str, Any]:
        """Column values for an insert into ``events``."""
        values = dict(zip(RECORD_FIELDS, _record_values(self), strict=True))
        flags = self.flags
        values["flags"] = flags_text(flags) if flags else ""
        values["ts"] = self.ts.astimezone(UTC)
        return values


RECORD_FIELDS = tuple(f.name for f in fields(EventRecord))
_record_values = operator.attrgetter(*RECORD_FIELDS)  # one C call for every field

# A compact event: the values of RECORD_FIELDS but the uid, in that order, with ``ts`` as POSIX
# seconds (a float), ``verdict`` and ``role`` as plain strings, and ``flags`` as any iterable of
# strings. It is what the DNS hot path hands to the EventWriter: a tuple of values it already
# holds, built in well under a microsecond, where a record costs several; the writer's thread
# turns it into a record (``from_compact``).
CompactEvent: TypeAlias = tuple[Any, ...]
_UID_AT = RECORD_FIELDS.index("uid")
COMPACT_FIELDS = RECORD_FIELDS[:_UID_AT] + RECORD_FIELDS[_UID_AT + 1 :]
_FLAGS_AT = COMPACT_FIELDS.index("flags")


def from_compact(event: CompactEvent) -> EventRecord:
    """The record a compact event stands for."""
    if len(event) != len(COMPACT_FIELDS):
        raise ValueError(f"a compact event has {len(COMPACT_FIELDS)} fields, not {len(event)}")
    flags = event[_FLAGS_AT]
    values = list(event)
    values[_FLAGS_AT] = flags if isinstance(flags, str) else frozenset(flags)
    values[0] = datetime.fromtimestamp(event[0], UTC)
    values.insert(_UID_AT, None)
    return EventRecord(*values)


def compact(record: EventRecord) -> CompactEvent:
    """The compact form of a record (its uid is left out: the writer gives one)."""
    values = list(_record_values(record))
    del values[_UID_AT]
    values[0] = record.ts.timestamp()
    return tuple(values)


# An ask: a compact event as the DNS daemon hands most of them over, (ts, host, qtype, count,
# facts), where `facts` is a tuple of the other COMPACT_FIELDS' values in their order (ASK_FACTS),
# the flags among them as the text the events table stores (flags_text). The facts are the same
# for every event of one decision for one client, so the events stage makes them once and
# shares the tuple: per event it builds five slots instead of twenty-two, and the channel's
# ``marshal`` writes a shared tuple once per batch and a reference after that. The writer
# stores an ask as it came: its row is its four values and its facts, in that order, with the
# time made storable and a uid added (rows.SqliteRows.build_ask), the same row as the compact
# event it stands for (``from_ask``) would make.
Ask: TypeAlias = tuple[float, str, str | None, int, tuple[Any, ...]]  # no type: not a DNS query
_ASKED = ("ts", "host", "qtype", "count")
ASK_FACTS = tuple(name for name in COMPACT_FIELDS if name not in _ASKED)
ASK_LEN = len(_ASKED) + 1
ASK_FIELDS = (*_ASKED, *ASK_FACTS)  # an ask's values, its facts spread out, in order
_FACTS_LEN = len(ASK_FACTS)
# An ask's four values and its facts, in a row, put in COMPACT_FIELDS' order by one C call.
_compact_of_ask = operator.itemgetter(*(ASK_FIELDS.index(name) for name in COMPACT_FIELDS))


def decision_facts(
    decision: Decision, client: Client, *, site: str, source: str, url: str | None = None,
    search_term: str | None = None, flags: frozenset[str] | None = None,
) -> tuple[Any, ...]:
    """The facts (ASK_FACTS) of the events of `decision` for `client`: every value of the
    record EventRecord.from_decision makes but the time, name, type and count, the flags (the
    decision's, unless given) as their stored text."""
    shown = decision.flags if flags is None else flags
    return (
        site, source, client.ip, decision.verdict._value_, decision.rule_id, decision.role._value_,
        client.mac, client.device_id, client.device_name, client.person_id, client.person_name, url, search_term,
        decision.clause, decision.service, decision.category, flags_text(shown) if shown else "",
        client.identity_source,
    )


def ask_facts_valid(ask: tuple[Any, ...]) -> tuple[Any, ...]:
    """An ask's facts; ValueError for anything that is not an ask."""
    if len(ask) != ASK_LEN:
        raise ValueError(f"an ask has {ASK_LEN} fields, not {len(ask)}")
    facts = ask[4]
    if type(facts) is not tuple or len(facts) != _FACTS_LEN:
        raise ValueError(f"an ask's facts are a tuple of {_FACTS_LEN} values")
    return facts


def from_ask(ask: tuple[Any, ...]) -> CompactEvent:
    """The compact event an ask stands for; ValueError for anything that is not an ask."""
    return _compact_of_ask(ask[:4] + ask_facts_valid(ask))  # type: ignore[no-any-return]
