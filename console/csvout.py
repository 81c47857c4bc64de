"""CSV export of any list the console shows.

The cells come from schoolgate.services.csvexport, which neutralises formulas (a logged
hostname must not become a formula on the DSL's laptop); this module only makes the response.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flask import Response

from schoolgate.services.csvexport import to_csv


def csv_response(filename: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Response:
    safe_name = "".join(c for c in filename if c.isalnum() or c in "-_.") or "export.csv"
    return Response(
        to_csv(header, rows),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{safe_name}"'},
    )


def wants_csv() -> bool:
    from flask import request

    return request.args.get("format") == "csv"
