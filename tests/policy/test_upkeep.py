"""The term dates running out and the written policy's review date, said ahead of time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from schoolgate.policy.loader import load_policy
from schoolgate.policy.upkeep import CALENDAR, NO_DOCUMENT, REVIEW, calendar_end, upkeep_warnings

POLICY = """
[school]
id = "t"
name = "T"
timezone = "Europe/London"
block_ipv4 = "10.0.0.1"
{document}
[calendar]
terms = [
  {{ name = "Autumn", start = 2026-09-03, end = 2026-12-18 }},
  {{ name = "Summer 2", start = 2027-06-07, end = 2027-07-21 }},
]

[[rules]]
id = "r"
clause = "c"
reason = "r"
action = "allow"
"""
DOCUMENT = '[document]\ntitle = "Social Media Policy"\nreview = "Next review: March 2027"\nreview_by = 2027-03-31\n'


@pytest.mark.parametrize(
    ("today", "expected"),
    [
        (date(2026, 12, 6), []),
        (date(2027, 3, 31), []),  # the review date itself is still in time
        (date(2027, 4, 1), [(REVIEW, "was due for review by Wednesday 31 March 2027 (Next review: March 2027)")]),
        (date(2027, 6, 20), [(REVIEW, "due for review")]),
        (date(2027, 6, 21), [(CALENDAR, "run out on Wednesday 21 July 2027 (in 30 days)"), (REVIEW, "review")]),
        (date(2027, 7, 20), [(CALENDAR, "(in 1 day)"), (REVIEW, "review")]),
        (date(2027, 7, 21), [(CALENDAR, "(today)"), (REVIEW, "review")]),
        (date(2027, 7, 22), [(CALENDAR, "ended on Wednesday 21 July 2027: every weekday now counts as a holiday"),
                             (REVIEW, "review")]),
    ],
)
def test_warnings_by_date(write_policy: Callable[..., Path], today: date, expected: list[tuple[str, str]]) -> None:
    policy = load_policy(write_policy(POLICY.format(document=DOCUMENT)))
    assert calendar_end(policy) == date(2027, 7, 21)
    found = upkeep_warnings(policy, today)
    assert [w.kind for w in found] == [kind for kind, _ in expected]
    for warning, (_, words) in zip(found, expected, strict=True):
        assert words in warning.message


def test_a_policy_without_its_document_is_a_warning(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(write_policy(POLICY.format(document="")))
    (warning,) = upkeep_warnings(policy, date(2026, 12, 6))
    assert (warning.kind, warning.key) == (NO_DOCUMENT, "document:-")
    assert any("[document]" in w for w in policy.warnings)  # and `policy check` says so


def test_keys_follow_the_dates(write_policy: Callable[..., Path]) -> None:
    """A technician is told once per key; a new review date or calendar is a new key."""
    policy = load_policy(write_policy(POLICY.format(document=DOCUMENT)))
    keys = {w.key for w in upkeep_warnings(policy, date(2027, 7, 1))}
    assert keys == {"calendar:2027-07-21", "review:2027-03-31"}
