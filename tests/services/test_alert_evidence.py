"""A case's evidence: attempts collapse, items merge once, words a DSL can read, JSON that survives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from schoolgate.services.alert_evidence import MAX_ITEMS, Evidence, EvidenceItem

T0 = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)  # GMT: 10:15 in London
LONDON = ZoneInfo("Europe/London")  # the test school's [school] timezone


def item(seconds: float, *, target: str = "nordvpn.com", event_id: int | None = None, **fields: object) -> EvidenceItem:
    at = T0 + timedelta(seconds=seconds)
    values: dict[str, object] = {"kind": "circumvention_site", "label": "Tried to open a VPN site", "target": target,
                                 "first": at, "last": at, "outcome": "blocked", "event_id": event_id}
    values.update(fields)
    return EvidenceItem(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("offsets", "attempts"),
    [
        ([0], 1),
        ([0, 10, 20, 29], 1),  # each within 30 s of the one before: one attempt
        ([0, 31], 2),
        ([0, 20, 40, 60], 1),  # a chain of requests never 30 s apart
        ([0, 100, 200], 3),
    ],
)
def test_requests_within_30_seconds_are_one_attempt(offsets: list[float], attempts: int) -> None:
    evidence = Evidence(item(o, event_id=n + 1) for n, o in enumerate(offsets))
    (only,) = list(evidence)
    assert (only.attempts, only.requests) == (attempts, len(offsets))


def test_the_same_event_is_never_counted_twice() -> None:
    evidence = Evidence([item(0, event_id=5), item(60, event_id=9)])
    evidence.add(item(0, event_id=5))  # handed over again as context
    (only,) = list(evidence)
    assert (only.attempts, only.requests) == (2, 2)


def test_words_and_json() -> None:
    evidence = Evidence([item(0, event_id=1), item(1, event_id=2), item(120, event_id=3),
                         item(5, target="1.1.1.1:853", kind="dot", label="Tried DNS over TLS to", outcome="refused",
                              event_id=4)])
    assert evidence.lines(LONDON) == [
        "Tried to open a VPN site: nordvpn.com, 2 attempts (3 requests), 10:15 am to 10:17 am, blocked",
        "Tried DNS over TLS to: 1.1.1.1:853, 1 attempt, at 10:15 am, refused",
    ]
    again = Evidence.from_json(evidence.to_json())
    assert again.lines(LONDON) == evidence.lines(LONDON) and again.attempts == 3
    # The school's clock is the policy's [school] timezone, whatever it is.
    kolkata = evidence.lines(ZoneInfo("Asia/Kolkata"))
    assert kolkata[1] == "Tried DNS over TLS to: 1.1.1.1:853, 1 attempt, at 3:45 pm, refused"
    assert Evidence.from_json("not json").attempts == 0 and not Evidence.from_json("")


def test_a_case_keeps_at_most_max_items_and_counts_the_rest() -> None:
    evidence = Evidence(item(i * 60, target=f"site{i}.example", event_id=i + 1) for i in range(MAX_ITEMS + 5))
    assert len(evidence) == MAX_ITEMS and evidence.omitted == 5 and evidence.attempts == MAX_ITEMS + 5
    assert evidence.lines(LONDON, limit=3)[-1] == "and 38 more (see the case)"
