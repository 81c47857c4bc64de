"""School time: term dates, closure (INSET) days, named windows, and when they are active.

Windows are written in local wall-clock time ("lunch 12:00-13:00") but decisions are asked
for instants. For each UTC day the timeline is computed once into segments (start instant and
the set of active windows as a bit mask), so a decision is a `bisect` away from knowing which
windows are active and when that next changes. Local times are turned into instants with the
school's time zone, so the clock changes (e.g. 2026-10-25, 2027-03-28) fall where they should:
a window 00:30-02:30 on the October change lasts three real hours, on the March change one.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum

WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
_SECONDS_PER_DAY = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# How far ahead `next_change` looks. Beyond this a verdict counts as "no foreseeable change".
HORIZON_DAYS = 400
_CACHE_LIMIT = 2048


class DayKind(StrEnum):
    """Which days a window runs on, besides its weekdays."""

    SCHOOL_DAYS = "school_days"  # term days that are not closure/INSET days: pupils are in
    STAFF_DAYS = "staff_days"  # school days plus INSET days: staff are at work
    EVERY_DAY = "every_day"
    NON_SCHOOL_DAYS = "non_school_days"  # weekends, holidays and closure days


@dataclass(frozen=True, slots=True)
class Span:
    """Minutes after local midnight of the window's day; `end` beyond 1440 runs into the next day."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end % MINUTES_PER_DAY)}"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_clock(text: str) -> int:
    """'08:45' -> 525. Raises ValueError with a plain message."""
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(p.isdigit() and 1 <= len(p) <= 2 for p in parts):
        raise ValueError(f'"{text}" is not a time of day; write it as HH:MM, e.g. "08:45"')
    hours, minutes = int(parts[0]), int(parts[1])
    if hours == 24 and minutes == 0:
        return MINUTES_PER_DAY
    if hours > 23 or minutes > 59:
        raise ValueError(f'"{text}" is not a time of day (hours 00-23, minutes 00-59)')
    return hours * 60 + minutes


def make_span(start: int, end: int) -> Span:
    """A span from two clock times; an end at or before the start means it ends the next day."""
    if start == MINUTES_PER_DAY:
        raise ValueError('a window cannot start at "24:00"; use "00:00"')
    if start == end:
        raise ValueError(f"the window starts and ends at the same time ({_hhmm(start)})")
    if end <= start:
        end += MINUTES_PER_DAY
    return Span(start, end)


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    spans: tuple[Span, ...]
    weekdays: frozenset[int]  # 0 = Monday
    days: DayKind = DayKind.SCHOOL_DAYS

    def describe(self) -> str:
        spans = ", ".join(str(s) for s in self.spans)
        days = ",".join(WEEKDAY_NAMES[d] for d in sorted(self.weekdays))
        return f"{self.name}: {spans} ({days}; {self.days.value.replace('_', ' ')})"


@dataclass(frozen=True, slots=True)
class Term:
    name: str
    start: date
    end: date


@dataclass(frozen=True)
class Calendar:
    """Term dates and closure days. A school day is a weekday inside a term, not a closure day."""

    terms: tuple[Term, ...] = ()
    closures: Mapping[date, str] = field(default_factory=dict)  # day -> reason
    inset_days: frozenset[date] = frozenset()  # closures on which staff work (training days)

    def is_school_day(self, day: date) -> bool:
        if day.weekday() >= 5 or day in self.closures:
            return False
        return any(term.start <= day <= term.end for term in self.terms)

    def is_staff_day(self, day: date) -> bool:
        return (day in self.inset_days and day.weekday() < 5) or self.is_school_day(day)

    def describe_day(self, day: date) -> str:
        if day in self.inset_days:
            return f"INSET day ({self.closures.get(day, 'staff training')})"
        if day in self.closures:
            return f"closure day ({self.closures[day]})"
        for term in self.terms:
            if term.start <= day <= term.end:
                return "weekend" if day.weekday() >= 5 else f"school day ({term.name})"
        return "weekend" if day.weekday() >= 5 else "school holiday"


@dataclass(frozen=True, slots=True)
class DaySegments:
    """One UTC day cut into segments with a constant set of active windows."""

    starts: list[float]
    masks: list[int]


class Timeline:
    """Which windows are active at an instant, and when that next changes.

    Pure: computes from the windows, the calendar and the time zone only. Results are cached
    per UTC day; the cache is bounded so a long-running daemon does not grow without limit.
    """

    def __init__(self, windows: tuple[Window, ...], calendar: Calendar, zone: tzinfo) -> None:
        self.windows = windows
        self.calendar = calendar
        self.zone = zone
        self._days: dict[int, DaySegments] = {}
        self._school: dict[date, tuple[bool, bool]] = {}

    # -- building ---------------------------------------------------------------------------
    def _day_kinds(self, day: date) -> tuple[bool, bool]:
        """(pupils are in, staff are at work) on local `day`."""
        known = self._school.get(day)
        if known is None:
            if len(self._school) > _CACHE_LIMIT:
                self._school.clear()
            known = (self.calendar.is_school_day(day), self.calendar.is_staff_day(day))
            self._school[day] = known
        return known

    def _instant(self, day: date, minutes: int) -> float:
        extra, minutes = divmod(minutes, MINUTES_PER_DAY)
        when = day + timedelta(days=extra)
        local = datetime(when.year, when.month, when.day, minutes // 60, minutes % 60, tzinfo=self.zone)
        return local.timestamp()

    def _intervals(self, day: date) -> list[tuple[float, float, int]]:
        """The windows' spans that start on local `day`, as instants."""
        out: list[tuple[float, float, int]] = []
        weekday = day.weekday()
        school, staff = self._day_kinds(day)
        for bit, window in enumerate(self.windows):
            if weekday not in window.weekdays:
                continue
            if window.days is DayKind.SCHOOL_DAYS and not school:
                continue
            if window.days is DayKind.STAFF_DAYS and not staff:
                continue
            if window.days is DayKind.NON_SCHOOL_DAYS and school:
                continue
            for span in window.spans:
                start, end = self._instant(day, span.start), self._instant(day, span.end)
                if end > start:
                    out.append((start, end, 1 << bit))
        return out

    def day(self, utc_day: int) -> DaySegments:
        cached = self._days.get(utc_day)
        if cached is not None:
            return cached
        begin = float(utc_day * _SECONDS_PER_DAY)
        finish = begin + _SECONDS_PER_DAY
        utc_date = date.fromordinal(_EPOCH_ORDINAL + utc_day)
        intervals: list[tuple[float, float, int]] = []
        # Local dates whose spans can reach into this UTC day: offsets are within a day and a
        # span lasts less than a day, so two days back and one ahead is enough.
        for delta in (-2, -1, 0, 1):
            intervals.extend(self._intervals(utc_date + timedelta(days=delta)))
        points = {begin}
        for start, end, _ in intervals:
            if begin < start < finish:
                points.add(start)
            if begin < end < finish:
                points.add(end)
        starts: list[float] = []
        masks: list[int] = []
        for point in sorted(points):
            mask = 0
            for start, end, bit in intervals:
                if start <= point < end:
                    mask |= bit
            if masks and masks[-1] == mask:
                continue
            starts.append(point)
            masks.append(mask)
        segments = DaySegments(starts, masks)
        if len(self._days) > _CACHE_LIMIT:
            self._days.clear()
        self._days[utc_day] = segments
        return segments

    # -- querying ---------------------------------------------------------------------------
    def locate(self, ts: float) -> tuple[int, int, int]:
        """(UTC day, segment index, active window mask) at instant `ts` (POSIX seconds)."""
        utc_day = int(ts // _SECONDS_PER_DAY)
        segments = self.day(utc_day)
        index = bisect_right(segments.starts, ts) - 1
        return utc_day, index, segments.masks[index]

    def active(self, ts: float) -> int:
        return self.locate(ts)[2]

    def next_change(self, utc_day: int, index: int, relevant: int) -> float | None:
        """The first instant after segment (utc_day, index) at which any `relevant` window
        starts or stops; None if none does within the horizon."""
        if not relevant:
            return None
        segments = self.day(utc_day)
        current = segments.masks[index] & relevant
        last_day = utc_day + HORIZON_DAYS
        while True:
            index += 1
            if index >= len(segments.starts):
                utc_day += 1
                if utc_day > last_day:
                    return None
                segments = self.day(utc_day)
                index = 0
            if segments.masks[index] & relevant != current:
                return segments.starts[index]

    def names(self, mask: int) -> list[str]:
        return [w.name for bit, w in enumerate(self.windows) if mask >> bit & 1]
