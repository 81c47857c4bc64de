"""The events table's indexes serve the readers' queries, on SQLite and PostgreSQL.

A search by verdict has no index of its own (each entry cost the writer more than the
searches it sped up): it walks the index by time newest first, so a page is found without
reading and sorting the whole range.

The indexes by person and by service are partial (only rows that name one): each index
entry costs the event writer CPU for every blocked query, and most events name neither. A
reader that looks one up by equality still gets its index; these tests fail if a query's
shape stops the planner from using it (say, a coalesce around the column), which would turn
a pupil's history into a scan of the whole table.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, text
from sqlalchemy.orm import Session

from schoolgate.services.activity import EventQuery, search_events
from schoolgate.store.models import AccessEvent

SITE = "testschool"
START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
DEVICES = 300


def rows(count: int) -> Iterator[dict[str, Any]]:
    """A day's events of 300 devices: a third name a person, a tenth a service."""
    for n in range(count):
        device = n % DEVICES
        yield {
            "site": SITE, "ts": START + timedelta(seconds=n * 7), "source": "dns",
            "client_ip": f"10.1.{device // 250}.{device % 250 + 1}", "mac": None,
            "device_id": f"dev-{device}", "device_name": f"iPad {device}",
            "person_id": f"p{device}" if device % 3 == 0 else None,
            "person_name": f"Pupil {device}" if device % 3 == 0 else None,
            "role": "pupil", "host": f"ads{n}.example", "qtype": "A",
            "verdict": "block" if n % 4 else "allow", "rule_id": "list:ads", "clause": "",
            "service": "tiktok" if n % 10 == 0 else None, "category": None, "flags": "", "count": 1,
            "identity_source": "dhcp", "uid": f"test-{n:08x}",
        }


@pytest.fixture
def filled(engine: Engine) -> Engine:
    with engine.begin() as conn:
        conn.execute(insert(AccessEvent), list(rows(6000)))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE events"))  # what autovacuum does on a live table
    return engine


def plan_of_search(engine: Engine, query: EventQuery) -> str:
    """The query plan of the activity search `query`, as the database would run it."""
    seen: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "FROM events" in statement:
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        with Session(engine) as session:
            search_events(session, SITE, query)
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    assert len(seen) == 1, seen
    statement, parameters = seen[0]
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(explain + statement, parameters))


INDEX_BY_FILTER = [
    pytest.param({"person_id": "p3"}, "ix_events_site_person_ts", id="person"),
    pytest.param({"service": "tiktok"}, "ix_events_site_service_ts", id="service"),
    pytest.param({"device_id": "dev-7"}, "ix_events_site_device_ts", id="device"),
]


@pytest.mark.parametrize(("filters", "index"), INDEX_BY_FILTER)
def test_the_activity_search_by_one_subject_uses_its_index(filled: Engine, filters: dict[str, str],
                                                           index: str) -> None:
    query = EventQuery(start=START, end=START + timedelta(days=1), **filters)
    assert index in plan_of_search(filled, query)


@pytest.mark.parametrize(("name", "column"), [("ix_events_site_person_ts", "person_id"),
                                              ("ix_events_site_service_ts", "service")])
def test_the_person_and_service_indexes_hold_only_rows_that_name_one(filled: Engine, name: str, column: str) -> None:
    with filled.connect() as conn:
        if filled.dialect.name == "sqlite":
            definition = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).scalar_one()
        else:
            definition = conn.execute(text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                                      {"name": name}).scalar_one()
    assert f"{column} IS NOT NULL" in definition.replace("(", "").replace(")", "")


def test_the_search_by_person_finds_the_same_events_as_a_scan(filled: Engine) -> None:
    query = EventQuery(start=START, end=START + timedelta(days=1), person_id="p3", limit=500)
    with Session(filled) as session:
        found = [item.uid for item in search_events(session, SITE, query).items]
    expected = [row["uid"] for row in rows(6000) if row["person_id"] == "p3"]
    assert found == list(reversed(expected))


@pytest.mark.parametrize("verdict", ["block", "allow"])
def test_the_activity_search_by_verdict_walks_the_time_index_without_sorting(filled: Engine, db_path: object,
                                                                            verdict: str) -> None:
    query = EventQuery(start=START, end=START + timedelta(days=1), verdict=verdict)
    plan = plan_of_search(filled, query)
    assert "ix_events_site_ts" in plan and "TEMP B-TREE" not in plan, plan
