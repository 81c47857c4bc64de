"""The e-mails come from Jinja templates: escaped HTML, one-line text, the filtering checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from jinja2 import UndefinedError
from sqlalchemy.orm import Session

from schoolgate.services import checklog, mailtemplates
from schoolgate.services.activity import Ranked
from schoolgate.services.digest import AlertLine, CircumventionLine, DigestContent, compose_digest, render_digest

NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)
LONDON = ZoneInfo("Europe/London")  # the test policy's [school] timezone
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
        mailtemplates.render("alert", "subject", zone=UTC, base_url="https://x.example", link=mailtemplates.link)


def test_the_digest_reports_the_last_selftest_and_unfixed_checks(session: Session) -> None:
    facts = compose_digest(session, site="testschool", site_name="Test Primary", now=NOW, zone=LONDON)
    assert facts.health == ["No self-test has run yet."]
    checklog.record_selftest(session, site="testschool", outcome=checklog.SelftestOutcome(
        at=NOW - timedelta(days=5), trigger="morning", passed=False, failures=3, filtering_down=True,
        duration_ms=900, tried="DNS", action="Restart schoolgate-dns", profiles="pupil", detail={},
    ))
    facts = compose_digest(session, site="testschool", site_name="Test Primary", now=NOW, zone=LONDON)
    assert facts.health[0].startswith("The last self-test FAILED")
    assert "Filtering itself was not working" in facts.health[0]
    assert "is the scheduler running?" in facts.health[1]


@pytest.mark.parametrize(
    ("zone", "period", "day"),
    [
        # 09:00 UTC on Tuesday 6 October 2026 is 10:00 am in London (BST) and 6:00 pm in Tokyo.
        ("Europe/London", "Mon 5 Oct 2026, 10:00 am to Tue 6 Oct 2026, 10:00 am", "Tuesday 6 October 2026"),
        ("Asia/Tokyo", "Mon 5 Oct 2026, 6:00 pm to Tue 6 Oct 2026, 6:00 pm", "Tuesday 6 October 2026"),
        ("Pacific/Auckland", "Mon 5 Oct 2026, 10:00 pm to Tue 6 Oct 2026, 10:00 pm", "Tuesday 6 October 2026"),
    ],
)
def test_times_in_a_mail_are_in_the_policys_zone_and_in_words(zone: str, period: str, day: str) -> None:
    """One time zone source (the policy's `[school] timezone`) and one way of writing times
    (schoolgate.timewords): no "UK time" label, no 24-hour clock, no UTC."""
    mail = render_digest(content(zone=ZoneInfo(zone)), "https://console.school.example:8443")
    assert period in mail.text and period in mail.html
    assert mail.subject.endswith(day)
    assert "UK time" not in mail.text and "UTC" not in mail.text
    alert = mailtemplates.render(
        "alert", "subject", zone=ZoneInfo(zone), base_url="https://x.example", link=mailtemplates.link,
        alert=SimpleNamespace(severity="high", first_seen=NOW, id=7, title="Case", summary="", kind="keyword",
                              trigger_count=1, evidence_lines=[]),
    )
    assert period.split(" to ")[1].removeprefix("Tue ") in alert.text
