"""CSV export for any list, safe to open in a spreadsheet.

Logged hostnames, URLs and search terms are attacker-controlled. NUL and control characters
are dropped and bidirectional overrides shown as escapes (schoolgate.services.printable). A
cell that starts with = + - @ (or a tab or carriage return, which some spreadsheets skip
before looking for one) would run as a formula on the DSL's laptop, so such cells get a
leading apostrophe.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Generic, TypeVar

from schoolgate.services.printable import csv_text
from schoolgate.store.models import Alert, Device, Person, PolicyExceptionRow

T = TypeVar("T")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def safe_cell(value: object) -> str:
    """Text for one cell: times in ISO form, formulas neutralised, lone surrogates replaced."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    # NUL and control characters go, bidirectional overrides and bytes that were not UTF-8
    # (lone surrogates from the database) become visible escapes; then the formula guard, so
    # a control character cannot hide a formula's start from it.
    text = csv_text(str(value))
    if text.startswith(FORMULA_START):
        return "'" + text
    return text


class _Line:
    """A file-like object that hands back what csv.writer wrote for one row."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def write(self, text: str) -> int:
        return self.buffer.write(text)

    def take(self) -> str:
        value = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return value


def iter_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[str]:
    """The CSV text one line at a time (for a streamed download of a long list)."""
    line = _Line()
    writer = csv.writer(line, lineterminator="\r\n")
    writer.writerow([safe_cell(h) for h in header])
    yield line.take()
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
        yield line.take()


def to_csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    return "".join(iter_csv(header, rows))


@dataclass(frozen=True)
class Columns(Generic[T]):
    """How to turn one kind of record into CSV columns."""

    header: tuple[str, ...]
    values: Callable[[T], Sequence[object]]

    def rows(self, items: Iterable[T]) -> Iterator[Sequence[object]]:
        return (self.values(item) for item in items)

    def csv(self, items: Iterable[T]) -> Iterator[str]:
        return iter_csv(self.header, self.rows(items))


ALERT_COLUMNS: Columns[Alert] = Columns(
    (
        "id",
        "severity",
        "status",
        "kind",
        "category",
        "title",
        "summary",
        "device_id",
        "person_id",
        "ip",
        "first_seen_utc",
        "last_seen_utc",
        "triggers",
        "assessment",
        "outcome",
    ),
    lambda a: (
        a.id,
        a.severity,
        a.status,
        a.kind,
        a.category,
        a.title,
        a.summary,
        a.device_id,
        a.person_id,
        a.client_ip,
        a.first_seen,
        a.last_seen,
        a.trigger_count,
        a.assessment,
        a.outcome,
    ),
)
DEVICE_COLUMNS: Columns[Device] = Columns(
    ("device_id", "name", "mac", "ip", "kind", "role", "owner", "ownership", "trusts_school_ca", "notes"),
    lambda d: (
        d.device_id,
        d.name,
        d.mac,
        d.ip,
        d.kind,
        d.role,
        d.person.external_id if d.person else "",
        d.ownership or "",
        d.trusts_school_ca,
        d.notes,
    ),
)
PEOPLE_COLUMNS: Columns[Person] = Columns(
    ("external_id", "name", "role", "year_group", "groups", "email", "active"),
    lambda p: (p.external_id, p.name, p.role, p.year_group, p.groups, p.email, p.active),
)
EXCEPTION_COLUMNS: Columns[PolicyExceptionRow] = Columns(
    (
        "id",
        "scope",
        "subject",
        "domain",
        "url_prefix",
        "starts_utc",
        "expires_utc",
        "reason",
        "request_id",
        "created_by",
        "revoked_utc",
    ),
    lambda x: (
        x.id,
        x.scope,
        x.subject,
        x.domain,
        x.url_prefix,
        x.starts,
        x.expires,
        x.reason,
        x.request_id,
        x.created_by,
        x.revoked_at,
    ),
)

__all__ = [
    "ALERT_COLUMNS",
    "DEVICE_COLUMNS",
    "EXCEPTION_COLUMNS",
    "PEOPLE_COLUMNS",
    "Columns",
    "iter_csv",
    "safe_cell",
    "to_csv",
]
