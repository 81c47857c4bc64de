"""Times in words, in the school's local time."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from schoolgate.timewords import clock_words, day_words, instant_words, short_instant_words

LONDON = ZoneInfo("Europe/London")
NOW = datetime(2026, 12, 6, 9, 41, tzinfo=UTC)  # Sunday, GMT


@pytest.mark.parametrize(
    ("moment", "words"),
    [
        (datetime(2026, 12, 6, 9, 41, tzinfo=UTC), "today, 9:41 am"),
        (datetime(2026, 12, 7, 8, 45, tzinfo=UTC), "tomorrow, 8:45 am"),
        (datetime(2026, 12, 8, 12, 0, tzinfo=UTC), "Tuesday 8 December, 12:00 pm"),
        (datetime(2026, 10, 23, 14, 15, tzinfo=UTC), "Friday 23 October, 3:15 pm"),  # BST: an hour ahead
        (datetime(2027, 3, 28, 0, 30, tzinfo=UTC), "Sunday 28 March 2027, 12:30 am"),  # before the change
        (datetime(2027, 3, 28, 1, 30, tzinfo=UTC), "Sunday 28 March 2027, 2:30 am"),  # after it
        (datetime(2026, 12, 6, 9, 41), "today, 9:41 am"),  # naive: stored UTC
    ],
)
def test_instant_words(moment: datetime, words: str) -> None:
    assert instant_words(moment, LONDON, now=NOW) == words


def test_without_now_the_year_is_always_given() -> None:
    assert instant_words(datetime(2026, 12, 6, 9, 41, tzinfo=UTC), LONDON) == "Sunday 6 December 2026, 9:41 am"
    assert day_words(date(2027, 3, 31)) == "Wednesday 31 March 2027"
    assert day_words(date(2027, 3, 31), today=date(2027, 1, 1)) == "Wednesday 31 March"


def test_short_form_and_the_clock() -> None:
    assert short_instant_words(datetime(2026, 11, 23, 10, 5, tzinfo=UTC), LONDON, now=NOW) == "Mon 23 Nov, 10:05 am"
    assert short_instant_words(datetime(2026, 12, 6, 13, 5, tzinfo=UTC), LONDON, now=NOW) == "today, 1:05 pm"
    assert short_instant_words(datetime(2026, 12, 7, 0, 5, tzinfo=UTC), LONDON, now=NOW) == "tomorrow, 12:05 am"
    assert short_instant_words(datetime(2027, 1, 4, 8, 45, tzinfo=UTC), LONDON, now=NOW) == "Mon 4 Jan 2027, 8:45 am"
    assert short_instant_words(datetime(2027, 1, 4, 8, 45, tzinfo=UTC), LONDON) == "Mon 4 Jan 2027, 8:45 am"
    assert [clock_words(datetime(2026, 1, 1, h, 0)) for h in (0, 11, 12, 23)] == [
        "12:00 am", "11:00 am", "12:00 pm", "11:00 pm"
    ]


def test_another_zone_is_honoured() -> None:
    """The zone is the policy's [school] timezone, whatever it is."""
    assert instant_words(NOW, ZoneInfo("Europe/Dublin"), now=NOW) == "today, 9:41 am"
    assert instant_words(NOW, ZoneInfo("Asia/Kolkata"), now=NOW) == "today, 3:11 pm"
