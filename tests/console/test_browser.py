"""Each role's main journey in Chromium against the real server (`schoolgate console`).

The console runs as it does on the appliance, under gunicorn, started by the `schoolgate`
command with a temporary config, a SQLite database and the example policy; accounts are made
with `schoolgate users add`. Set SCHOOLGATE_SCREENSHOTS=<dir> to keep screenshots of the
dashboard and of the phone-sized approval page.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyotp
import pytest
from console_testkit import SITE, add_event, write_config

from schoolgate.config import AppConfig, load_config
from schoolgate.store.db import make_engine, session_factory

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCHOOLGATE = [sys.executable, "-m", "schoolgate"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
SHOTS = os.environ.get("SCHOOLGATE_SCREENSHOTS")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run([*SCHOOLGATE, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


@dataclass
class Live:
    base: str
    config_path: Path
    config: AppConfig
    passwords: dict[str, str]
    totp: dict[str, str] = field(default_factory=dict)
    last_step: dict[str, int] = field(default_factory=dict)

    def code(self, username: str) -> str:
        """A code the console will accept: each 30-second step is accepted once per user, and
        the console allows one step of drift, so use the next unused step (waiting if both the
        current and the next step are spent)."""
        totp = pyotp.TOTP(self.totp[username])
        while True:
            current = totp.timecode(datetime.now(UTC))
            step = max(current, self.last_step.get(username, -1) + 1)
            if step <= current + 1:
                break
            time.sleep(0.5)
        self.last_step[username] = step
        return totp.generate_otp(step)

    def session(self) -> Any:
        return session_factory(make_engine(self.config.database_url))()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live-console")
    port = _free_port()
    config_path = write_config(tmp, listen=f"127.0.0.1:{port}")
    _run("db", "upgrade", "--config", str(config_path))
    passwords = {}
    for username, roles, name in (
        ("tech", ["technician"], "Mr T Jones"),
        ("head", ["headteacher"], "Mrs J Patel"),
        ("dsl", ["dsl"], "Ms A Khan"),
    ):
        role_args = [arg for role in roles for arg in ("--role", role)]
        out = _run("users", "add", username, *role_args, "--name", name, "--config", str(config_path))
        match = re.search(r"one-time password: (\S+)", out)
        assert match, out
        passwords[username] = match.group(1)
    log = open(tmp / "console.log", "w")  # noqa: SIM115 - closed after the server stops
    server = subprocess.Popen(
        [*SCHOOLGATE, "console", "--plain-http", "--config", str(config_path)], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/login", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            log.close()
            raise AssertionError("the console did not start:\n" + (tmp / "console.log").read_text())
        time.sleep(0.1)
    try:
        yield Live(base=base, config_path=config_path, config=load_config(config_path), passwords=passwords)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Watched:
    """A page that records dialogs and CSP violations, which must never happen."""

    def __init__(self, browser: Any, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", self._console)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def close(self) -> None:
        self.context.close()
        assert self.dialogs == [], "a dialog fired"
        csp = [m for m in self.console_errors if "Content Security Policy" in m]
        assert csp == [], csp


def sign_in(watched: Watched, live: Live, username: str, *, start: str | None = None) -> None:
    page = watched.page
    if start is None:
        page.goto(f"{live.base}/login")
    page.fill("#f-username", username)
    page.fill("#f-password", live.passwords[username])
    page.click("button[type=submit]")
    if "/login/enrol" in page.url:
        secret = page.inner_text("#totp-secret").replace(" ", "")
        live.totp[username] = secret
        page.fill("#f-code", live.code(username))
        page.click("main button[type=submit]")
    elif "/login/code" in page.url:
        page.fill("#f-code", live.code(username))
        page.click("main button[type=submit]")
    assert "/login" not in page.url, page.inner_text("main")


def _register_device(live: Live, device_id: str, name: str, ip: str, mac: str = "") -> None:
    from schoolgate.services.actor import Actor
    from schoolgate.services.register import DeviceForm, create_device

    actor = Actor(name="tech", display_name="Mr T Jones", roles=frozenset({"technician"}), user_id=1)
    with live.session() as session:
        create_device(
            session,
            site=SITE,
            now=datetime.now(UTC),
            actor=actor,
            form=DeviceForm(device_id=device_id, name=name, ip=ip, mac=mac or None),
        )
        session.commit()


def _log_block(live: Live, device_id: str, client_ip: str, host: str) -> None:
    """The proxy's log line for the block the pupil just hit. The console finds the requester's
    device from the connection's address; the browser here connects from loopback, so the
    recent traffic from that address is what vouches for the device (not the link's value)."""
    from schoolgate.store.models import AccessEvent

    with live.session() as session:
        session.add(AccessEvent(site=SITE, ts=datetime.now(UTC), source="proxy", client_ip=client_ip,
                                device_id=device_id, role="pupil", host=host, verdict="block",
                                rule_id="pupils-no-social-media", count=1))
        session.commit()


def _explain(live: Live, *args: str) -> str:
    return _run("policy", "explain", "--config", str(live.config_path), "--ip", "10.41.20.15", *args, "--text")


def test_pupil_request_is_triaged_and_approved_on_a_phone(live: Live, browser: Any) -> None:
    from schoolgate.proxy.blockpage import BlockInfo, request_link

    _register_device(live, "KW-IPAD-12", "Class iPad 12", "10.41.20.15")
    before = _explain(live, "--host", "www.facebook.com")
    assert before.startswith("Blocked"), before

    # The pupil follows the block page's link to the request form.
    info = BlockInfo(
        school="Kingswood Primary School",
        host="www.facebook.com",
        url="https://www.facebook.com/kingswoodpta",
        rule_id="pupils-no-social-media",
        clause="Social Media Policy §6 and §9",
        reason="pupils may not use social media at school",
        at=datetime.now(UTC),
        device="KW-IPAD-12",
        device_name="Class iPad 12",
        zone=UTC,  # only the request link is used: it carries the instant, not words
        service_name="Facebook",
    )
    _log_block(live, "KW-IPAD-12", "127.0.0.1", "www.facebook.com")
    pupil = Watched(browser)
    page = pupil.page
    page.goto(request_link(live.base, info))
    assert page.input_value("#f-url") == "https://www.facebook.com/kingswoodpta"
    page.fill("#f-requester", "Sam Pupil (6B)")
    page.fill("#f-staff_name", "Mr Green")
    page.fill("#f-site_content", "The PTA's page with photos of the summer fair")
    page.fill("#f-reasons", "Our Year 6 project is about the summer fair")
    page.click("main button[type=submit]")
    reference = page.inner_text("#reference")
    token = page.inner_text("#token")
    assert reference.startswith("AR-")
    page.click("#status-link")
    assert "submitted" in page.inner_text("#request-status").lower()

    # The technician checks it and forwards it with a proposed scope.
    tech = Watched(browser)
    sign_in(tech, live, "tech")
    tech.page.goto(f"{live.base}/requests")
    tech.page.click(f"text={reference}")
    tech.page.fill("#f-technician_notes", "Public PTA page; no comments visible without an account")
    tech.page.fill("#f-risks_and_controls", "Comments from the public: the class teacher supervises")
    assert tech.page.input_value("#f-scope") == "device"
    assert tech.page.input_value("#f-subject") == "KW-IPAD-12"
    tech.page.fill("#f-value", "facebook.com")
    tech.page.click("#triage-form button[type=submit]")
    assert "forwarded to the headteacher" in tech.page.inner_text("main")
    tech.close()

    # The headteacher approves on a phone between lessons, signing with password and TOTP.
    head = Watched(browser, **PHONE)
    sign_in(head, live, "head")
    head.page.goto(f"{live.base}/requests")
    head.page.click(f"text={reference}")
    assert head.page.is_visible("#decide-form")
    head.page.click("#decide-form details.more summary")  # reasons are optional to approve: tucked away
    head.page.fill("#f-reasons", "Supervised use for the project this term")
    head.page.fill("#f-password", live.passwords["head"])
    head.page.fill("#f-code", live.code("head"))
    if SHOTS:
        head.page.screenshot(path=str(Path(SHOTS) / "approval-phone.png"), full_page=True)
    # Large tap targets: the sign button is at least 44 CSS pixels tall and fits the screen.
    box = head.page.locator("button[value=approve]").bounding_box()
    assert box is not None and box["height"] >= 44 and box["width"] <= 390
    head.page.click("button[value=approve]")
    assert "is approved" in head.page.inner_text("main")
    assert head.page.inner_text("#decision") == "Yes"
    head.close()

    # The pupil sees the outcome, and the policy now allows the site for that iPad.
    page.goto(f"{live.base}/request/status?ref={reference}&token={token}")
    assert "approved" in page.inner_text("#request-status").lower()
    pupil.close()
    after = _explain(live, "--host", "www.facebook.com")
    assert after.startswith("Allowed") and "Exception" in after, after


@dataclass
class Journey:
    """A scripted journey at a person's pace: each tap waits as long as finding and reaching the
    target takes, each character as long as typing it on a phone's keyboard takes."""

    page: Any
    tap_s: float = 1.0  # find the field or button and touch it
    key_s: float = 0.2  # one character on a phone keyboard
    taps: int = 0
    person_s: float = 0.0  # the person's own time: taps and typing (the rest is the pages loading)

    def tap(self, selector: str, *, submits: bool = False) -> None:
        """Touch `selector`; `submits`: it sends a form, and the next page is waited for."""
        self.page.wait_for_timeout(self.tap_s * 1000)
        self.person_s += self.tap_s
        if submits:
            with self.page.expect_navigation():
                self.page.tap(selector)
        else:
            self.page.tap(selector)
        self.taps += 1

    def type(self, text: str, *, focused: str | None = None) -> None:
        """Type into the focused field. `focused`: the field the page gives the focus to (by
        autofocus), which a person sees with the keyboard up before typing. Chromium applies
        autofocus in a rendering step that may come after the load event on a busy machine, and
        keys typed before it go nowhere."""
        if focused is not None:
            self.page.wait_for_function("sel => document.activeElement === document.querySelector(sel)", arg=focused)
        self.page.keyboard.type(text, delay=self.key_s * 1000)
        self.person_s += self.key_s * len(text)


def _approve_button_bottom(page: Any) -> float:
    box = page.locator("button[value=approve]").bounding_box()
    assert box is not None
    return float(box["y"] + box["height"] + page.evaluate("window.scrollY"))


def test_the_headteacher_decides_from_the_email_link_on_a_phone(live: Live, browser: Any) -> None:
    """The proposal in one sentence, what it opens, the signature and the buttons on the first
    screen of a phone; the code box brings up the number pad. Measured: pixels from the top of the
    page to the bottom of the Approve button, taps, and seconds of the journey from the e-mail's
    link, signed out (the usual case between lessons) and still signed in."""
    from schoolgate.services import access_requests as ar
    from schoolgate.services import notifications
    from schoolgate.services.actor import Actor
    from schoolgate.store.models import ConsoleUser

    if "head" not in live.totp:  # the headteacher's second factor, as the first journey sets it up
        setup = Watched(browser)
        sign_in(setup, live, "head")
        setup.close()
    now = datetime.now(UTC)
    policy_path = live.config.policy
    from schoolgate.policy import load_policy

    policy = load_policy(policy_path)
    with live.session() as session:
        users = {u.username: u for u in session.query(ConsoleUser)}
        users["head"].email = "head@kingswood.example"
        tech = Actor.from_user(users["tech"])
        requests = []
        for host in ("www.instagram.com", "x.com"):
            submitted = ar.submit_request(session, site=SITE, now=now, policy=policy, form=ar.RequestForm(
                requester="Mr Green (6B)", url=f"https://{host}/kingswoodschool", reasons="The school's own posts",
                client_ip="10.41.10.20"))
            ar.triage_request(session, site=SITE, now=now, actor=tech, request_id=submitted.request.id, policy=policy,
                              form=ar.TriageForm(technician_notes="The school's own account", risks_and_controls=(
                                  "Replies from strangers: staff read only"), target="domain", value=host.removeprefix(
                                  "www."), scope="role", subject="staff", starts=now,
                                  expires=now + timedelta(days=30)))
            requests.append(submitted.request.id)
        session.commit()
        notices = notifications.due(session, site=SITE, site_name="Kingswood Primary School",
                                    base_url=live.config.console.base_url, zone=policy.school.zone)
    texts = [n.rendered.text for n in notices if n.recipients == ["head@kingswood.example"]]
    links = [re.search(rf"{re.escape(live.base)}/requests/{rid}\b", "".join(texts)) for rid in requests]
    assert all(links), texts

    measured: dict[str, dict[str, float]] = {}
    head = Watched(browser, **PHONE)
    page = head.page
    for label, link in (("signed out", links[0]), ("signed in", links[1])):
        assert link is not None
        journey = Journey(page)
        # The codes the authenticator shows, read before the clock starts: live.code may wait for
        # a fresh 30-second step, which a person would not.
        codes = [live.code("head") for _ in range(2 if label == "signed out" else 1)]
        started = time.monotonic()
        page.goto(link.group(0))
        if label == "signed out":
            assert "/login" in page.url
            journey.type("head", focused="#f-username")  # the username box has the focus
            journey.tap("#f-password")
            journey.type(live.passwords["head"])
            journey.tap("main button[type=submit]", submits=True)
            journey.type(codes.pop(0), focused="#f-code")  # the code box has the focus, with the number pad
            journey.tap("main button[type=submit]", submits=True)
        assert page.url == link.group(0), (page.url, page.inner_text("main")[:500])
        pixels = _approve_button_bottom(page)
        assert page.inner_text("#summary").startswith("Mr Green (6B) asks to use")
        code = page.locator("#f-code")
        assert code.get_attribute("inputmode") == "numeric"
        assert code.get_attribute("autocomplete") == "one-time-code"
        journey.type(live.passwords["head"], focused="#f-password")  # the password box has the focus
        journey.tap("#f-code")
        journey.type(codes.pop(0))
        journey.tap("button[value=approve]", submits=True)
        seconds = time.monotonic() - started
        assert "is approved" in page.inner_text("main"), page.inner_text("main")[:600]
        measured[label] = {"pixels": pixels, "taps": journey.taps, "seconds": round(seconds, 1),
                           "person_seconds": round(journey.person_s, 1)}
        if SHOTS:
            page.screenshot(path=str(Path(SHOTS) / f"decision-{label.replace(' ', '-')}.png"))
    head.close()
    print(f"\nheadteacher's phone journey from the e-mail link: {measured}")
    for label, numbers in measured.items():
        assert numbers["pixels"] <= PHONE["viewport"]["height"], (label, numbers)  # on the first screen
        # The person's part is the design's (taps, characters); the pages' part is the machine's,
        # longer on a busy test machine than on an appliance, so the bound leaves it 5 seconds.
        assert numbers["person_seconds"] < 25, (label, numbers)
    assert measured["signed out"]["taps"] <= 5 and measured["signed in"]["taps"] <= 2, measured


def test_a_technician_records_a_manual_check_on_a_phone_in_under_a_minute(live: Live, browser: Any) -> None:
    """The DfE standard's record of a check (when, who, the device, where, as whom, what was
    tried, the result, the action), made on a phone beside the device that was tested. Measured:
    taps, and the person's seconds from opening the form to the saved check."""
    from sqlalchemy import select

    from schoolgate.store.models import CheckRecord

    tech = Watched(browser, **PHONE)
    page = tech.page
    sign_in(tech, live, "tech")
    journey = Journey(page)
    started = time.monotonic()
    page.goto(f"{live.base}/checks/new")
    journey.tap("#f-device_type")
    page.fill("#f-device_type", "")  # the last check's device is offered first; this one differs
    journey.type("iPad")
    journey.tap("#f-location")
    page.fill("#f-location", "")
    journey.type("Year 5")
    journey.tap("#f-profile")  # the phone's picker opens; a second touch chooses
    page.select_option("#f-profile", index=1)
    journey.tap("#f-profile")
    journey.tap("#f-tried")
    journey.type("bet365.com in Safari")
    journey.tap("input[name=result][value=pass]")
    journey.tap("#check-form button[type=submit]", submits=True)
    seconds = time.monotonic() - started
    assert "recorded: passed" in page.inner_text("main"), page.inner_text("main")[:500]
    tech.close()
    with live.session() as session:
        row = session.scalars(select(CheckRecord).order_by(CheckRecord.id.desc())).first()
        assert row is not None
        assert (row.kind, row.device_type, row.location, row.tried, row.result) == (
            "manual", "iPad", "Year 5", "bet365.com in Safari", "pass")
        assert row.actor_name == "Mr T Jones" and row.profile
    measured = {"taps": journey.taps, "seconds": round(seconds, 1), "person_seconds": round(journey.person_s, 1)}
    print(f"\ntechnician's manual check on a phone: {measured}")
    # The person's part is the form's design (taps, characters); the pages' part is the machine's.
    assert journey.person_s < 60 and journey.taps <= 8, measured


def test_content_report_is_actioned_by_blocking_the_url(live: Live, browser: Any) -> None:
    url = "https://www.example.org/scary-video"
    assert _explain(live, "--url", url).startswith("Allowed")
    dsl = Watched(browser)
    sign_in(dsl, live, "dsl")
    dsl.page.goto(f"{live.base}/reports/new")
    dsl.page.fill("#f-accessed_by", "A pupil in 4C")
    dsl.page.fill("#f-urls", url)
    dsl.page.fill("#f-nature", "Frightening video shown in a search result")
    dsl.page.click("main button[type=submit]")
    report_page = dsl.page.url
    assert re.search(r"/reports/\d+$", report_page)
    dsl.close()

    tech = Watched(browser)
    sign_in(tech, live, "tech")
    tech.page.goto(report_page)
    tech.page.check(f"input[name=block_url][value='{url}']")
    tech.page.fill("#f-action_taken", "Blocked the URL for everyone")
    tech.page.click("#action-form button[type=submit]")
    assert "1 block(s) added" in tech.page.inner_text("main")
    assert "Blocked the URL for everyone" in tech.page.inner_text("#action-taken")
    tech.page.goto(f"{live.base}/policy")
    assert url in tech.page.inner_text("#site-blocks")
    tech.close()
    assert _explain(live, "--url", url).startswith("Blocked")


def test_dsl_opens_the_digest_link_reviews_resolves_and_bans(live: Live, browser: Any) -> None:
    from schoolgate.policy import load_policy
    from schoolgate.services.alert_rules import AlertEngine
    from schoolgate.services.digest import compose_digest, render_digest

    # A ban follows a device by its MAC address, so the register has it.
    _register_device(live, "KW-LAPTOP-07", "Laptop 7", "10.41.20.77", mac="02:00:00:41:20:77")
    before = _run(
        "policy",
        "explain",
        "--config",
        str(live.config_path),
        "--ip",
        "10.41.20.77",
        "--host",
        "news.example.net",  # a site no other test in this module blocks
        "--text",
    )
    assert before.startswith("Allowed"), before
    now = datetime.now(UTC)
    with live.session() as session:
        for minute in range(3):
            add_event(
                session,
                ts=now - timedelta(minutes=5 - minute),
                host="psiphon.ca",
                url=None,
                device_id="KW-LAPTOP-07",
                device_name="Laptop 7",
                person_id="P2001",
                person_name="Alex Pupil",
                client_ip="10.41.20.77",
                service=None,
                category="circumvention",
                rule_id="no-circumvention",
                flags="circumvention",
            )
        AlertEngine().scan(session, SITE, None, now)
        content = compose_digest(session, site=SITE, site_name="Kingswood Primary School", now=now,
                                 zone=load_policy(live.config.policy).school.zone)
        mail = render_digest(content, live.config.console.base_url)
        session.commit()
    links = re.findall(r"http://127\.0\.0\.1:\d+/alerts/\d+", mail.text)
    assert links, mail.text

    dsl = Watched(browser, **PHONE)
    dsl.page.goto(links[0])  # signed out: the console asks for sign-in, then goes to the case
    assert "/login" in dsl.page.url
    sign_in(dsl, live, "dsl", start=links[0])
    assert dsl.page.url == links[0], dsl.page.url
    assert "KW-LAPTOP-07" in dsl.page.inner_text("#alert-device")
    dsl.page.fill("#f-note", "Spoke to Alex; they found the app on a video site")
    dsl.page.click("text=Add note")
    assert "Spoke to Alex" in dsl.page.inner_text("main")
    dsl.page.select_option("#f-assessment", "true_positive")
    dsl.page.fill("#f-outcome", "Parents informed; e-safety session booked")
    dsl.page.click("#resolve-form button[type=submit]")
    assert "resolved" in dsl.page.inner_text("main h1 + span, .titlebar").lower()
    assert "Parents informed" in dsl.page.inner_text("#alert-outcome")
    until = (datetime.now(UTC) + timedelta(days=14)).astimezone().strftime("%Y-%m-%dT%H:%M")
    dsl.page.fill("#f-until", until)
    assert dsl.page.input_value("#f-supervisor")  # the policy's supervisor, offered
    assert "Alex" not in dsl.page.input_value("#f-ban_reason")  # a reason that names nobody
    dsl.page.click("#ban-form button[type=submit]")
    assert "Banned: close supervision only" in dsl.page.inner_text("main")
    dsl.page.goto(f"{live.base}/alerts/bans")
    assert "KW-LAPTOP-07" in dsl.page.inner_text("main")
    dsl.close()
    explained = _run(
        "policy",
        "explain",
        "--config",
        str(live.config_path),
        "--ip",
        "10.41.20.77",
        "--host",
        "news.example.net",  # a site no other test in this module blocks
        "--text",
    )
    assert explained.startswith("Blocked") and "ban" in explained.lower(), explained


def test_dashboard_and_hostile_events_in_chromium(live: Live, browser: Any) -> None:
    from schoolgate.services.rollups import update_rollups

    now = datetime.now(UTC)
    with live.session() as session:
        for hour in range(48):
            for number, (service, role) in enumerate(
                (("facebook", "pupil"), ("tiktok", "pupil"), ("instagram", "staff"))
            ):
                add_event(
                    session,
                    ts=now - timedelta(hours=hour, minutes=number),
                    service=service,
                    role=role,
                    host=f"www.{service}.com",
                    count=1 + (hour * 7 + number * 3) % 11,
                )
        add_event(
            session,
            ts=now - timedelta(minutes=1),
            host='x.example"><img src=x onerror=alert(1)>',
            url="javascript:alert(2)",
            search_term="<script>alert(3)</script>",
            device_name="<svg onload=alert(4)>",
            service="<b>svc</b>",
            device_id="KW-DESKTOP-01",
        )
        update_rollups(session, SITE, now, zone=UTC)  # the scheduler's job, every minute on the appliance
        session.commit()
    head = Watched(browser)
    sign_in(head, live, "head")
    head.page.goto(f"{live.base}/dashboard?days=7")
    assert head.page.locator(".chart svg").count() >= 3
    if SHOTS:
        head.page.set_viewport_size({"width": 1280, "height": 900})
        head.page.screenshot(path=str(Path(SHOTS) / "dashboard.png"), full_page=True)
    head.page.goto(f"{live.base}/activity")
    assert "<script>alert(3)</script>" in head.page.inner_text("#events")  # shown as text
    assert head.page.locator("#events img, #events svg, #events script").count() == 0
    head.page.click("text=Why blocked? >> nth=0")
    assert head.page.inner_text("#explanation").startswith("Blocked: pupils may not use social media")
    head.close()  # asserts no dialog fired and no CSP violation was reported
