"""Column types shared by the models."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as naive UTC and gives them back aware.

    SQLite has no time zones; refusing naive values here stops a local time from ever
    being written as if it were UTC (a one-hour error for half the year in the UK).
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else naive_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return None if value is None else aware_utc(value)


def _require_aware(value: datetime) -> None:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r} given where an aware one is required")


def naive_utc(value: datetime) -> datetime:
    """An aware datetime as the naive UTC one a DATETIME column stores."""
    _require_aware(value)
    return value.astimezone(UTC).replace(tzinfo=None)


def aware_utc(value: datetime | str) -> datetime:
    """What a DATETIME column gave back (a datetime, or SQLite's text), aware in UTC; naive is UTC."""
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def utc_microseconds(value: datetime) -> int:
    """An aware datetime as whole microseconds since the POSIX epoch (exact, no float)."""
    _require_aware(value)
    return (value - EPOCH) // _MICROSECOND


def posix_microseconds(ts: float) -> int:
    """POSIX seconds (a float, as ``time.time()``) as whole microseconds: the microsecond
    ``datetime.fromtimestamp(ts, UTC)`` gives (the fraction rounded half to even)."""
    second = math.floor(ts)
    return second * 1_000_000 + round((ts - second) * 1_000_000)  # exact subtraction


def from_utc_microseconds(value: int) -> datetime:
    """Whole microseconds since the POSIX epoch as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=value)


class UTCMicroseconds(TypeDecorator[datetime]):
    """UTCDateTime, but SQLite stores the instant as an INTEGER of microseconds since the epoch.

    For the events table: every blocked query is a row, and its time is in three of the table's
    indexes. Eight bytes compared as an integer instead of 26 characters of text made SQLite's
    insert about a tenth cheaper, and the writer no longer formats text per row. Readers are
    unchanged: they bind and get back aware datetimes, and an integer orders as the time does.
    PostgreSQL keeps its timestamp (UTC, naive), as UTCDateTime stores it.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | int | None:
        if value is None:
            return None
        return utc_microseconds(value) if dialect.name == "sqlite" else naive_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return from_utc_microseconds(value) if isinstance(value, int) else aware_utc(value)
