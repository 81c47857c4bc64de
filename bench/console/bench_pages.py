"""Console pages on a million events: dashboard, activity search, alert list (full renders).

Builds a temporary SQLite database (schoolgate schema) with ROWS events over 30 days (a
quarter blocked, 450 devices, 12 services, a few with search terms and flags) and 3,000
alert cases, rolls the events up as the scheduler does (timed and printed separately), then
signs in as a headteacher (who may see all three pages) and requests each page REPEAT times
through the Flask test client: routing, access checks, queries, Jinja, SVG charts. Prints
the median and p95 in milliseconds next to a reference measured in the same run: the
sign-in page, which renders the same layout without touching the events. Goal: p95 <= 200 ms.

Run: .venv/bin/python bench/console/bench_pages.py [ROWS] [REPEAT]
"""

from __future__ import annotations

import random
import re
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp

from schoolgate.config import load_config
from schoolgate.console import accounts, create_app
from schoolgate.services import rollups
from schoolgate.services.permissions import ConsoleRole
from schoolgate.store.coltypes import utc_microseconds
from schoolgate.store.db import init_db, session_factory

REPO = Path(__file__).resolve().parents[2]
SITE = "kingswood"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SERVICES = ["facebook", "instagram", "x", "tiktok", "snapchat", "youtube", "discord", "whatsapp", "roblox",
            "twitch", "reddit", "pinterest"]
ROLES = ["pupil"] * 8 + ["staff", "guest"]
SEVERITIES = ["low", "medium", "high", "critical"]


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current


def fill(db: Path, rows: int) -> None:
    rng = random.Random(2026)
    connection = sqlite3.connect(db)
    sql = ("INSERT INTO events (site, ts, source, client_ip, mac, device_id, device_name, person_id, person_name, "
           "role, host, url, search_term, verdict, rule_id, clause, service, category, flags, count) "
           "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
    start = NOW - timedelta(days=30)
    batch: list[tuple[object, ...]] = []
    for i in range(rows):
        ts = start + timedelta(seconds=30 * 86400 * i / rows)
        device = rng.randrange(450)
        blocked = rng.random() < 0.25
        service = rng.choice(SERVICES) if blocked or rng.random() < 0.2 else None
        host = f"www.{service}.com" if service else f"site{rng.randrange(20000)}.example.org"
        search = f"how to {rng.randrange(1000)}" if rng.random() < 0.03 else None
        flags = "circumvention" if rng.random() < 0.002 else ""
        batch.append((
            SITE, utc_microseconds(ts), "dns" if rng.random() < 0.7 else "proxy",
            f"10.41.{20 + device // 250}.{device % 250 + 1}", f"02:00:00:00:{device // 256:02x}:{device % 256:02x}",
            f"KW-DEV-{device:03d}", f"Device {device}", f"P{device:04d}", f"Person {device}",
            rng.choice(ROLES), host, f"https://{host}/page" if blocked else None, search,
            "block" if blocked else "allow", "pupils-no-social-media" if blocked else "default",
            "Social Media Policy §6 and §9" if blocked else "", service, "social_media" if service else None,
            flags, 1 + (rng.random() < 0.1) * rng.randrange(1, 20),
        ))
        if len(batch) == 20_000:
            connection.executemany(sql, batch)
            batch.clear()
    if batch:
        connection.executemany(sql, batch)
    alert_sql = ("INSERT INTO alerts (site, kind, rule_id, category, severity, status, title, summary, device_id, "
                 "person_id, client_ip, first_seen, last_seen, trigger_count, outcome, created_at, updated_at) "
                 "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
    alerts = []
    for i in range(3000):
        seen = (NOW - timedelta(minutes=rng.randrange(60 * 24 * 90))).strftime("%Y-%m-%d %H:%M:%S.%f")
        status = rng.choice(["new", "in_review", "resolved", "resolved", "resolved"])
        alerts.append((SITE, rng.choice(["circumvention", "repeated_blocks", "safeguarding_term"]), "rule", None,
                       rng.choice(SEVERITIES), status, f"Case {i}: repeated blocked attempts",
                       "summary", f"KW-DEV-{i % 450:03d}", f"P{i % 450:04d}", "10.41.20.1", seen, seen,
                       rng.randrange(1, 40), "", seen, seen))
    connection.executemany(alert_sql, alerts)
    connection.commit()
    connection.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    with tempfile.TemporaryDirectory(prefix="console-bench-") as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "schoolgate.db"
        (tmp / "schoolgate.toml").write_text(textwrap.dedent(f"""\
            policy = "{REPO / 'deploy' / 'policy.example.toml'}"
            data_dir = "{tmp}"
            [site]
            id = "{SITE}"
            [database]
            url = "sqlite:///{db}"
            [console]
            plain_http = true
            """))
        config = load_config(tmp / "schoolgate.toml")
        engine = init_db(config.database_url)
        started = time.perf_counter()
        fill(db, rows)
        print(f"filled {rows:,} events and 3,000 alerts in {time.perf_counter() - started:.1f} s")
        factory = session_factory(engine)
        started = time.perf_counter()
        with factory() as session:
            counted = rollups.catch_up(session, SITE, NOW, zone=UTC)
            session.commit()
        print(f"rolled up {counted:,} events in {time.perf_counter() - started:.1f} s (the scheduler's job)")
        head_hash = accounts.hash_password("bench password 1")
        with factory() as session:
            user = accounts.create_user(session, username="head", display_name="Head", site=SITE,
                                        roles=frozenset({ConsoleRole.HEADTEACHER}), password_hash=head_hash)
            secret = pyotp.random_base32()
            user.totp_secret = secret
            session.commit()

        clock = FixedClock(NOW)
        app = create_app(config, session_factory=factory, clock=clock)
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True))
        assert token
        client.post("/login", data={"csrf_token": token.group(1), "username": "head", "password": "bench password 1"})
        page = client.get("/login/code").get_data(as_text=True)
        token = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert token
        response = client.post("/login/code", data={"csrf_token": token.group(1),
                                                     "code": pyotp.TOTP(secret).at(NOW)})
        assert response.status_code == 302, response.status_code

        anonymous = app.test_client()
        pages = [
            ("reference: sign-in page", anonymous, "/login"),
            ("dashboard, 7 days", client, "/dashboard?days=7"),
            ("dashboard, 30 days", client, "/dashboard?days=30"),
            ("activity, last 7 days", client, "/activity"),
            ("activity, one device, 30 days", client, "/activity?device=KW-DEV-042&days=30"),
            ("activity, blocked facebook, 30 days", client, "/activity?service=facebook&verdict=block&days=30"),
            ("activity, one site and subdomains", client, "/activity?host=example.org&days=30"),
            ("alert list, open", client, "/alerts"),
            ("alert list, high, all statuses", client, "/alerts?status=all&severity=high"),
        ]
        print(f"\n{'page':40} {'median ms':>10} {'p95 ms':>10}   (n={repeat})")
        for name, who, path in pages:
            timings = []
            for _ in range(repeat):
                started = time.perf_counter()
                response = who.get(path)
                timings.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (path, response.status_code)
            print(f"{name:40} {statistics.median(timings):10.1f} {percentile(timings, 0.95):10.1f}")
        engine.dispose()


if __name__ == "__main__":
    main()
