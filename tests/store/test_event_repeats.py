"""A burst's repeated asks for one name by one device are written as one row with their count."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from schoolgate.store.events import EventRecord, EventWriter
from schoolgate.store.events.record import ASK_FACTS, ASK_LEN, COMPACT_FIELDS, CompactEvent, compact, from_ask
from schoolgate.store.events.repeats import FOLD_WINDOW_S, QTYPES_WIDTH, add_types, fold_repeats, within_window
from schoolgate.store.models import AccessEvent

T0 = datetime(2026, 11, 23, 10, 15, 5, tzinfo=UTC).timestamp()
QTYPE = COMPACT_FIELDS.index("qtype")


def record(**changes: Any) -> EventRecord:
    base = EventRecord(ts=datetime.fromtimestamp(T0, UTC), site="testschool", source="dns", client_ip="10.41.20.15",
                       host="ads.example", verdict="block", rule_id="list:ads", role="pupil",
                       mac="02:00:00:00:20:15", device_id="KW-IPAD-12", device_name="Class iPad 12", qtype="A",
                       clause="Online Safety Policy (filtering)", identity_source="dhcp")
    return replace(base, **changes)


def ask(qtype: str | None = "A", at: float = 0.0, **changes: Any) -> CompactEvent:
    """A blocked DNS ask of ads.example by the pupil's iPad, `at` seconds after T0."""
    values = list(compact(record(qtype=qtype, **changes)))
    values[0] = T0 + at
    return tuple(values)


def as_ask(event: CompactEvent) -> tuple[Any, ...]:
    """The ask (record.Ask, as the DNS daemon hands its events over) that stands for `event`."""
    values = dict(zip(COMPACT_FIELDS, event, strict=True))
    return (values["ts"], values["host"], values["qtype"], values["count"], tuple(values[n] for n in ASK_FACTS))


def as_compact(event: Any) -> Any:
    return from_ask(event) if type(event) is tuple and len(event) == ASK_LEN else event


# The same events as compact events, as asks (the DNS daemon's), and every other one an ask: the
# writer folds them by one rule, whatever their form.
SHAPES = {
    "compact": lambda events: events,
    "asks": lambda events: [as_ask(e) for e in events],
    "mixed": lambda events: [as_ask(e) if n % 2 else e for n, e in enumerate(events)],
}


def rows_of(events: list[CompactEvent]) -> list[tuple[Any, ...]]:
    """(seconds after T0, qtype, count, host, client) of each row `fold_repeats` makes of `events`."""
    folded, _ = fold_repeats(events)
    made = [as_compact(e) for e in folded]
    return [(round(e[0] - T0, 3), e[QTYPE], e[COMPACT_FIELDS.index("count")], e[COMPACT_FIELDS.index("host")],
             e[COMPACT_FIELDS.index("client_ip")]) for e in made]


CASES = [
    pytest.param([ask("A"), ask("AAAA", 0.01), ask("HTTPS", 0.02)],
                 [(0.0, "A,AAAA,HTTPS", 3, "ads.example", "10.41.20.15")], id="a phone's three types"),
    pytest.param([ask("A"), ask("A", 0.3), ask("AAAA", 0.4)],
                 [(0.0, "A,AAAA", 3, "ads.example", "10.41.20.15")], id="a retry of one type counts, named once"),
    pytest.param([ask("AAAA", 0.2), ask("A", 0.1)],
                 [(0.1, "AAAA,A", 2, "ads.example", "10.41.20.15")], id="the first time, the types as they came"),
    pytest.param([ask("A"), ask("AAAA", FOLD_WINDOW_S + 0.01)],
                 [(0.0, "A", 1, "ads.example", "10.41.20.15"),
                  (FOLD_WINDOW_S + 0.01, "AAAA", 1, "ads.example", "10.41.20.15")], id="another attempt later"),
    pytest.param([ask("A"), ask("AAAA", 0.1, client_ip="10.41.20.16")],
                 [(0.0, "A", 1, "ads.example", "10.41.20.15"), (0.1, "AAAA", 1, "ads.example", "10.41.20.16")],
                 id="another device"),
    pytest.param([ask("A"), ask("A", 0.1, host="b.example"), ask("AAAA", 0.2)],
                 [(0.0, "A,AAAA", 2, "ads.example", "10.41.20.15"), (0.1, "A", 1, "b.example", "10.41.20.15")],
                 id="another name between, the order kept"),
    pytest.param([ask(None, source="proxy", url="https://ads.example/a"),
                  ask(None, 0.1, source="proxy", url="https://ads.example/a")],
                 [(0.0, None, 2, "ads.example", "10.41.20.15")], id="the same request twice"),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("events", "expected"), CASES)
def test_repeated_asks_fold_into_the_first(events: list[CompactEvent], expected: list[tuple[Any, ...]],
                                           shape: str) -> None:
    assert rows_of(SHAPES[shape](events)) == expected


def test_a_folded_ask_is_still_an_ask_with_its_facts() -> None:
    """Its row is built straight from it (rows.SqliteRows.build_ask): folding keeps the form."""
    asks = [as_ask(ask("A")), as_ask(ask("AAAA", 0.01)), as_ask(ask("A", 0.02, host="b.example"))]
    folded, count = fold_repeats(asks)
    assert count == 1 and [len(e) for e in folded] == [ASK_LEN, ASK_LEN]  # type: ignore[arg-type]
    assert folded[0] == (T0, "ads.example", "A,AAAA", 2, asks[0][4]) and folded[0][4] is asks[0][4]  # type: ignore[index]
    assert folded[1] is asks[2]


@pytest.mark.parametrize("bad", [(T0, "ads.example", "A", 1, ("short",)), (T0, "ads.example", "A", 1, 7), (1, 2)])
def test_what_is_not_an_ask_is_left_for_the_row_builder_to_refuse(bad: tuple[Any, ...]) -> None:
    events = [as_ask(ask("A")), bad, as_ask(ask("AAAA", 0.01))]
    folded, count = fold_repeats(events)
    assert count == 1 and folded[1] is bad and len(folded) == 2


DIFFERENT = [
    pytest.param({"verdict": "allow", "rule_id": "default"}, id="verdict"),
    pytest.param({"flags": frozenset({"circumvention"})}, id="flags"),
    pytest.param({"person_id": "P7"}, id="person"),
    pytest.param({"device_id": "KW-IPAD-13"}, id="device"),
    pytest.param({"source": "proxy"}, id="source"),
    pytest.param({"url": "https://ads.example/other"}, id="url"),
    pytest.param({"search_term": "how to"}, id="search term"),
    pytest.param({"rule_id": "list:trackers"}, id="rule"),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("changes", DIFFERENT)
def test_an_ask_that_differs_in_any_other_fact_is_a_row_of_its_own(changes: dict[str, Any], shape: str) -> None:
    events = SHAPES[shape]([ask("A"), ask("AAAA", 0.1, **changes)])
    folded, count = fold_repeats(events)
    assert folded == events and count == 0


def test_types_that_would_not_fit_the_column_start_a_new_row() -> None:
    types = [f"TYPE{n}" for n in range(QTYPES_WIDTH)]
    folded, count = fold_repeats([ask(qtype, n * 0.001) for n, qtype in enumerate(types)])
    width = max(len(row[QTYPE]) for row in folded)  # type: ignore[index]
    assert len(folded) > 1 and width <= QTYPES_WIDTH
    assert sum(row[COMPACT_FIELDS.index("count")] for row in folded) == len(types)  # type: ignore[index]
    assert count == len(types) - len(folded)


def test_a_record_with_a_uid_of_its_own_is_never_folded() -> None:
    shipped = record(host="ads.example", qtype="A", uid="other-appliance-1")
    events: list[Any] = [shipped, replace(shipped, uid="other-appliance-2"), ask("A"), ask("AAAA", 0.1)]
    folded, count = fold_repeats(events)
    assert folded[:2] == events[:2] and len(folded) == 3 and count == 1


def test_the_writer_stores_a_burst_of_asks_as_one_row_and_accounts_for_each(engine: Engine) -> None:
    writer = EventWriter(engine, flush_interval=60)
    writer.submit_many([ask("A"), ask("AAAA", 0.01), ask("HTTPS", 0.02), ask("A", 0.03, host="b.example")])
    assert writer.flush()
    stats = writer.stop()
    with engine.connect() as conn:
        stored = conn.execute(select(AccessEvent.host, AccessEvent.qtype, AccessEvent.count, AccessEvent.ts)
                              .order_by(AccessEvent.id)).all()
    assert [(host, qtype, count) for host, qtype, count, _ in stored] == [
        ("ads.example", "A,AAAA,HTTPS", 3), ("b.example", "A", 1)]
    assert stored[0].ts == datetime.fromtimestamp(T0, UTC)
    assert (stats["submitted"], stats["written"], stats["folded"], stats["dropped"]) == (4, 2, 2, 0)
    assert stats["submitted"] == stats["written"] + stats["folded"] + stats["spooled"] + stats["dropped"]


@pytest.mark.parametrize(
    ("types", "asked", "longest", "fits", "after"),
    [
        pytest.param(["A"], ["A"], None, True, ["A"], id="known"),
        pytest.param(["A"], ["AAAA", "HTTPS", "AAAA"], None, True, ["A", "AAAA", "HTTPS"], id="each once, in order"),
        # Four names of 10-11 characters and three commas are 46 > 40: long names are counted.
        pytest.param(["OPENPGPKEY", "OPENPGPKEY2", "OPENPGPKEY3"], ["OPENPGPKEY4"], None, False,
                     ["OPENPGPKEY", "OPENPGPKEY2", "OPENPGPKEY3"], id="too wide: unchanged"),
        pytest.param(["TYPE65280", "TYPE65281", "TYPE65282"], ["TYPE65283"], 9, True,
                     ["TYPE65280", "TYPE65281", "TYPE65282", "TYPE65283"], id="four of nine always fit"),
        pytest.param(["TYPE65280", "TYPE65281", "TYPE65282", "TYPE65283"], ["TYPE65284"], 9, False,
                     ["TYPE65280", "TYPE65281", "TYPE65282", "TYPE65283"], id="a fifth is counted"),
    ],
)
def test_types_are_added_once_in_order_while_they_fit_the_column(
    types: list[str], asked: list[str], longest: int | None, fits: bool, after: list[str]
) -> None:
    assert QTYPES_WIDTH == 40
    assert add_types(types, asked, str, longest_name=longest) is fits
    assert types == after


def test_an_ask_is_a_repeat_within_the_window_either_side_of_the_first() -> None:
    assert within_window(100.0, 100.0 + FOLD_WINDOW_S) and within_window(100.0, 100.0 - FOLD_WINDOW_S)
    assert not within_window(100.0, 100.0 + FOLD_WINDOW_S + 0.001)
