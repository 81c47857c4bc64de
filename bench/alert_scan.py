"""The scheduler's alert scan over floods of proxy kill events, next to a bare read of the same rows.

What the proxy benchmark's loads leave behind, for the scheduler's alert scan to read: 32
devices, each row one kill of the proxy, written as the event writer writes them, and scanned
every SCAN_EVERY seconds of their time by one engine kept from scan to scan (as the
scheduler keeps it):

- new-name: every connection a new name under one blocked service (n1.www.facebook.com, ...),
  one row each (bench/proxy/run.py's `killed-new`);
- retrying: each device retries one blocked name; the writer folds a second's repeats into
  one row with a count (bench/proxy/run.py's `killed`);
- many-sites: each device tries a different blocked site every few seconds, which is what
  raises the repeated-blocks rule's cases (a pupil going down a list).

Per load it prints the events, the scan's CPU per event (process time: the engine, SQLAlchemy
and SQLite together) and the reference measured in the same run on the same file: every row
read with sqlite3, in id order, batch by batch, as plain tuples. And the cases opened.

Run: .venv/bin/python -P bench/alert_scan.py [--rate 5000] [--seconds 12] [--loads new-name,retrying,many-sites]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from schoolgate.services.alert_rules import AlertEngine, AlertSettings
from schoolgate.store.coltypes import utc_microseconds
from schoolgate.store.db import init_db, session_factory

SITE = "bench"
START = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # a Monday morning, in school hours
SCHOOL_ZONE = ZoneInfo("Europe/London")
DEVICES = 32
SCAN_EVERY = 5.0  # seconds of event time between scans: the lab's alerts.scan_interval_seconds
COLUMNS = (
    "site, ts, source, client_ip, device_id, device_name, person_id, role, host, "
    "verdict, rule_id, clause, service, category, flags, count"
)
INSERT = f"INSERT INTO events ({COLUMNS}) VALUES ({', '.join('?' * 16)})"
Row = tuple[object, ...]


def _row(at: datetime, device: int, host: str, service: str | None, count: int) -> Row:
    return (
        SITE, utc_microseconds(at), "proxy", f"10.0.0.{device + 10}", f"DEV-{device}", f"Laptop {device}",
        f"p{device}", "pupil", host, "block",
        f"service.{service}" if service else "category.gambling", "seed 001 §6.2", service,
        "social" if service else "gambling", "", count,
    )


def new_name(rate: int, seconds: float) -> Iterator[Row]:
    total = int(rate * seconds)
    for i in range(total):
        yield _row(START + timedelta(seconds=seconds * i / total), i % DEVICES, f"n{i}.www.facebook.com",
                   "facebook", 1)


def retrying(rate: int, seconds: float) -> Iterator[Row]:
    per_device_second = max(1, rate // DEVICES)
    for second in range(int(seconds)):
        for device in range(DEVICES):
            yield _row(START + timedelta(seconds=second, milliseconds=device), device, "www.facebook.com",
                       "facebook", per_device_second)


def many_sites(rate: int, seconds: float) -> Iterator[Row]:
    # Each device a new gambling site every second, each tried as a page would be (a dozen requests
    # folded by the writer into a row or two); the rest of the rate is its retries of them.
    per_device_second = max(1, rate // DEVICES)
    for second in range(int(seconds)):
        for device in range(DEVICES):
            site = second
            at = START + timedelta(seconds=second, milliseconds=device)
            yield (*_row(at, device, f"www.bet{site}-{device}.example", None, per_device_second)[:-1],
                   per_device_second)


LOADS = {"new-name": new_name, "retrying": retrying, "many-sites": many_sites}


def run(load: str, rate: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "alerts.db"
        init_db(f"sqlite:///{path}").dispose()
        rows = list(LOADS[load](rate, seconds))
        writer = sqlite3.connect(path)
        engine = init_db(f"sqlite:///{path}")
        factory = session_factory(engine)
        alerts = AlertEngine(AlertSettings(zone=SCHOOL_ZONE))
        scan_cpu = 0.0
        scanned = opened = 0
        written = 0
        until = START
        while written < len(rows):
            until += timedelta(seconds=SCAN_EVERY)
            bound = utc_microseconds(until)
            batch = []
            while written < len(rows) and int(rows[written][1]) < bound:  # type: ignore[call-overload]
                batch.append(rows[written])
                written += 1
            writer.executemany(INSERT, batch)
            writer.commit()
            began = time.process_time()
            with factory() as session:
                while True:
                    result = alerts.scan(session, SITE, None, until, max_events=10_000)
                    session.commit()
                    scanned += result.events
                    opened += len(result.opened)
                    if result.events < 10_000:
                        break
            scan_cpu += time.process_time() - began
        engine.dispose()
        # The reference: the same rows, read in id order in batches of the engine's size.
        began = time.process_time()
        cursor, read = 0, 0
        while True:
            got = writer.execute(
                "SELECT * FROM events WHERE site = ? AND id > ? ORDER BY id LIMIT 2000", (SITE, cursor)
            ).fetchall()
            if not got:
                break
            read += len(got)
            cursor = got[-1][0]
        reference_cpu = time.process_time() - began
        writer.close()
    per_event = scan_cpu / max(scanned, 1) * 1e6
    reference = reference_cpu / max(read, 1) * 1e6
    print(
        f"{load:>10}: {scanned:>7} events scanned in {int(seconds / SCAN_EVERY + 0.999)} scans, "
        f"{per_event:7.1f} µs CPU each; reference (bare read) {reference:5.2f} µs "
        f"({per_event / reference:5.1f}×); cases opened {opened}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5000, help="kills per second across all devices")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of the load (the proxy bench's slices)")
    parser.add_argument("--loads", default=",".join(LOADS))
    args = parser.parse_args()
    for load in args.loads.split(","):
        run(load, args.rate, args.seconds)


if __name__ == "__main__":
    main()
