"""A school day in the lab, measured: no alert from ordinary use, one case and a ban that sticks.

Every lab device browses as it would on a normal day, for a given number of minutes, starting
just after school hours (the example policy, ASPIRE's, lets staff use Facebook then (§4), in
Chromium, which tries HTTP/3 once a site advertises it):

- the staff laptop and the Year 6 laptop load pages in Chromium, keeping their profiles, so the
  sites' Alt-Svc makes Chromium try QUIC, which the gateway refuses quietly;
- the pupils' iPad, the guest's phone and the supervised (banned) iPad fetch the sites their
  role allows, and a pupil now and then tries a blocked site once, as children do;
- a hall TV sends its DNS to public resolvers it was set up with (8.8.8.8, 1.1.1.1), which
  schoolgate answers instead;
- a pupil's own phone, which the register does not know, browses too.

Then the phone tries its ways round the filter: a VPN site, DNS over HTTPS, and a TLS connection
that names an innocent site but goes to Facebook's address. The measurement: alerts raised by
the normal day (zero is right), circumvention cases for the phone (exactly one is right), and
how long after the ban the phone is supervised, in DNS and in the proxy (seed 001 §9). Under
the example policy the ban is offered, and the DSL imposes it from the case as the console does
(by the MAC the case was seen with: the phone is not in the register); under
`[bans] on_circumvention = "automatic"` the scheduler's alert job imposes it.

Used by `bench/lab_session.py` (the full 15 minutes, printed) and `tests/lab/test_session.py`
(a shorter run in CI). Every loop is bounded in count and time; traffic stays in the lab.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from schoolgate.lab.client import LabClient
from schoolgate.lab.internet import DOH_IP, SITES
from schoolgate.lab.lab import SITE_ID
from schoolgate.lab.topology import GATEWAY_LAN_IP, LabDevice
from schoolgate.store.models import AccessEvent, Alert, BanRow

AFTER_SCHOOL = "2026-11-23T15:20:00+00:00"  # a Monday in term, GMT: 3:20 pm in London, after school hours
FACEBOOK_IP = next(s.ip for s in SITES if s.label == "facebook")
PHONE = LabDevice("phone", "10.41.20.77", "02:41:00:00:20:77", "", "", None, None, None, None, registered=False)
HALL_TV = LabDevice("tv", "10.41.10.90", "02:41:00:00:10:90", "", "", None, None, None, None, registered=False)
HARD_CODED_RESOLVERS = ("8.8.8.8", "1.1.1.1")
# Names the lab internet serves with a certificate the devices trust
ALLOWED_NAMES = ("library.example.org", "www.bbc.co.uk", "www.example.com", "weather.example.net")
MAX_ACTIONS = 2000  # per device: the bound on each loop, whatever the duration


@dataclass
class Device:
    """One device's normal day: an action every `every` seconds (with jitter)."""

    key: str
    every: float
    act: Callable[[int], str]  # -> what it did, for the tally
    done: dict[str, int] = field(default_factory=dict)


@dataclass
class SessionReport:
    minutes: float
    actions: dict[str, dict[str, int]]
    events: dict[str, int]  # by verdict
    quic_refused: int  # gateway events: HTTP/3 refused quietly
    foreign_dns: int  # gateway events: DNS to another resolver, answered by schoolgate
    alerts_from_normal_day: list[str]
    circumvention_cases: list[str]
    phone_case_severity: str | None
    ban: str | None
    ban_latency_s: float | None  # from the ban's commit to the phone's first supervised DNS answer
    ban_proxy_latency_s: float | None = None  # ... and to the proxy's first supervised block page
    cpu_s: float = 0.0

    def lines(self) -> list[str]:
        out = [f"lab session: {self.minutes:g} minutes of a school day (from 3:20 pm, after school hours)"]
        for key, tally in sorted(self.actions.items()):
            out.append(f"  {key:8} " + ", ".join(f"{what} {n}" for what, n in sorted(tally.items())))
        out.append("  events: " + ", ".join(f"{verdict} {n}" for verdict, n in sorted(self.events.items())))
        out.append(f"  quietly refused HTTP/3 (QUIC): {self.quic_refused}; DNS to other resolvers: {self.foreign_dns}")
        out.append(f"  alerts from the normal day: {len(self.alerts_from_normal_day)}"
                   + (f" ({'; '.join(self.alerts_from_normal_day)})" if self.alerts_from_normal_day else ""))
        out.append(f"  circumvention cases for the pupil's phone: {len(self.circumvention_cases)}"
                   + (f" (severity {self.phone_case_severity})" if self.phone_case_severity else ""))
        def seconds(value: float | None) -> str:
            return f"{value:.2f} s" if value is not None else "not measured"

        out.append(f"  ban: {self.ban or 'none'}; in force on the phone after it was made: "
                   f"DNS {seconds(self.ban_latency_s)}, proxy {seconds(self.ban_proxy_latency_s)}")
        return out


class Session:
    def __init__(self, client: LabClient, *, seed: int = 20261123, home: Path) -> None:
        self.client = client
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.home = home
        self.stop = threading.Event()

    # -- the devices' days

    def _pick(self, names: tuple[str, ...]) -> str:
        with self.lock:
            return self.rng.choice(names)

    def _curl(self, key: str, url: str, *extra: str) -> str:
        done = self.client.curl(key, url, *extra, timeout=6)
        return "page" if done.returncode == 0 else f"refused({done.returncode})"

    def _chromium(self, key: str, url: str, trust: tuple[str, ...] = ()) -> str:
        done = self.client.chromium(key, url, trust=trust, profile=str(self.home / key), timeout=60)
        return "browser page" if "served-by=lab-internet" in done.stdout else "browser no page"

    def staff(self, n: int) -> str:
        if n % 2 == 0:
            return self._chromium("staff", "https://www.facebook.com/")  # after school: allowed; Alt-Svc says h3
        return self._curl("staff", f"https://{self._pick(ALLOWED_NAMES)}/")

    def pupil(self, n: int) -> str:
        if n % 15 == 14:
            return "blocked once: " + self._curl("pupil", "https://www.instagram.com/")
        return self._curl("pupil", f"https://{self._pick(ALLOWED_NAMES)}/")

    def pupilca(self, n: int) -> str:
        return self._chromium("pupilca", f"https://{self._pick(ALLOWED_NAMES[:2])}/", (self.client.school_ca,))

    def guest(self, n: int) -> str:
        return self._curl("guest", f"https://{self._pick(ALLOWED_NAMES)}/")

    def supervised(self, n: int) -> str:
        return self._curl("sup", "https://www.bbc.co.uk/")  # the curriculum: what a banned pupil may use

    def tv(self, n: int) -> str:
        resolver = HARD_CODED_RESOLVERS[n % len(HARD_CODED_RESOLVERS)]
        done = self.client.dig("tv", f"{self._pick(ALLOWED_NAMES)}", f"@{resolver}", "+short")
        return f"dns via {resolver}" if done.returncode == 0 else "dns failed"

    def phone(self, n: int) -> str:
        return self._curl("phone", f"https://{self._pick(ALLOWED_NAMES)}/")

    def _loop(self, device: Device, until: float) -> None:
        for n in range(MAX_ACTIONS):
            if self.stop.is_set() or time.monotonic() >= until:
                return
            try:
                what = device.act(n)
            except Exception as err:  # a device's hiccup is tallied, not fatal to the session
                what = f"error {type(err).__name__}"
            device.done[what] = device.done.get(what, 0) + 1
            with self.lock:
                pause = device.every * self.rng.uniform(0.6, 1.4)
            if self.stop.wait(max(0.0, min(pause, until - time.monotonic()))):
                return

    # -- the phone's ways round the filter

    def circumvent(self) -> dict[str, str]:
        tried = {
            "vpn site": self._curl("phone", "https://nordvpn.com/"),
            "doh by name": self._curl("phone", "https://cloudflare-dns.com/dns-query?dns=AAABAAABAAAAAAAAA3d3dw"),
            "doh by address": self._curl(
                "phone", "https://cloudflare-dns.com/dns-query?dns=AAABAAABAAAAAAAAA3d3dw",
                "--resolve", f"cloudflare-dns.com:443:{DOH_IP}",
            ),
            "sni trick": self._curl("phone", "https://weather.example.net/", "--resolve",
                                    f"weather.example.net:443:{FACEBOOK_IP}"),
        }
        return tried


SUPERVISED_RULE = "supervised-everything-else"


def phone_supervised_in_dns(client: LabClient) -> bool:
    """Does the schoolgate DNS answer the phone as supervised (the library, open to pupils, blocked)?"""
    done = client.dig("phone", "library.example.org", "+short", "+time=1", "+tries=1")
    return GATEWAY_LAN_IP in done.stdout.split()


def phone_supervised_in_proxy(client: LabClient) -> bool:
    """Does the proxy judge the phone supervised? Plain HTTP to the block address is the proxy's
    to judge, by the Host it names: the library, open to pupils, gets the supervised rule's
    block page only once the proxy knows of the ban."""
    done = client.curl("phone", "http://library.example.org/", "--resolve",
                       f"library.example.org:80:{GATEWAY_LAN_IP}", timeout=2)
    return SUPERVISED_RULE in done.stdout


def _wait(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)


def run_session(client: LabClient, minutes: float, *, home: Path, seed: int = 20261123) -> SessionReport:
    """The measured school day on a lab that is up (gateway topology, the example policy or one
    like it)."""
    from schoolgate.policy import load_policy

    started_cpu = time.process_time()
    lab = client.lab
    automatic = load_policy(lab.policy).bans.automatic
    for item in (PHONE, HALL_TV):
        if item.key not in lab.state.extra_devices:
            lab.attach_device(item)
    client.set_clock(AFTER_SCHOOL)
    session = Session(client, seed=seed, home=home)
    devices = [
        Device("staff", 45.0, session.staff),
        Device("pupil", 20.0, session.pupil),
        Device("pupilca", 75.0, session.pupilca),
        Device("guest", 30.0, session.guest),
        Device("sup", 40.0, session.supervised),
        Device("tv", 10.0, session.tv),
        Device("phone", 25.0, session.phone),
    ]
    first_id = client.last_event_id()
    until = time.monotonic() + minutes * 60
    threads = [threading.Thread(target=session._loop, args=(d, until), daemon=True) for d in devices]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(timeout=minutes * 60 + 120)
    finally:
        session.stop.set()
    normal_day_last = client.last_event_id()
    # Every event of the normal day has been scanned for alerts (the scheduler scans every 5 s).
    _wait(lambda: _scanned_through(client, normal_day_last), 120, "the alert scan over the normal day")
    alerts_normal = _alerts(client, first_id)

    tried = session.circumvent()
    devices[-1].done.update({f"tried {k}: {v}": 1 for k, v in tried.items()})
    # From now on the phone asks every 50 ms whether it is supervised yet, so the moment the ban
    # takes effect is known to within that, whenever the ban is made.
    watch = SupervisedWatch(lambda: phone_supervised_in_dns(client))
    proxy_watch = SupervisedWatch(lambda: phone_supervised_in_proxy(client))
    watch.start()
    proxy_watch.start()
    try:
        case = _wait(lambda: _phone_case(client, first_id), 120, "the circumvention case for the phone")
        if automatic:
            ban = _wait(lambda: _phone_ban(client), 120, "the automatic ban on the phone")
            made_at = _made_at(client, ban)
        else:
            ban, made_at = _dsl_bans(client, case)
        supervised_at = watch.wait(60)
        proxy_supervised_at = proxy_watch.wait(60)
    finally:
        watch.stop()
        proxy_watch.stop()
    ban_latency = (supervised_at - made_at).total_seconds() if supervised_at is not None else None
    proxy_latency = (proxy_supervised_at - made_at).total_seconds() if proxy_supervised_at is not None else None
    after = client.last_event_id()
    _wait(lambda: _scanned_through(client, after), 120, "the alert scan after the attempts")
    cases = [f"case {a.id}: {a.title} ({a.severity})" for a in _cases(client, first_id, "circumvention")
             if a.client_ip == PHONE.ip]
    report = SessionReport(
        minutes=minutes,
        actions={d.key: d.done for d in devices},
        events=_verdicts(client, first_id),
        quic_refused=_count(client, first_id, "gateway.refuse.quic"),
        foreign_dns=_count(client, first_id, "gateway.redirect.dns"),
        alerts_from_normal_day=[f"{a.kind} {a.title} ({a.severity})" for a in alerts_normal],
        circumvention_cases=cases,
        phone_case_severity=case.severity,
        ban=(f"ban {ban.id} on {ban.mac} ({'until lifted' if ban.until is None else f'until {ban.until:%d %b}'}), "
             f"by {ban.created_by}, supervised by {ban.supervisor}"),
        ban_latency_s=ban_latency,
        ban_proxy_latency_s=proxy_latency,
    )
    report.cpu_s = time.process_time() - started_cpu
    return report


class SupervisedWatch:
    """Asks `probe` every 50 ms until it says yes (the phone is supervised yet, say); `first` is
    when the first yes was asked, on this process's clock (UTC)."""

    def __init__(self, probe: Callable[[], bool], interval: float = 0.05, limit_s: float = 300.0) -> None:
        self.probe = probe
        self.interval = interval
        self.limit_s = limit_s
        self.first: datetime | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        while not self._done.is_set() and time.monotonic() < deadline:
            asked = datetime.now(UTC)
            if self.probe():
                self.first = asked
                self._done.set()
                return
            self._done.wait(self.interval)

    def wait(self, timeout: float) -> datetime | None:
        self._done.wait(timeout)
        return self.first

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)


def _made_at(client: LabClient, ban: BanRow) -> datetime:
    """When an automatic ban was made, on this process's clock.

    The ban's time is the appliance's clock (the lab's clock file, which runs in real time from
    when it was written): the offset between that clock and this process's is measured here. An
    automatic ban is stamped when the scheduler's alert job starts, a little before it commits, so
    the latency measured from it is an upper bound.
    """
    offset = client.lab.clock_now() - datetime.now(UTC)
    return ban.created_at - offset


def _dsl_bans(client: LabClient, case: Alert) -> tuple[BanRow, datetime]:
    """The DSL bans the phone from its case, as the console's ban form does; (ban, committed at)."""
    from schoolgate.services import bans
    from schoolgate.services.actor import Actor

    dsl = Actor(name="lab-dsl", display_name="Lab DSL", roles=frozenset({"dsl"}))
    now = client.lab.clock_now()
    with client.session() as session:
        ban = bans.ban_device(
            session, site=SITE_ID, now=now, actor=dsl, device_id=bans.case_device(session, case), until=None,
            reason=f"Seed 001 §9: an attempt to get round the school's filtering (case {case.id})",
            supervisor="the class teacher", alert_id=case.id, zone=UTC,  # until lifted: no time to show
        )
        session.commit()
        committed = datetime.now(UTC)
        session.refresh(ban)
        session.expunge(ban)
    return ban, committed


def _scanned_through(client: LabClient, event_id: int) -> bool:
    from schoolgate.services.alert_rules import read_cursor

    with client.session() as session:
        return read_cursor(session, SITE_ID) >= event_id


def _alerts(client: LabClient, first_event: int) -> list[Alert]:
    with client.session() as session:
        return list(session.scalars(
            select(Alert).where(Alert.site == SITE_ID, Alert.last_event_id > first_event).order_by(Alert.id)))


def _cases(client: LabClient, first_event: int, kind: str) -> list[Alert]:
    return [a for a in _alerts(client, first_event) if a.kind == kind]


def _phone_case(client: LabClient, first_event: int) -> Alert | None:
    cases = [a for a in _cases(client, first_event, "circumvention") if a.client_ip == PHONE.ip]
    return cases[0] if cases else None


def _phone_ban(client: LabClient) -> BanRow | None:
    with client.session() as session:
        return session.scalars(
            select(BanRow).where(BanRow.site == SITE_ID, BanRow.mac == PHONE.mac, BanRow.lifted_at.is_(None))
        ).first()


def _verdicts(client: LabClient, first_event: int) -> dict[str, int]:
    with client.session() as session:
        rows = session.execute(
            select(AccessEvent.verdict, func.sum(AccessEvent.count))
            .where(AccessEvent.id > first_event).group_by(AccessEvent.verdict)
        ).all()
    return {verdict: int(n or 0) for verdict, n in rows}


def _count(client: LabClient, first_event: int, rule_id: str) -> int:
    with client.session() as session:
        return int(session.scalar(
            select(func.sum(AccessEvent.count))  # a row may hold a burst's repeated attempts
            .where(AccessEvent.id > first_event, AccessEvent.rule_id == rule_id)
        ) or 0)


__all__ = [
    "HALL_TV", "PHONE", "SessionReport", "SupervisedWatch", "phone_supervised_in_dns", "phone_supervised_in_proxy",
    "run_session",
]
