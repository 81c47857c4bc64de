"""Folding a burst's repeated asks: one row for a device's asks of one name, with their count.

A phone or tablet asks for a name as A, AAAA and HTTPS at once (and asks again when a
blocked answer makes the app retry): three or more blocked queries for one attempt. Written
one row each, every ask costs the event writer an entry in each of the table's indexes,
the largest part of its CPU per blocked query. Folded, the attempt is one row whose
``count`` is the exact number of asks and whose ``qtype`` lists the types asked, in the
order they came ("A,AAAA,HTTPS"), stamped with the first ask's time: every fact the DfE
standards ask for (device, address, person, time, name) is kept, and readers that count
attempts sum ``count`` (as they already do for allowed traffic, folded per minute).

The DNS workers fold an attempt's asks before they hand it over (dns.stages.events, by the same
rule), so here a DNS row meets only the asks that reached the worker's next hand-over, a few in a
thousand. Only compact events and asks (record.CompactEvent and record.Ask, what the DNS workers,
the proxy and net watch hand over) are folded, and only with an earlier event of the same burst
that is the same in every field but the time, the type and the count, asked within
``FOLD_WINDOW_S`` of it; a folded ask is still an ask (its row is built straight from it). A record
with a uid of its own (shipped from a spool or another appliance) is never folded: its uid
is its identity.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from schoolgate.store.events.record import ASK_FACTS, ASK_LEN, COMPACT_FIELDS, CompactEvent, EventRecord, from_ask

# Asks further apart than this are separate attempts, even within one burst (a burst can hold
# many seconds of events when the writer has fallen behind).
FOLD_WINDOW_S = 1.0

_TS = COMPACT_FIELDS.index("ts")
_CLIENT_IP = COMPACT_FIELDS.index("client_ip")
_HOST = COMPACT_FIELDS.index("host")
_QTYPE = COMPACT_FIELDS.index("qtype")
_COUNT = COMPACT_FIELDS.index("count")
_LEN = len(COMPACT_FIELDS)
_ASK_CLIENT_IP = ASK_FACTS.index("client_ip")  # in an ask's facts
_FACTS_LEN = len(ASK_FACTS)
assert _TS == 0 and _QTYPE < _COUNT, "fold_repeats compares the fields between ts, qtype and count"


def _qtypes_width() -> int:
    from schoolgate.store.models import AccessEvent

    length = getattr(AccessEvent.__table__.c.qtype.type, "length", None)
    if not isinstance(length, int):
        raise TypeError("events.qtype must be a string column of a fixed width")
    return length


QTYPES_WIDTH = _qtypes_width()  # a folded row's types must fit the column (PostgreSQL refuses more)
QType = TypeVar("QType")  # an int (a DNS worker's) or its name (the writer's)


# The rule, in two parts, shared with the DNS workers' fold (dns.stages.events), which keeps the
# types as numbers and the rest of an attempt in its own cheaper form.
def within_window(first_ask: float, ts: float) -> bool:
    """An ask at `ts` can be a repeat of an attempt first asked at `first_ask`."""
    return -FOLD_WINDOW_S <= ts - first_ask <= FOLD_WINDOW_S


def add_types(types: list[QType], asked: Iterable[QType], name: Callable[[QType], str], *,
              longest_name: int | None = None) -> bool:
    """Add the types in `asked` that `types` lacks, each once, in the order asked; False (and
    `types` unchanged) if their names, comma-joined, would not fit the events table's column:
    the ask is then an attempt of its own. `longest_name`, where the caller knows it, spares
    joining the names while so few are asked that they must fit."""
    new: list[QType] = []
    for qtype in asked:
        if qtype not in types and qtype not in new:
            new.append(qtype)
    if not new:
        return True
    count = len(types) + len(new)
    if (longest_name is None or count * (longest_name + 1) - 1 > QTYPES_WIDTH) and len(
            ",".join(map(name, (*types, *new)))) > QTYPES_WIDTH:
        return False
    types.extend(new)
    return True


def fold_repeats(records: Sequence[EventRecord | CompactEvent]) -> tuple[list[EventRecord | CompactEvent], int]:
    """The burst's records with each repeated ask folded into the first; and how many were folded.

    The order of the rest is kept. A compact event or an ask is folded into the row of an
    earlier one with the same client address and name when every other field but the time,
    type and count is the same and it came within ``FOLD_WINDOW_S`` of that row's first ask.
    """
    rows: list[EventRecord | CompactEvent] = []
    latest: dict[tuple[Any, Any], int] = {}  # (client address, name) -> where its newest row is
    grown: dict[int, _Row | _AskRow] = {}  # the rows that folded asks in, by where they are: made anew at the end
    folded = 0
    for record in records:
        if type(record) is not tuple:
            rows.append(record)
            continue
        size = len(record)
        if size == _LEN:
            key = (record[_CLIENT_IP], record[_HOST])
        elif size == ASK_LEN and type(facts := record[4]) is tuple and len(facts) == _FACTS_LEN:
            key = (facts[_ASK_CLIENT_IP], record[1])
        else:  # not an event: left for the row builder to refuse
            rows.append(record)
            continue
        at = latest.get(key)
        if at is not None:
            row = grown.get(at)
            if row is None:
                first: Any = rows[at]  # only compact events and asks are indexed
                row = _AskRow(first) if len(first) == ASK_LEN else _Row(first)
            if row.takes(record):
                grown[at] = row
                folded += 1
                continue
        latest[key] = len(rows)
        rows.append(record)
    for at, row in grown.items():
        rows[at] = row.made()
    return rows, folded


_facts = operator.itemgetter(*(n for n in range(1, _LEN) if n not in (_QTYPE, _COUNT)))


def _folded_types(qtypes: str | None, asked: str | None) -> tuple[bool, str | None]:
    """(whether `asked` folds in, the types then): each type named once, in the order asked,
    and no more than the column holds."""
    if asked is None or asked == qtypes:
        return True, qtypes
    if qtypes is None:
        return True, asked
    types = qtypes.split(",")  # an ask may be a row a DNS worker folded already: "A,AAAA"
    if not add_types(types, asked.split(","), str):
        return False, qtypes
    return True, ",".join(types)


class _AskRow:
    """An ask being folded (record.Ask: its facts are every field but the time, name, type and
    count): its first ask, and what later asks added. A compact event of the same attempt is
    compared as the compact event this ask stands for."""

    __slots__ = ("count", "first", "qtypes", "ts")

    def __init__(self, first: tuple[Any, ...]) -> None:
        self.first = first
        self.ts: float = first[0]
        self.qtypes: str | None = first[2]
        self.count: int = first[3]

    def takes(self, ask: tuple[Any, ...]) -> bool:
        first = self.first
        if not within_window(first[0], ask[0]):
            return False
        if len(ask) == ASK_LEN:
            if ask[4] is not first[4] and ask[4] != first[4]:
                return False
        elif _facts(ask) != _facts(from_ask(first)):
            return False
        fits, qtypes = _folded_types(self.qtypes, ask[_QTYPE] if len(ask) == _LEN else ask[2])
        if not fits:
            return False
        self.qtypes = qtypes
        self.count += ask[_COUNT] if len(ask) == _LEN else ask[3]
        self.ts = min(self.ts, ask[0])
        return True

    def made(self) -> tuple[Any, ...]:
        first = self.first
        return (self.ts, first[1], self.qtypes, self.count, first[4])


class _Row:
    """A row being folded: its first ask, and what later asks added."""

    __slots__ = ("count", "facts", "first", "qtypes", "ts")

    def __init__(self, first: CompactEvent) -> None:
        self.first = first
        self.facts: tuple[Any, ...] = _facts(first)
        self.ts = first[_TS]
        self.qtypes: str | None = first[_QTYPE]
        self.count: int = first[_COUNT]

    def takes(self, ask: CompactEvent) -> bool:
        """Fold `ask` in if it is a repeat of this row's attempt."""
        if len(ask) == ASK_LEN:  # an ask of the same attempt: compared as its compact event
            ask = from_ask(ask)
        if not within_window(self.first[_TS], ask[_TS]):
            return False
        if _facts(ask) != self.facts:
            return False
        fits, qtypes = _folded_types(self.qtypes, ask[_QTYPE])
        if not fits:
            return False
        self.qtypes = qtypes
        self.count += ask[_COUNT]
        self.ts = min(self.ts, ask[_TS])
        return True

    def made(self) -> CompactEvent:
        first = self.first
        return (self.ts, *first[1:_QTYPE], self.qtypes, *first[_QTYPE + 1 : _COUNT], self.count,
                *first[_COUNT + 1 :])
