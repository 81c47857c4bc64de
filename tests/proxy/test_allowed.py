"""Allowed passthroughs counted per client, name and minute on the loop (schoolgate.proxy.allowed),
against the records the addons made of the same connections before: the real addons, the real
policy, the store's aggregator and real SQLite rows."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mitmproxy.test import taddons
from proxy_testkit import FACEBOOK_IP, OTHER_IP, PUPIL, STAFF, Harness, events
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy.types import Client, Decision, Role, Target, Verdict
from schoolgate.proxy.addons import Connections, Pipeline, ProxyCounters, Services, build_addons
from schoolgate.proxy.allowed import AllowedPasses, is_plain_allow
from schoolgate.store.events import AllowedAggregator, EventRecord, EventWriter
from schoolgate.store.models import AccessEvent

NOW = datetime(2026, 11, 18, 11, 0, 5, tzinfo=UTC)
OTHER_STAFF = dataclasses.replace(STAFF, ip="10.20.1.8", mac="02:00:00:00:00:08", device_id="LAP-008")
SAME_IP_NEW_MAC = dataclasses.replace(STAFF, mac="02:00:00:00:00:99", device_id="LAP-099")


@pytest.fixture
def known_clients() -> dict[str, Client]:
    return {c.ip: c for c in (PUPIL, STAFF, OTHER_STAFF)}


# (seconds after NOW, client, SNI, dialled address): passed-through connections, in order.
Connection = tuple[int, Client, str, str]
CASES: dict[str, list[Connection]] = {
    "one connection": [(0, STAFF, "www.example.org", OTHER_IP)],
    "repeats in a minute fold into one row": [(0, STAFF, "www.example.org", OTHER_IP)] * 5,
    "each name its row": [(0, STAFF, "www.example.org", OTHER_IP), (1, STAFF, "news.example.org", OTHER_IP),
                          (2, STAFF, "www.example.org", OTHER_IP)],
    "each client its row": [(0, STAFF, "www.example.org", OTHER_IP), (1, OTHER_STAFF, "www.example.org", OTHER_IP),
                            (2, STAFF, "www.example.org", OTHER_IP)],
    "a new device on the same address its row": [(0, STAFF, "www.example.org", OTHER_IP),
                                                 (1, SAME_IP_NEW_MAC, "www.example.org", OTHER_IP)],
    "each minute its row": [(0, STAFF, "www.example.org", OTHER_IP), (54, STAFF, "www.example.org", OTHER_IP),
                            (55, STAFF, "www.example.org", OTHER_IP), (200, STAFF, "www.example.org", OTHER_IP)],
    "staff's allowed service": [(0, STAFF, "web.whatsapp.com", OTHER_IP)] * 3,
    "blocked and allowed apart": [(0, PUPIL, "www.facebook.com", FACEBOOK_IP), (1, PUPIL, "www.example.org", OTHER_IP),
                                  (2, PUPIL, "www.facebook.com", FACEBOOK_IP), (3, PUPIL, "www.example.org", OTHER_IP)],
}


class Clock:
    def __init__(self) -> None:
        self.instant = NOW

    def __call__(self) -> datetime:
        return self.instant


def _rows(services: Services, writer: EventWriter, sessions: sessionmaker[Session], connections: list[Connection],
          *, fold: bool) -> tuple[list[dict[str, Any]], int]:
    """Run `connections` through the addons as passthroughs or kills; the rows written, and
    the events the counters say were submitted."""
    clock = Clock()
    aggregator = AllowedAggregator(writer, clock=clock)
    passes = AllowedPasses(aggregator.submit, services.site)
    services = dataclasses.replace(
        services, now=clock, submit_allowed=aggregator.submit, fold_allowed=passes.add if fold else None,
        counters=ProxyCounters(), connections=Connections(),
    )
    with taddons.context(Pipeline(build_addons(services))) as tctx:
        harness = Harness(tctx, services)
        for seconds, who, sni, dialled in connections:
            clock.instant = NOW + timedelta(seconds=seconds)
            passes.flush_due(clock.instant)  # the loop's tick
            ctx = harness.connect(who, dialled)
            harness.hello(ctx, sni)
            harness.server_connect(ctx)
            harness.disconnect(ctx)
    passes.flush_all()
    aggregator.flush_all()
    rows = [
        {column: getattr(event, column) for column in ("ts", "client_ip", "mac", "device_id", "person_id", "host",
                                                       "verdict", "rule_id", "role", "clause", "service", "flags",
                                                       "count", "url", "source", "site")}
        for event in events(sessions, writer)
    ]
    return sorted(rows, key=lambda row: (row["ts"], row["host"], row["client_ip"], row["mac"])), \
        services.counters.events_submitted


@pytest.mark.parametrize("case", list(CASES))
def test_folded_passthroughs_are_the_rows_the_records_made(
    case: str, services: Services, writer: EventWriter, sessions: sessionmaker[Session]
) -> None:
    connections = CASES[case]
    folded, folded_submitted = _rows(services, writer, sessions, connections, fold=True)
    with sessions() as session, session.begin():
        session.execute(delete(AccessEvent))
    recorded, recorded_submitted = _rows(services, writer, sessions, connections, fold=False)
    assert folded == recorded
    assert sum(row["count"] for row in folded) == len(connections)
    assert folded_submitted == recorded_submitted == len(connections)


def test_a_minute_is_handed_over_once_it_is_over() -> None:
    handed: list[EventRecord] = []
    passes = AllowedPasses(lambda record: handed.append(record) is None, "testschool")
    allowed = _decision(Verdict.ALLOW)
    for seconds in (0, 10, 50):
        passes.add(allowed, STAFF, "www.example.org", NOW + timedelta(seconds=seconds))
    passes.add(allowed, STAFF, "www.example.org", NOW + timedelta(seconds=60))  # the next minute
    assert passes.held() == (2, 4)
    assert passes.flush_due(NOW + timedelta(seconds=54)) == 0  # 11:00:59
    assert passes.flush_due(NOW + timedelta(seconds=55)) == 1  # 11:01:00
    (record,) = handed
    assert (record.count, record.ts, record.host, record.client_ip, record.source) == (
        3, NOW, "www.example.org", STAFF.ip, "proxy")
    assert passes.held() == (1, 1)
    assert passes.flush_all() == 1
    assert passes.held() == (0, 0)
    assert [r.count for r in handed] == [3, 1]


def test_too_many_names_are_handed_over_early_not_grown() -> None:
    handed: list[EventRecord] = []
    passes = AllowedPasses(lambda record: handed.append(record) is None, "testschool", max_held=3)
    allowed = _decision(Verdict.ALLOW)
    for n in range(7):
        passes.add(allowed, STAFF, f"site{n}.example.org", NOW)
    assert len(handed) == 6 and passes.held() == (1, 1)
    assert sum(r.count for r in handed) + passes.held()[1] == 7


@pytest.mark.parametrize(("verdict", "flags", "plain"), [
    (Verdict.ALLOW, frozenset(), True),
    (Verdict.SAFE_SEARCH, frozenset(), True),
    (Verdict.ALLOW, frozenset({"circumvention"}), False),
    (Verdict.BLOCK, frozenset(), False),
])
def test_only_plain_allowed_decisions_are_folded(verdict: Verdict, flags: frozenset[str], plain: bool) -> None:
    decision = _decision(verdict, flags)
    assert is_plain_allow(decision) is plain
    record = EventRecord.from_decision(decision, STAFF, Target(host="x.example"), site="s", source="proxy", ts=NOW)
    assert record.is_plain_allow is plain


def _decision(verdict: Verdict, flags: frozenset[str] = frozenset()) -> Decision:
    return Decision(verdict=verdict, rule_id="r", clause="§1", reason="because", role=Role.STAFF, flags=flags)
