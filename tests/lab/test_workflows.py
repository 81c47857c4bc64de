"""The people the policies name, doing their part on the lab's devices: a pupil meeting the block
page written for children and telling the DSL it upset them, a teacher opening a site for the
lesson, a teaching assistant reporting content, and approvals and blocks for pages held at their
URL prefix only where the proxy can see pages.

Chromium runs inside a device's namespace (tests/lab/browse.py, through Playwright); the
appliance's own daemons, under `schoolgate run`, do the rest: DNS, the proxy, the console and
the scheduler that raises the DSL's case.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from schoolgate.config import load_config
from schoolgate.lab.client import LabClient
from schoolgate.lab.topology import device
from schoolgate.policy import load_policy
from schoolgate.store.models import Alert

pytestmark = [pytest.mark.root, pytest.mark.browser, pytest.mark.slow]

LESSON = "2026-11-23T10:15:00+00:00"  # Monday, autumn term, a lesson (GMT: local time = UTC)
CONSOLE = "http://10.41.0.1:8443"
_variants = sys.modules["schoolgate_tests_policy_variants"]  # tests/policy_variants.py


def lab_policy(folder: Path) -> Path:
    """The lab's policy (see tests/lab/conftest.py): the example with games blocked for pupils."""
    from schoolgate.lab.lab import DEFAULT_POLICY

    policy: Path = _variants.with_games(DEFAULT_POLICY, folder)
    return policy
T = TypeVar("T")
browse = sys.modules["schoolgate_tests_browsing"].browse


def scheduler_bound(lab: LabClient) -> float:
    """How long the scheduler may take to turn a new event into a case: two scans and slack."""
    return 2 * load_config(lab.lab.config_path).alerts.scan_interval_seconds + 10.0


def wait_until(produce: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)


def in_force(lab: LabClient, generation: int, dns_applies: Callable[[], bool], *, timeout: float) -> None:
    """Wait until the proxy has loaded overlay `generation` and DNS answers as it says (each
    daemon polls the generation on its own)."""

    def loaded() -> bool | None:
        try:
            proxy = lab.proxy_stats().get("overlay_generation", -1)
        except (OSError, ValueError):
            return None  # the proxy has not written its first stats yet
        return (proxy >= generation and dns_applies()) or None

    wait_until(loaded, timeout=timeout, what=f"overlay generation {generation} in DNS and the proxy")


def upset_case(lab: LabClient, device_id: str) -> Alert | None:
    with lab.session() as session:
        return session.scalars(
            select(Alert).where(Alert.kind == "pupil_upset", Alert.device_id == device_id)
        ).first()


def test_pupil_page_in_chromium_and_the_upset_button_tells_the_dsl(lab: LabClient, tmp_path: Path) -> None:
    lab.set_clock(LESSON)
    pupil = device("pupilca")  # trusts the school CA: the proxy shows HTTPS block pages to it
    shown, thanked = browse(
        lab,
        "pupilca",
        [["goto", "https://www.facebook.com/groups/year6"], ["click", "#upset-button"]],
        tmp_path / "pupilca",
        trust=(lab.school_ca,),
        viewport=(768, 1024),
    )
    assert shown["error"] is None and shown["status"] == 403, shown
    words = shown["text"]
    for phrase in ("This website is blocked", "Ask your teacher", "Kingswood Primary School",
                   "Did something upset you?", "This upset me", "Childline", "0800 1111", "For grown-ups"):
        assert phrase in words, (phrase, words)
    # The adult's facts: the rule and the clause that blocked it, and the category's rationale.
    assert "pupils-no-social-media" in words and "Social Media Policy §6" in words
    rationale = load_policy(lab.lab.policy).category_by_id["social_media"].description
    if rationale:
        assert rationale in words
    assert "<svg" in shown["html"] and "served-by=lab-internet" not in shown["html"]

    assert thanked["error"] is None and thanked["status"] == 200, thanked
    assert "Thank you for telling us" in thanked["text"]
    case = wait_until(lambda: upset_case(lab, pupil.device_id), timeout=scheduler_bound(lab),
                      what="the DSL's case for the upset pupil")
    assert case.severity == "high" and case.status == "new"
    assert (case.person_id, case.client_ip) == (pupil.person_id, pupil.ip)
    assert "www.facebook.com/groups/year6" in case.summary and pupil.person_name in case.title


def test_upset_button_on_a_device_without_the_school_ca_works_where_its_page_shows(
    lab: LabClient, tmp_path: Path
) -> None:
    from schoolgate.services.actor import Actor
    from schoolgate.services.site_blocks import BlockSpec, add_site_block
    from schoolgate.store.overlay import read_generation

    # A site the technician blocked after a report; served over plain HTTP, the only way a
    # device that does not trust the school CA can be shown a block page at all.
    lab.set_clock(LESSON)
    technician = Actor(name="lab-tech", display_name="Lab Technician", roles=frozenset({"technician"}))
    with lab.session() as session:
        add_site_block(session, site="kingswood", now=lab.lab.clock_now(), actor=technician,
                       spec=BlockSpec(domain="games.example.com"), reason="Lab: a frightening game")
        session.commit()
        generation = read_generation(session, "kingswood")
    in_force(lab, generation, lambda: lab.resolve("pupil", "games.example.com") == ["10.41.0.1"], timeout=2.0)
    pupil = device("pupil")
    shown, thanked = browse(
        lab, "pupil", [["goto", "http://games.example.com/play"], ["click", "#upset-button"]], tmp_path / "pupil"
    )
    assert shown["status"] == 403 and "Ask your teacher" in shown["text"], shown
    assert thanked["status"] == 200 and "Thank you for telling us" in thanked["text"], thanked
    case = wait_until(lambda: upset_case(lab, pupil.device_id), timeout=scheduler_bound(lab),
                      what="the DSL's case for the upset pupil")
    assert "http://games.example.com/play" in case.summary

    # HTTPS to the same site: the device would not trust the school's certificate, so the proxy
    # closes the connection and shows nothing; the button can only be where a page is.
    (https,) = browse(lab, "pupil", [["goto", "https://games.example.com/play"]], tmp_path / "pupil")
    assert https["error"] is not None and "Thank you" not in https["text"]


# ------------------------------------------------------------------ approval-scope honesty


def issuer(stderr: str) -> str:
    return next((line.split("issuer:", 1)[1].strip() for line in stderr.splitlines() if "issuer:" in line), "")


def test_a_page_approval_is_held_at_its_prefix_only_where_the_proxy_sees_pages(lab: LabClient) -> None:
    from schoolgate.store.models import PolicyExceptionRow
    from schoolgate.store.overlay import bump_generation

    lab.set_clock(LESSON)
    now = lab.lab.clock_now()
    with lab.session() as session:
        row = PolicyExceptionRow(
            site="kingswood", scope="role", subject="pupil", domain=None,
            url_prefix="https://www.facebook.com/kingswoodpta", starts=now - timedelta(minutes=1),
            expires=now + timedelta(hours=2), reason="Lab: the PTA's page", created_by="lab-test",
        )
        session.add(row)
        bump_generation(session, "kingswood")
        session.commit()
        exception_id = row.id
    try:
        page = "https://www.facebook.com/kingswoodpta/photos"
        # A device that trusts the school CA: intercepted, each page judged with its URL.
        def opened() -> subprocess.CompletedProcess[str] | None:
            done = lab.curl("pupilca", page, "-v", ca=lab.school_ca, timeout=2)
            return done if done.returncode == 0 and "served-by=lab-internet" in done.stdout else None

        inside = wait_until(opened, timeout=2.0, what="the approved page to open on the trusting device")
        assert issuer(inside.stderr).startswith("CN=") and "lab public" not in issuer(inside.stderr)
        outside = lab.curl("pupilca", "https://www.facebook.com/someone-else", ca=lab.school_ca)
        assert outside.returncode == 0 and "This website is blocked" in outside.stdout
        assert "served-by=lab-internet" not in outside.stdout
        # A device that does not: the proxy cannot see the page, so the whole site is open, as
        # the headteacher was told before signing.
        anywhere = lab.curl("pupil", "https://www.facebook.com/someone-else", "-v")
        assert anywhere.returncode == 0 and "served-by=lab-internet" in anywhere.stdout
        assert issuer(anywhere.stderr) == "CN=schoolgate lab public root"  # passed through untouched
    finally:
        with lab.session() as session:
            stored = session.get(PolicyExceptionRow, exception_id)
            assert stored is not None
            stored.revoked_at = lab.lab.clock_now()
            bump_generation(session, "kingswood")
            session.commit()


def test_a_page_block_is_held_at_its_prefix_or_closes_the_whole_site(lab: LabClient) -> None:
    from schoolgate.store.models import SiteBlockRow
    from schoolgate.store.overlay import bump_generation

    lab.set_clock(LESSON)
    with lab.session() as session:
        row = SiteBlockRow(site="kingswood", domain=None, url_prefix="https://library.example.org/restricted",
                           roles="pupil", reason="Lab: a reported page", created_by="lab-test")
        session.add(row)
        generation = bump_generation(session, "kingswood")
        session.commit()
        block_id = row.id
    try:
        in_force(lab, generation, lambda: lab.resolve("pupil", "library.example.org") == ["10.41.0.1"], timeout=2.0)
        # Trusting: the rest of the site works (through the proxy), the reported pages do not.
        fine = lab.curl("pupilca", "https://library.example.org/books", "-v", ca=lab.school_ca)
        assert fine.returncode == 0 and "served-by=lab-internet" in fine.stdout, fine.stderr
        nasty = lab.curl("pupilca", "https://library.example.org/restricted/page", ca=lab.school_ca)
        assert "This website is blocked" in nasty.stdout and "served-by=lab-internet" not in nasty.stdout
        # Not trusting: no page can be seen, so the whole site is closed, never less.
        assert lab.curl("pupil", "https://library.example.org/books").returncode != 0
        # Staff are not in the block's roles: untouched, never through the proxy's interception.
        staff = lab.curl("staff", "https://library.example.org/restricted/page", "-v")
        assert staff.returncode == 0 and issuer(staff.stderr) == "CN=schoolgate lab public root"
    finally:
        with lab.session() as session:
            stored = session.get(SiteBlockRow, block_id)
            assert stored is not None
            stored.removed_at = lab.lab.clock_now()
            bump_generation(session, "kingswood")
            session.commit()


# ---------------------------------------------------------------- staff without a dashboard


def add_account(lab: LabClient, username: str, role: str, *, email: str | None = None,
                person: str | None = None) -> str:
    from schoolgate.console import accounts
    from schoolgate.services.permissions import ConsoleRole
    from schoolgate.store.models import ConsoleUser

    password = f"lab password for {username} 2026"
    password_hash = accounts.hash_password(password)  # before the transaction: hashing is slow
    with lab.session() as session:
        user = accounts.create_user(session, username=username, display_name=username.title(),
                                    roles=frozenset({ConsoleRole(role)}), password_hash=password_hash,
                                    site="kingswood", email=email)
        session.flush()
        stored = session.get(ConsoleUser, user.id)
        assert stored is not None
        stored.person_external_id = person
        session.commit()
    return password


def test_a_teacher_opens_a_site_for_the_lesson_within_two_seconds_and_it_closes_at_the_window_edge(
    lab: LabClient, tmp_path: Path
) -> None:
    from schoolgate.lab.internet import address_for_name
    from schoolgate.store.models import LessonUnlock, Person
    from schoolgate.store.overlay import bump_generation

    staff = device("staff")  # Cara Teacher, who teaches 5A: the class of the `pupil` device
    with lab.session() as session:
        teacher = session.scalars(select(Person).where(Person.external_id == staff.person_id)).one()
        teacher.groups = "teachers,5A"
        bump_generation(session, "kingswood")
        session.commit()
    password = add_account(lab, "cara", "teacher", person=staff.person_id)
    lab.set_clock(LESSON)
    game = address_for_name("coolmathgames.com")
    assert lab.resolve("pupil", "coolmathgames.com") == ["10.41.0.1"]  # games are not for lessons

    steps = [["goto", f"{CONSOLE}/login"], ["fill", "#f-username", "cara"], ["fill", "#f-password", password],
             ["click", "main button[type=submit]"], ["fill", "#f-url", "https://coolmathgames.com/0-2048"],
             ["fill", "#f-reason", "Times tables"], ["click", "#open-form button[type=submit]"]]
    *_, signed_in, _url, _reason, opened = browse(lab, "staff", steps, tmp_path / "staff")
    assert signed_in["url"].endswith("/lesson") and "10:30 am, when morning break starts" in signed_in["text"]
    assert "coolmathgames.com is open for 5A until" in opened["text"], opened["text"][:800]

    def open_for_the_class() -> bool | None:
        if lab.resolve("pupil", "coolmathgames.com") != [game]:
            return None
        return lab.curl("pupil", "http://coolmathgames.com/", timeout=2).returncode == 0 or None

    wait_until(open_for_the_class, timeout=opened["done_at"] + 2.0 - time.time(), what="the site to open")
    assert lab.resolve("pupilca", "coolmathgames.com") == ["10.41.0.1"]  # 6B: not their class
    with lab.session() as session:
        unlock = session.scalars(select(LessonUnlock).order_by(LessonUnlock.id.desc())).first()
        assert unlock is not None and (unlock.group, unlock.ends_with) == ("5A", "morning break starts")
        ends = unlock.ends
    # The lab's clock reaches the end of the lesson: the site closes with it, on its own.
    lab.set_clock((ends + timedelta(seconds=1)).isoformat())
    assert lab.resolve("pupil", "coolmathgames.com") == ["10.41.0.1"]
    lab.set_clock(LESSON)


def test_a_teaching_assistants_report_from_a_lab_device_reaches_the_technicians_inbox(
    lab: LabClient, tmp_path: Path
) -> None:
    from schoolgate.scheduler.runner import NOTIFY_SECONDS

    add_account(lab, "techlab", "technician", email="technicians@kingswood.lab.example")
    lab.set_clock(LESSON)
    before = len(lab.mails())
    steps = [["goto", f"{CONSOLE}/report?url=https://scary.example.org/clip"],
             ["fill", "#f-submitter_name", "Mr Tay (teaching assistant, 5A)"],
             ["fill", "#f-nature", "A frightening clip came up in a search"],
             ["click", "#report-form button[type=submit]"]]
    *_, sent = browse(lab, "pupil", steps, tmp_path / "ta")  # the class iPad the assistant was helping with
    assert "The ICT technicians have been told." in sent["text"], sent["text"][:500]
    reference = re.search(r"IR-\d{6}", sent["text"])
    assert reference is not None

    def delivered() -> tuple[list[str], Any] | None:
        mails = lab.mails()[before:]
        return next((m for m in mails if "technicians@kingswood.lab.example" in m[0]), None)

    # The scheduler's notification job runs every NOTIFY_SECONDS: two runs and the mail's way.
    recipients, message = wait_until(delivered, timeout=2 * NOTIFY_SECONDS + 10, what="the technicians' e-mail")
    assert recipients == ["technicians@kingswood.lab.example"]
    assert message["Subject"] == f"Inappropriate content reported at Kingswood Primary School: {reference.group(0)}"
    text = message.get_body(("plain",)).get_content()
    assert "Mr Tay (teaching assistant, 5A) reported inappropriate content (1 address on scary.example.org)" in text
    assert f"from the device {device('pupil').device_id}" in text
    assert f"{CONSOLE}/reports/" in text
