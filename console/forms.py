"""Reading form fields into the services' typed forms; bad values become field errors."""

from __future__ import annotations

from datetime import date, datetime, time

from schoolgate.console import web
from schoolgate.services.errors import InvalidInput


def parse_instant(value: str | None) -> datetime | None:
    """An ISO-8601 instant from a link (the block page's `at`); naive means school-local time."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=web.zone())


def parse_local(value: str, *, field: str, end_of_day: bool = False) -> datetime:
    """A date or date-time typed into a form, in the school's local time (the policy's zone)."""
    text_value = (value or "").strip()
    if not text_value:
        raise InvalidInput("Please give a date.", field=field)
    try:
        if len(text_value) == 10:
            day = date.fromisoformat(text_value)
            return datetime.combine(day, time(23, 59) if end_of_day else time(0, 0), tzinfo=web.zone())
        moment = datetime.fromisoformat(text_value)
    except ValueError:
        raise InvalidInput(f"{text_value!r} is not a date (use the date picker, or YYYY-MM-DD).", field=field) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=web.zone())


def local_input(moment: datetime | None) -> str:
    """The value for an <input type=datetime-local>."""
    if moment is None:
        return ""
    return moment.astimezone(web.zone()).strftime("%Y-%m-%dT%H:%M")
