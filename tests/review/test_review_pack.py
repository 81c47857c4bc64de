"""The annual review pack from a seeded school year: printed to PDF by Chromium, its text read
back with pdftotext and checked section by section; pupils named only when asked."""

from __future__ import annotations

import dataclasses
import html
import random
import re
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import load_config
from schoolgate.gateway.census import Census, Forwarding
from schoolgate.policy import load_policy
from schoolgate.review.facts import ReviewError, Year, gather
from schoolgate.review.render import render_html
from schoolgate.services import access_requests, checklog, coverage, reports, rollups, site_blocks
from schoolgate.services.actor import Actor
from schoolgate.store.db import init_db, session_factory
from schoolgate.store.models import AccessEvent, Alert

REPO = Path(__file__).resolve().parents[2]
SITE = "kingswood"
PUPIL_NAME = "Zebedee Quartermaine"  # a name that must not be printed unless asked
TECH = Actor("tech", "Mr T Nguyen", frozenset({"technician"}))
HEAD = Actor("head", "Mrs H Okafor", frozenset({"headteacher"}))


@pytest.fixture(scope="module")
def school(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A school year of records: events every school day, requests, reports, alerts, checks, coverage."""
    folder = tmp_path_factory.mktemp("review")
    config_path = folder / "schoolgate.toml"
    config_path.write_text(textwrap.dedent(f"""\
        policy = "{REPO / 'deploy' / 'policy.example.toml'}"
        data_dir = "{folder / 'data'}"
        [site]
        id = "{SITE}"
        name = "Kingswood Primary School"
        """))
    config = load_config(config_path)
    engine = init_db(config.database_url)
    seed_year(session_factory(engine))
    engine.dispose()
    return config_path


def seed_year(sessions: sessionmaker[Session]) -> None:
    rng = random.Random(2627)
    policy = load_policy(REPO / "deploy" / "policy.example.toml")
    day = date(2026, 9, 3)
    with sessions() as session:
        while day < date(2027, 7, 22):
            if policy.calendar.is_school_day(day):
                at = datetime(day.year, day.month, day.day, 9, 30, tzinfo=UTC)
                for n in range(rng.randrange(20, 40)):
                    role = rng.choice(["pupil", "pupil", "staff", "guest"])
                    category = rng.choice(["social_media", "gambling", "pornography", "circumvention"])
                    session.add(AccessEvent(site=SITE, ts=at + timedelta(minutes=n), source="dns", role=role,
                                            client_ip=f"10.41.20.{n + 10}", person_name=PUPIL_NAME,
                                            device_id=f"IPAD-{n}", host=f"{category}.example", verdict="block",
                                            rule_id="r", category=category, flags="", count=1))
                failed = day.day == 15
                checklog.record_selftest(session, site=SITE, outcome=checklog.SelftestOutcome(
                    at=at - timedelta(hours=1, minutes=15), trigger="morning", passed=not failed,
                    failures=3 if failed else 0,
                    filtering_down=failed and day.month == 1, duration_ms=4000, tried="categories from 5 networks",
                    action="restart schoolgate-dns" if failed else "", profiles="pupil, staff, guest", detail={}))
            day += timedelta(days=1)
        session.flush()
        rollups.catch_up(session, SITE, datetime(2027, 8, 1, tzinfo=UTC), zone=policy.school.zone)
        session.commit()
    with sessions() as session:
        now = datetime(2026, 10, 6, 10, 0, tzinfo=UTC)
        submitted = access_requests.submit_request(session, site=SITE, now=now, policy=policy,
                                                   form=access_requests.RequestForm(
                                                       requester=PUPIL_NAME, url="https://www.instagram.com/museum",
                                                       reasons="Year 6 project on the museum's photographs"))
        session.flush()
        report = reports.submit_report(session, site=SITE, now=now, actor=TECH, zone=policy.school.zone,
                                       form=reports.ReportForm(
            submitter_name="Ms Teacher", urls="https://bad.example.org/page", nature="violent images"))
        reports.action_report(session, site=SITE, now=now + timedelta(hours=1), actor=TECH, report_id=report.id,
                              action_taken="Blocked bad.example.org for everyone",
                              blocks=[site_blocks.BlockSpec(domain="bad.example.org")])
        for kind, severity, status, assessment in (("circumvention", "high", "resolved", "true_positive"),
                                                   ("repeated_blocks", "medium", "resolved", "false_positive"),
                                                   ("safeguarding_term", "critical", "in_review", None)):
            session.add(Alert(site=SITE, kind=kind, rule_id=kind, severity=severity, status=status,
                              title=f"{kind} by {PUPIL_NAME}", summary="", device_id="IPAD-3", first_seen=now,
                              last_seen=now, trigger_count=2, assessment=assessment, outcome="Spoke to the pupil"))
        checklog.record_manual_check(session, site=SITE, actor=TECH, now=now, form=checklog.ManualCheckForm(
            device_type="Class iPad", location="Year 5 classroom", profile="pupil", tried="Am I filtered? page",
            result="fail", action="iPad was on the guest network"))
        session.flush()
        failed = checklog.list_checks(session, SITE, kind="manual").items[0]
        checklog.record_fix(session, site=SITE, actor=TECH, check_id=failed.id, now=now + timedelta(hours=2),
                            action="Moved the class set to the pupil SSID")
        coverage.record_census(session, SITE, Census(at=now - timedelta(hours=3), vpn=[], neighbours={},
                                                     forwarding=[Forwarding("10.41.20.99", "02:00:00:00:20:99", 4,
                                                                            now - timedelta(hours=3))]))
        coverage.record_census(session, SITE, Census(at=now, vpn=[], neighbours={},
                                                     forwarding=[Forwarding("10.41.20.99", "02:00:00:00:20:99", 9,
                                                                            now)]))
        for row in coverage.classify(session, SITE, now, coverage.Settings()):
            row.notified_at = now
        session.commit()
        del submitted


def pdf_text(pdf: Path) -> str:
    # Reading order, not layout: a table cell's words stay together however narrow its column.
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def make(school: Path, out: Path, *extra: str) -> tuple[float, int]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-P", "-m", "schoolgate", "review-pack", "--config", str(school),
                           "--year", "2026-27", "--out", str(out), *extra], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started, out.stat().st_size


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils (deploy/dev.sh installs it)")
def test_the_pack_has_every_section_and_names_no_pupil(school: Path, tmp_path: Path) -> None:
    seconds, size = make(school, tmp_path / "review.pdf")
    print(f"\nreview pack: {size} bytes in {seconds:.1f} s")
    assert (tmp_path / "review.pdf").read_bytes().startswith(b"%PDF-")
    text = " ".join(pdf_text(tmp_path / "review.pdf").split())
    for heading in ("1. The policy in plain words", "2. Category decisions and why", "3. Changes and approvals",
                    "4. Access requests and content reports", "5. Alerts", "6. Blocked attempts",
                    "7. The check log", "8. Coverage", "9. Retention", "10. What the appliance does not see"):
        assert heading in text, heading
    assert "Filtering and monitoring review 2026-27" in text and "1 Sep 2026 to 31 Aug 2027" in text
    # Every rule with its clause: the part that names the document and section (pdftotext reads
    # a table's narrow cells in an order that can interleave the rest of a long clause).
    for rule in load_policy(REPO / "deploy" / "policy.example.toml").rules:
        assert rule.clause.split(":")[0] in text, rule.id
    assert "Gambling" in text and "Betting, casino, lottery" in text  # a category and why
    assert "site block: create" in text and "Mr T Nguyen" not in text.split("3. Changes")[0][-10:]
    assert "AR-000001" in text and "www.instagram.com" in text
    assert "Blocked bad.example.org for everyone" in text
    assert "circumvention" in text and "a real concern" in text and "not a concern" in text
    assert "iPad was on the guest network" in text and "Moved the class set to the pupil SSID" in text
    assert "self-tests ran this year" in text and "filtering itself not working" in text
    assert "1 device(s) were found not filtered during the year" in text
    assert "365 days" in text and "content inside encrypted" not in text  # the plain-words statement below
    assert "What is inside encrypted (HTTPS) connections" in text and "mobile data" in text
    assert PUPIL_NAME not in text and "names no pupils" in text


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils (deploy/dev.sh installs it)")
def test_names_only_when_asked(school: Path, tmp_path: Path) -> None:
    make(school, tmp_path / "named.pdf", "--names")
    text = " ".join(pdf_text(tmp_path / "named.pdf").split())
    assert PUPIL_NAME in text and "handle it as a safeguarding record" in text


def test_the_facts_count_the_year_and_the_html_escapes(school: Path) -> None:
    config = load_config(school)
    policy = load_policy(config.policy)
    engine = init_db(config.database_url)
    try:
        with session_factory(engine)() as session:
            year = Year.parse("2026-27", policy.school.zone)
            facts = gather(config, session, policy, year, datetime(2027, 8, 31, tzinfo=UTC))
    finally:
        engine.dispose()
    assert facts.check_counts["selftests"] > 150 and facts.check_counts["fixes"] == 1
    assert facts.check_counts["unfixed"] == 0 and facts.check_counts["filtering_down"] == 1
    assert set(facts.blocked_by_month) == {"pupil", "staff", "guest"} and sum(facts.blocked_by_month["pupil"]) > 0
    # September is the first month; the term ends on 21 July, so August is empty.
    assert facts.blocked_by_month["pupil"][10] > 0 and facts.blocked_by_month["pupil"][11] == 0
    assert {name for name, _ in facts.blocked_by_category} == {"social_media", "gambling", "pornography",
                                                               "circumvention"}
    assert facts.requests[0]["requester"] == ""  # no names unless asked
    html = render_html(facts)
    assert "<svg" in html and "Blocked attempts each month, by role" in html


@pytest.mark.parametrize(
    ("mode", "expected", "absent"),
    [
        ("gateway", ["Gateway mode", "nothing in this part is left to other equipment"], "must do instead"),
        ("bridge", ["Bridge mode", "bypass switch"], "left to other equipment"),
        ("dns-only", ["DNS only mode", "port 53", "port 853", "UDP ports 80 and 443"], "left to other equipment"),
    ],
)
def test_the_pack_says_what_the_mode_leaves_to_the_schools_own_firewall(
    school: Path, mode: str, expected: list[str], absent: str
) -> None:
    config = load_config(school)
    network = dataclasses.replace(config.network, mode=mode)
    config = dataclasses.replace(config, network=network)
    policy = load_policy(config.policy)
    engine = init_db(config.database_url)
    try:
        with session_factory(engine)() as session:
            facts = gather(config, session, policy, Year.parse("2026-27", policy.school.zone),
                           datetime(2027, 8, 31, tzinfo=UTC))
    finally:
        engine.dispose()
    text = html.unescape(" ".join(re.sub(r"<[^>]+>", " ", render_html(facts)).split()))
    for words in expected:
        assert words in text, words
    assert absent not in text


@pytest.mark.parametrize("text", ["2026", "2026-28", "26-27", "2026-2027"])
def test_a_year_must_be_a_school_year(text: str) -> None:
    with pytest.raises(ReviewError, match="YYYY-YY"):
        Year.parse(text, UTC)
