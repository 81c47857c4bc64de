"""CSV export of any list the console shows.

Cells that a spreadsheet would run as a formula (leading =, +, -, @, tab, CR) are prefixed
with an apostrophe: a logged hostname must not become a formula on the DSL's laptop.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from flask import Response

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def csv_response(filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    for row in rows:
        writer.writerow([cell(v) for v in row])
    safe_name = "".join(c for c in filename if c.isalnum() or c in "-_.") or "export.csv"
    return Response(
        buffer.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{safe_name}"'},
    )


def wants_csv() -> bool:
    from flask import request

    return request.args.get("format") == "csv"
