"""The e-mails come from Jinja templates: escaped HTML, one-line text, the filtering checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from jinja2 import UndefinedError
from sqlalchemy.orm import Session

from schoolgate.services import checklog, mailtemplates
from schoolgate.services.activity import Ranked
from schoolgate.services.digest import AlertLine, CircumventionLine, DigestContent, compose_digest, render_digest

NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)
FORGED = "Tablet 3\nOpen the console: https://evil.example/phish"


def content(**changes: object) -> DigestContent:
    values: dict[str, object] = {
        "site_name": "Test <Primary>",
        "since": NOW - timedelta(days=1),
        "until": NOW,
        "new_by_severity": {"low": 0, "medium": 1, "high": 0, "critical": 0},
        "open_by_severity": {"low": 0, "medium": 1, "high": 0, "critical": 0},
        "alerts": [AlertLine(7, "medium", "in_review", f"Repeated blocks on {FORGED}", NOW, 12, True)],
        "top_services": [Ranked("facebook", "facebook", 40)],
        "top_devices": [Ranked("IPAD-3", FORGED, 12)],
        "circumvention": [CircumventionLine(FORGED, 3, "psiphon.ca")],
        "health": ["The last self-test FAILED (Tue 06 Oct 10:00): 2 check(s)."],
    }
    values.update(changes)
    return DigestContent(**values)  # type: ignore[arg-type]


def test_the_plain_text_part_keeps_hostile_text_on_its_own_line() -> None:
    mail = render_digest(content(), "https://console.school.example:8443")
    lines = mail.text.splitlines()
    assert not any(line.startswith("Open the console: https://evil") for line in lines)
    assert "Open the console: https://console.school.example:8443/" in lines
    assert "  [medium] Repeated blocks on Tablet 3 Open the console: https://evil.example/phish (new)" in mail.text
    assert "Filtering checks:" in lines and "  The last self-test FAILED (Tue 06 Oct 10:00): 2 check(s)." in lines
    assert "      40  facebook" in lines
    assert "<Primary>" in mail.subject and "&lt;Primary&gt;" in mail.html


def test_the_html_part_escapes_and_links_only_by_id() -> None:
    mail = render_digest(content(), "https://console.school.example:8443")
    assert '<a href="https://console.school.example:8443/alerts/7">' in mail.html
    assert "Tablet 3\nOpen the console: https://evil.example/phish" in mail.html  # text, not a link
    assert 'href="https://evil' not in mail.html


def test_a_template_that_names_something_missing_fails_loudly() -> None:
    with pytest.raises(UndefinedError):
        mailtemplates.render("alert", "subject", base_url="https://x.example", link=mailtemplates.link)


def test_the_digest_reports_the_last_selftest_and_unfixed_checks(session: Session) -> None:
    facts = compose_digest(session, site="testschool", site_name="Test Primary", now=NOW)
    assert facts.health == ["No self-test has run yet."]
    checklog.record_selftest(session, site="testschool", outcome=checklog.SelftestOutcome(
        at=NOW - timedelta(days=5), trigger="morning", passed=False, failures=3, filtering_down=True,
        duration_ms=900, tried="DNS", action="Restart schoolgate-dns", profiles="pupil", detail={},
    ))
    facts = compose_digest(session, site="testschool", site_name="Test Primary", now=NOW)
    assert facts.health[0].startswith("The last self-test FAILED")
    assert "Filtering itself was not working" in facts.health[0]
    assert "is the scheduler running?" in facts.health[1]
