"""A field that is too long is refused with a message that says so, and nothing is saved.

The console used to cut form fields at 4,000 characters before the services saw them, so a
reason, a note or a decision lost its end and was saved without a word."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from console_testkit import PASSWORD, Console, post_form, seed
from sqlalchemy import func, select

from schoolgate.store.models import AccessRequest, AlertHistory, ContentReport, Device, SiteBlockRow

LONG = "The reason, at length. " * 200  # 4,600 characters


def _count(console: Console, model: Any) -> int:
    with console.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


CASES: list[tuple[str, str | None, str, str, dict[str, Any], Any]] = [
    ("a request's reasons", "technician", "/requests/new", "/requests/new",
     {"requester": "Sam", "url": "https://www.tiktok.com/@school", "reasons": LONG}, AccessRequest),
    ("the public request form", None, "/request", "/request",
     {"requester": "Sam", "url": "https://www.tiktok.com/@school", "reasons": LONG}, AccessRequest),
    ("a report's nature", "technician", "/reports/new", "/reports/new",
     {"submitter_name": "T", "urls": "https://bad.example.org/", "nature": LONG}, ContentReport),
    ("a device's notes", "technician", "/devices/new", "/devices/new",
     {"device_id": "D-LONG", "name": "Long notes", "notes": LONG}, Device),
    ("a case note", "dsl", "/alerts/{alert}", "/alerts/{alert}/note", {"note": LONG * 2}, AlertHistory),
]


@pytest.mark.parametrize(("what", "role", "page", "action", "data", "model"), CASES, ids=[c[0] for c in CASES])
def test_too_long_is_said_not_cut(
    console: Console, what: str, role: str | None, page: str, action: str, data: dict[str, Any], model: Any
) -> None:
    ids = seed(console)
    before = _count(console, model)
    client = console.login(role)
    response = post_form(client, page.format(**ids), action.format(**ids), data)
    text = response.get_data(as_text=True)
    assert response.status_code == 400, (what, response.status_code)
    assert "is too long" in text and "nothing was saved" in text, what
    assert _count(console, model) == before, what


def test_a_decision_with_too_long_reasons_is_refused_before_the_code(console: Console) -> None:
    ids = seed(console)
    head = console.login("headteacher")
    url = f"/requests/{ids['request']}"
    response = post_form(head, url, f"{url}/decide", {"decision": "decline", "reasons": LONG, "signer_name": "H",
                                                      "password": PASSWORD, "code": "000000"})
    assert response.status_code == 400 and "Reasons is too long: 4,599 characters, at most 4,000" in \
        response.get_data(as_text=True)
    with console.session() as session:
        assert session.get(AccessRequest, ids["request"]).status == "submitted"  # type: ignore[union-attr]


def test_a_block_with_too_long_a_reason_says_so(console: Console) -> None:
    seed(console)
    tech = console.login("technician")
    before = _count(console, SiteBlockRow)
    response = post_form(tech, "/policy", "/policy/blocks", {"target": "domain", "value": "bad2.example.org",
                                                             "reason": LONG})
    assert response.status_code == 302
    assert "is too long" in tech.get("/policy").get_data(as_text=True)
    assert _count(console, SiteBlockRow) == before


def test_no_view_cuts_a_form_field_short() -> None:
    """The views pass form text to the services whole, and the services say what is too long: a
    view that slices a form value (`form.get("x", "")[:4000]`) would cut it without a word."""
    import ast

    views = Path(__file__).resolve().parents[2] / "console" / "views"
    cuts = []
    for path in sorted(views.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Slice)):
                continue
            upper = node.slice.upper
            value = node.value
            reads_form = (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                          and value.func.attr == "get" and "form" in ast.unparse(value.func.value))
            # Codes and fingerprints have a fixed length: a longer one is wrong whole, not cut.
            if reads_form and isinstance(upper, ast.Constant) and isinstance(upper.value, int) and upper.value > 64:
                cuts.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert cuts == []
