"""Console activity and dashboard queries on a million events, next to a bare indexed count.

Builds a SQLite file (schoolgate schema, init_db) with ROWS events over 30 days (a fifth
blocked, 400 devices, 30 services), rolls them up as the scheduler does (and prints how long
that took), then times each service query REPEAT times and prints
p50 / p95 in milliseconds. The reference is a plain COUNT(*) over one day through the
(site, ts) index, measured in the same run on the same file, so numbers from different
machines can be compared as ratios. The console's goal is p95 <= 200 ms per page.
Last, the alert engine scans the newest 100,000 events and prints its rate.

Run: .venv/bin/python bench/services_activity.py [ROWS] [REPEAT]
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from schoolgate.services import activity, digest, rollups
from schoolgate.services.alert_rules import AlertEngine, AlertSettings
from schoolgate.store.coltypes import utc_microseconds
from schoolgate.store.db import init_db, session_factory

SITE = "bench"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
SCHOOL_ZONE = ZoneInfo("Europe/London")  # the example policy's [school] timezone
SERVICES = [f"service{i}" for i in range(30)]


def fill(path: Path, rows: int) -> None:
    init_db(f"sqlite:///{path}").dispose()
    rng = random.Random(7)
    start = NOW - timedelta(days=30)
    span = 30 * 86400
    connection = sqlite3.connect(path)
    sql = (
        "INSERT INTO events (site, ts, source, client_ip, device_id, device_name, person_id, role, host, "
        "verdict, rule_id, clause, service, flags, count) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    batch: list[tuple[object, ...]] = []
    for i in range(rows):
        ts = start + timedelta(seconds=span * i / rows)
        device = rng.randrange(400)
        blocked = rng.random() < 0.2
        service = rng.choice(SERVICES) if blocked or rng.random() < 0.3 else None
        batch.append(
            (
                SITE,
                utc_microseconds(ts),
                "dns",
                f"10.0.{device // 250}.{device % 250 + 1}",
                f"DEV-{device}",
                f"Device {device}",
                f"p{device}",
                "pupil" if device < 350 else "staff",
                f"host{rng.randrange(5000)}.example",
                "block" if blocked else "allow",
                "r",
                "",
                service,
                "vpn" if blocked and rng.random() < 0.01 else "",
                1,
            )
        )
        if len(batch) == 20_000:
            connection.executemany(sql, batch)
            connection.commit()
            batch.clear()
    if batch:
        connection.executemany(sql, batch)
        connection.commit()
    connection.execute("ANALYZE")
    connection.close()


def timed(repeat: int, work: Callable[[], object]) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        began = time.perf_counter()
        work()
        samples.append((time.perf_counter() - began) * 1000)
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        began = time.perf_counter()
        fill(path, rows)
        print(f"filled {rows} events in {time.perf_counter() - began:.1f} s")
        engine = init_db(f"sqlite:///{path}")
        began = time.perf_counter()
        with session_factory(engine)() as session:
            while rollups.update_rollups(session, SITE, NOW, zone=SCHOOL_ZONE).events:
                session.commit()
            session.commit()
        print(f"rolled up {rows} events in {time.perf_counter() - began:.1f} s (the scheduler does this every 30 s)")
        factory = session_factory(engine, readonly=True)
        day, week, month = timedelta(days=1), timedelta(days=7), timedelta(days=30)
        raw = sqlite3.connect(path)
        since = utc_microseconds(NOW - day)

        def reference() -> object:
            return raw.execute("SELECT count(*) FROM events WHERE site = ? AND ts >= ?", (SITE, since)).fetchone()

        with factory() as session:
            cases: list[tuple[str, Callable[[], object]]] = [
                ("reference: COUNT(*) one day via index", reference),
                (
                    "search: newest 50, 30 days",
                    lambda: activity.search_events(session, SITE, activity.EventQuery(start=NOW - month, end=NOW)),
                ),
                (
                    "search: one device, 30 days",
                    lambda: activity.search_events(
                        session, SITE, activity.EventQuery(start=NOW - month, end=NOW, device_id="DEV-17")
                    ),
                ),
                (
                    "search: one person, blocked, 30 days",
                    lambda: activity.search_events(
                        session, SITE, activity.EventQuery(start=NOW - month, end=NOW, person_id="p17", verdict="block")
                    ),
                ),
                (
                    "search: one service, 7 days",
                    lambda: activity.search_events(
                        session, SITE, activity.EventQuery(start=NOW - week, end=NOW, service="service3")
                    ),
                ),
                (
                    "search: host suffix, 1 day",
                    lambda: activity.search_events(
                        session, SITE, activity.EventQuery(start=NOW - day, end=NOW, host="host42.example")
                    ),
                ),
                (
                    "chart: blocked by service, 7 days",
                    lambda: activity.blocked_over_time(session, SITE, NOW - week, NOW, by="service", zone=SCHOOL_ZONE),
                ),
                (
                    "chart: blocked by role, 30 days",
                    lambda: activity.blocked_over_time(session, SITE, NOW - month, NOW, by="role", zone=SCHOOL_ZONE),
                ),
                (
                    "top services, 7 days",
                    lambda: activity.top_services(session, SITE, NOW - week, NOW, zone=SCHOOL_ZONE),
                ),
                ("top devices, 7 days", lambda: activity.top_devices(session, SITE, NOW - week, NOW, zone=SCHOOL_ZONE)),
                ("dashboard (all figures)", lambda: activity.dashboard(session, SITE, NOW, zone=SCHOOL_ZONE)),
                (
                    "digest facts, 1 day",
                    lambda: digest.compose_digest(
                        session, site=SITE, site_name="Bench", now=NOW, zone=SCHOOL_ZONE, since=NOW - day
                    ),
                ),
            ]
            print(f"{'query':<42} {'p50 ms':>8} {'p95 ms':>8} {'p95/ref':>8}")
            reference_p95 = 0.0
            for name, work in cases:
                p50, p95 = timed(repeat, work)
                if not reference_p95:
                    reference_p95 = max(p95, 1e-3)
                print(f"{name:<42} {p50:8.1f} {p95:8.1f} {p95 / reference_p95:8.1f}")
        scanned = min(rows, 100_000)
        with session_factory(engine)() as session:
            began = time.perf_counter()
            result = AlertEngine(AlertSettings()).scan(session, SITE, rows - scanned, NOW)
            session.commit()
            took = time.perf_counter() - began
        print(
            f"alert scan: {result.events} events in {took:.1f} s ({result.events / took:,.0f} events/s), "
            f"{len(result.opened)} cases opened"
        )
        raw.close()
        engine.dispose()


if __name__ == "__main__":
    main()
