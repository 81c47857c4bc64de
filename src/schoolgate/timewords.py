"""Times and dates in words, in the school's local time: the one way schoolgate shows a time
to a person ("Sunday 6 December, 9:41 am").

The console's pages, the e-mails, the block page, the policy's explanations and the doctor all
format through here, so a headteacher reads the same words everywhere. The time zone is always
passed in: it is the policy's `[school] timezone` (`CompiledPolicy.school.zone`), never written
here. Pure: no clock is read; "today" is whatever the caller says it is.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, tzinfo


def clock_words(moment: datetime) -> str:
    """9:41 am, 12:00 pm, 3:15 pm (minutes always shown: a block that ends "at 3 pm" reads
    like a guess)."""
    hour = moment.hour % 12 or 12
    return f"{hour}:{moment.minute:02d} {'am' if moment.hour < 12 else 'pm'}"


def day_words(day: date, *, today: date | None = None) -> str:
    """"Sunday 6 December", with the year when it is not `today`'s year (or no `today` is given)."""
    text = f"{day:%A} {day.day} {day:%B}"
    if today is None or day.year != today.year:
        text += f" {day.year}"
    return text


def short_day_words(day: date, *, today: date | None = None) -> str:
    """"Sun 6 Dec" (tables), with the year when it is not `today`'s year (or no `today` is given)."""
    text = f"{day:%a} {day.day} {day:%b}"
    if today is None or day.year != today.year:
        text += f" {day.year}"
    return text


def local(moment: datetime, zone: tzinfo) -> datetime:
    """`moment` on the school's clock. A naive datetime is taken to be UTC, as the database
    stores it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone)


def instant_words(moment: datetime, zone: tzinfo, *, now: datetime | None = None) -> str:
    """"Sunday 6 December, 9:41 am" in the school's time zone; "today, 9:41 am" and "tomorrow,
    8:45 am" when `now` is given and the day is today or tomorrow there."""
    at = local(moment, zone)
    today = local(now, zone).date() if now is not None else None
    if today is not None and at.date() == today:
        return f"today, {clock_words(at)}"
    if today is not None and at.date().toordinal() == today.toordinal() + 1:
        return f"tomorrow, {clock_words(at)}"
    return f"{day_words(at.date(), today=today)}, {clock_words(at)}"


def short_instant_words(moment: datetime, zone: tzinfo, *, now: datetime | None = None) -> str:
    """"Sun 6 Dec, 9:41 am" for tables and notes, in the school's time zone; "today, 9:41 am"
    and "tomorrow, 8:45 am" when `now` is given and the day is today or tomorrow there."""
    at = local(moment, zone)
    today = local(now, zone).date() if now is not None else None
    if today is not None and at.date() == today:
        return f"today, {clock_words(at)}"
    if today is not None and at.date().toordinal() == today.toordinal() + 1:
        return f"tomorrow, {clock_words(at)}"
    return f"{short_day_words(at.date(), today=today)}, {clock_words(at)}"
