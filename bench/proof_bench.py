"""What proving filtering costs the appliance: a /metrics scrape, the coverage job, and gathering
and rendering a year's review pack, on a school-sized database, next to the dashboard's figures.

Builds a SQLite file (schoolgate schema) with ROWS blocked events over a school year, a self-test
every school morning, 400 devices in the coverage table, and rolls the events up as the scheduler
does. Then times, REPEAT times each, wall (p50 / p95) and CPU per operation:

- reference: the dashboard's figures (activity.dashboard), the console's busiest page;
- a Prometheus scrape (services.metrics: collect and render);
- one coverage round over new events (services.coverage.scan_events + classify);
- the review pack's facts and HTML (review.facts.gather + review.render), without Chromium.

Run: .venv/bin/python bench/proof_bench.py [ROWS] [REPEAT]
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

from schoolgate.config import AppConfig, SiteConfig
from schoolgate.gateway.census import Census, Forwarding
from schoolgate.lists.status import read_statuses
from schoolgate.policy import load_policy
from schoolgate.review.facts import Year, gather
from schoolgate.review.render import render_html
from schoolgate.services import activity, checklog, coverage, metrics, rollups
from schoolgate.store.coltypes import utc_microseconds
from schoolgate.store.db import init_db, session_factory

REPO = Path(__file__).resolve().parent.parent
SITE = "kingswood"
NOW = datetime(2027, 7, 20, 12, 0, tzinfo=UTC)
START = datetime(2026, 9, 3, 8, 0, tzinfo=UTC)


def fill(path: Path, rows: int) -> None:
    init_db(f"sqlite:///{path}").dispose()
    rng = random.Random(12)
    span = int((NOW - START).total_seconds())
    connection = sqlite3.connect(path)
    connection.executemany(
        "INSERT INTO events (site, ts, source, client_ip, device_id, role, host, verdict, rule_id, clause, "
        "category, flags, count) VALUES (?, ?, 'dns', ?, ?, ?, ?, 'block', 'r', '', ?, '', 1)",
        (
            (SITE, utc_microseconds(START + timedelta(seconds=rng.randrange(span))),
             f"10.41.20.{n % 250}", f"IPAD-{n % 400}", rng.choice(["pupil", "staff", "guest"]),
             f"h{rng.randrange(5000)}.example", rng.choice(["gambling", "pornography", "social_media", "dating"]))
            for n in range(rows)
        ),
    )
    connection.commit()
    connection.close()


def timed(label: str, repeat: int, work: Callable[[], object]) -> None:
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    walls.sort()
    p95 = walls[min(len(walls) - 1, int(len(walls) * 0.95))]
    print(f"{label:44} p50 {statistics.median(walls):8.1f} ms  p95 {p95:8.1f} ms  "
          f"CPU {statistics.mean(cpus):8.1f} ms/op")


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    repeat = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    policy = load_policy(REPO / "deploy" / "policy.example.toml")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        started = time.perf_counter()
        fill(path, rows)
        config = AppConfig(source=Path(folder) / "schoolgate.toml", policy=REPO / "deploy" / "policy.example.toml",
                           data_dir=Path(folder), site=SiteConfig(id=SITE, name="Kingswood Primary School"))
        sessions = session_factory(init_db(f"sqlite:///{path}"))
        with sessions() as session:
            rollups.catch_up(session, SITE, NOW, zone=policy.school.zone, max_batches=10_000)
            day = START
            while day < NOW:
                if policy.calendar.is_school_day(day.date()):
                    checklog.record_selftest(session, site=SITE, outcome=checklog.SelftestOutcome(
                        at=day, trigger="morning", passed=day.day != 15, failures=0 if day.day != 15 else 2,
                        filtering_down=False, duration_ms=3000, tried="x", action="", profiles="pupil", detail={}))
                day += timedelta(days=1)
            coverage.record_census(session, SITE, Census(
                at=NOW, vpn=[], neighbours={},
                forwarding=[Forwarding(f"10.41.{20 + n // 250}.{n % 250}", f"02:00:00:00:{n // 256:02x}:{n % 256:02x}",
                                       5, NOW - timedelta(minutes=n % 60)) for n in range(400)]))
            session.commit()
        print(f"{rows} blocked events over the year, rolled up, 400 devices: {time.perf_counter() - started:.1f} s")
        year = Year.parse("2026-27", policy.school.zone)
        with sessions() as session:
            timed("reference: dashboard figures", repeat, lambda: activity.dashboard(session, SITE, NOW))
            timed("/metrics scrape (collect + render)", repeat,
                  lambda: metrics.exposition(metrics.collect(session, SITE, NOW, NOW, policy,
                                                             list_statuses=read_statuses(config, NOW))))
            timed("coverage round (scan + classify)", repeat,
                  lambda: (coverage.scan_events(session, SITE, NOW),
                           coverage.classify(session, SITE, NOW, coverage.Settings())))
            html: list[str] = []
            timed("review pack facts + HTML (no Chromium)", max(1, repeat // 5),
                  lambda: html.append(render_html(gather(config, session, policy, year, NOW))))
            print(f"review pack HTML: {len(html[-1])} bytes")


if __name__ == "__main__":
    main()
