"""Every path that shows logged search terms to people is one that withholds safeguarding concerns.

A child's search for "how do i kill myself" is for the DSL (services/safeguarding_detail.py). The
console's activity pages and CSV export withhold it from technicians and the trust's admin
(tests/console/test_safeguarding_detail.py), but a new page, JSON export or syslog feed that reads
events itself would copy it out raw, and no test of the old pages would notice. So this test reads
the source: code and templates that touch an event's `search_term` are the reviewed ones below,
each with why it is safe. Showing events somewhere new? Pass the rows through
`shown_events(rows, may_read=..., keywords=...)` (it withholds the URL with the term), and add
the module here saying so, with a test like test_safeguarding_detail's for the new path.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
# The folders the schoolgate package is built from (setup.py), tests and benchmarks aside.
SOURCE_FOLDERS = ("console", "services", "scheduler", "store", "dns", "proxy", "identity", "gateway", "lab",
                  "lists", "policy", "src")

REVIEWED: dict[str, str] = {
    # Showing events to people: through the one filter.
    "services/safeguarding_detail.py": "the filter itself",
    "console/views/activity.py": "pages and CSV rows come from shown_events",
    "console/templates/activity/search.html": "rendered from console/views/activity.py's shown events",
    "console/templates/activity/event.html": "rendered from console/views/activity.py's shown event",
    "services/export.py": "the SIEM's JSON pages and syslog records come from shown_events, may_read=False",
    # Raising the DSL's cases: read with VIEW_ALERTS (the DSL and the headteacher only).
    "services/alert_rules.py": "matches terms against the safeguarding list for the DSL's alerts",
    # Recording events: writes, never shows.
    "proxy/addons.py": "records the search term of a request",
    "store/events/record.py": "the event record the daemons write",
    "store/migrations/versions/0001_initial.py": "creates the column",
}

_TEMPLATE_USE = re.compile(r"\bsearch_term\b")


def _python_readers(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "search_term":
            return True
        if isinstance(node, ast.Constant) and node.value == "search_term":
            return True
        if isinstance(node, ast.keyword) and node.arg == "search_term":
            return True
    return False


def _reads(path: Path) -> bool:
    if path.suffix == ".py":
        return _python_readers(path)
    if path.suffix in (".html", ".txt", ".j2"):  # templates
        return bool(_TEMPLATE_USE.search(path.read_text(encoding="utf-8")))
    return False


def _readers() -> set[str]:
    return {
        path.relative_to(REPOSITORY).as_posix()
        for folder in SOURCE_FOLDERS
        for path in (REPOSITORY / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and _reads(path)
    }


def test_only_reviewed_code_reads_logged_search_terms() -> None:
    unreviewed = sorted(_readers() - REVIEWED.keys())
    assert not unreviewed, (
        f"{unreviewed} read logged search terms: show events through "
        "schoolgate.services.safeguarding_detail.shown_events (technicians and the trust's admin must "
        "not read a child's safeguarding searches), then add the file to REVIEWED with why it is safe"
    )


def test_the_reviewed_list_names_only_files_that_still_read_them() -> None:
    assert not sorted(REVIEWED.keys() - _readers()), "remove files that no longer read search terms"


def test_the_scan_finds_a_reader_it_has_not_seen(tmp_path: Path) -> None:
    export = tmp_path / "export.py"
    export.write_text('def record(event):\n    return {"term": event.search_term}\n', encoding="utf-8")
    keyed = tmp_path / "keyed.py"
    keyed.write_text('COLUMNS = ["ts", "search_term"]\n', encoding="utf-8")
    plain = tmp_path / "plain.py"
    plain.write_text('def record(event):\n    return {"host": event.host}\n', encoding="utf-8")
    assert _python_readers(export) and _python_readers(keyed) and not _python_readers(plain)
