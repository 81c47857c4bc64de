"""CPU per event of the DNS daemon's event-writing process, by number of devices and rate.

    .venv/bin/python -P bench/dns_event_writer.py [--events 100000] [--devices 1 300] [--rates 0 1000 200]

Forks a process that does what the daemon's `sg-dns-events` does (dns.daemon.run_event_writer:
an EventWriter on SQLite with the daemon's batch size and page cache, reading the channel in the
daemon's bursts) and hands it blocked-query events through an EventChannel, as the workers do.
Each event is a different listed name asked by one of `--devices` devices (each with its MAC,
register id, name and person), in time order, handed over as a DNS worker does: through the
events stage's ``record`` (dns.stages.events, folding a device's repeated asks as the daemon's
workers do) into an EventChannel, with the stage and channel flushed on each worker tick
(every EVENTS_TICK_S of paced time, as the daemon's loop ticks). A rate
of 0 hands them over as fast as the writer takes them; any other rate paces them (events per
second), as a school's traffic comes.

Printed per case: the writing process's CPU per event from its rusage (user and system, from
its first read to its writer's stop and the checkpoint of what it left in the WAL, so that its
start is not spread over the events), and
a reference measured in the same run: the same rows inserted by a bare sqlite3 executemany in
transactions of the writer's size (a burst's events, up to its batch size), with the same
pragmas, in this process (what SQLite itself costs; the difference is the writing process's
own work). The database is a fresh file in a temporary folder each time. Beside them, the
worker's CPU per query for that hand-over (this process's thread time from the first ``record``
to the channel's stop: building, folding, encoding and sending events; less the same paced loop
run again logging nothing, whose sleeps and cold wake-ups a worker pays anyway), and worker +
writer: what logging a blocked query costs the appliance. Last, what a row costs on disk in
the writer's database: the events table's pages and its indexes' pages per row (SQLite's
dbstat), what a school's year of blocked queries fills on the appliance's SD card.

Then, in the same run, the writing process's own body (store.events.writing.run_writing_sources,
from each process's start to its end) fed the same DNS events plus a proxy event for every
tenth on the proxy's channel, in its two shapes: a writing process for each daemon (as the
DNS daemon's and the proxy's own writers), and one process for both, as `schoolgate run` runs
it (`sg-events`: each channel read by a thread of its own into a writer of its own). CPU per
event (both daemons' events, summed over the processes), and the ratio one/two: what
writing both daemons' events in one process costs per event. And the one process once more
with net watch running beside the channels, as `schoolgate run` runs it (`schoolgate events
--watch`: gateway.circumvention.keep_watching in a thread, its NFLOG group bound in a private
network namespace of the process, the register and overlay polled each second, the census
taken; no policy file, so no policy is compiled in the measured time): the process's CPU per
event, the same without the watcher thread's own CPU (what the writers spent: the figure the
watcher must not raise; the ratio writers/one), and the watcher thread's CPU (run as root).

`--mix real` asks each name as A, AAAA and HTTPS together, as phones and tablets do, which the
worker folds into one event per attempt (EventsStage.fold_asks; the writer folds what crossed
apart, store.events.repeats); the default mix asks every name once, so nothing folds. Figures
are per query handed over either way; `--unfolded` measures the worker and writer with folding
turned off, in the same run's conditions. (The second table feeds compact events straight to
the channels: it compares the writing body's shapes, not the worker's hand-over.)

bench/dns_path.py prints the same process's figure for the worker's whole path (one client).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schoolgate.dns.daemon import EVENTS_TICK_S, WRITER_BATCH_ROWS, WRITER_GATHER_S, WRITER_SQLITE_CACHE_KIB
from schoolgate.store.db import init_db, make_engine
from schoolgate.store.events import EventWriter, SqliteRows, UidSource
from schoolgate.store.events.channel import BATCH_EVENTS, EventChannel, channel_pair, receive_events
from schoolgate.store.events.record import CompactEvent
from schoolgate.store.events.writing import collect_for_writing

FLAGS = frozenset({"list:bench_blocklist"})


QTYPES = ("A", "AAAA", "HTTPS")
MIXES = ("bench", "real")


def event(i: int, devices: int, t0: float, rate: float, mix: str = "bench") -> CompactEvent:
    """The i-th blocked query. "bench": each a different name (nothing to fold); "real": each
    name asked as A, AAAA and HTTPS together by one device, as phones and tablets ask."""
    n = i // len(QTYPES) if mix == "real" else i
    d = n % devices
    ts = t0 + i / (rate or 2000.0)
    return (
        ts, "bench", "dns", f"10.1.{d // 250 % 250}.{d % 250 + 1}", f"ads{n}.track-{n % 9973}.com", "block",
        "bench-blocklist", "pupil", f"02:00:00:00:{d // 256 % 256:02x}:{d % 256:02x}", f"dev-{d}",
        f"Pupil iPad {d}", f"p{d}", f"Pupil {d}", QTYPES[i % 3], None, None,
        "Online Safety Policy (filtering)", None, "bench_adverts", FLAGS, 1, "dhcp",
    )


class Asks:
    """The queries of `event` as a DNS worker hands them over: each device's Client and the one
    Decision its kind of listed name shares (dns.fastpath), to the events stage's ``record``."""

    def __init__(self, devices: int) -> None:
        from schoolgate.policy.types import Client, Decision, Role, Verdict

        self.decision = Decision(verdict=Verdict.BLOCK, rule_id="bench-blocklist",
                                 clause="Online Safety Policy (filtering)", reason="listed", role=Role.PUPIL,
                                 category="bench_adverts", flags=FLAGS)
        self.clients = []
        for d in range(devices):
            values = event(d, devices, 0.0, 1.0)
            self.clients.append(Client(ip=values[3], mac=values[8], device_id=values[9], device_name=values[10],
                                       person_id=values[11], person_name=values[12], role=Role.PUPIL,
                                       identity_source="dhcp"))


QTYPE_NUMBERS = {"A": 1, "AAAA": 28, "HTTPS": 65}
UNFOLDED = False  # --unfolded: neither the worker nor the writer folds repeated asks


def writing_process(url: str, events: list[CompactEvent], rate: float, devices: int) -> tuple[float, float, float]:
    """(user, system, worker) µs of CPU per event: of a forked writing process fed `events`, and
    of this process handing them over as a DNS worker does (the events stage's ``record``, the
    channel's batch, its sends)."""
    from schoolgate.dns.stages.events import EventsStage

    sending, reading = channel_pair()
    report_from, report_to = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sending.close()
            os.close(report_from)
            collect_for_writing()  # as the daemon's writing process does
            engine = make_engine(url, sqlite_cache_kib=WRITER_SQLITE_CACHE_KIB)
            writer = EventWriter(engine, max_queue=10_000_000, batch_size=WRITER_BATCH_ROWS)
            writer.start()
            # From here on: the process's start (imports, engine) is not per event, and a short
            # paced case would otherwise be charged with it.
            begun = resource.getrusage(resource.RUSAGE_SELF)
            for _ in receive_events(reading, writer.submit_many, stop_after=lambda: None, gather=WRITER_GATHER_S,
                                    gathered=writer.write_now, max_gathered=WRITER_BATCH_ROWS,
                                    room=writer.wait_for_room):
                pass
            stats = writer.stop(timeout=600)
            raw = engine.raw_connection()  # outside a transaction: what is still in the WAL is its work too
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
                # Queries, not rows: a row holds an attempt's repeated asks (its count).
                queries = raw.cursor().execute("SELECT sum(count) FROM events").fetchone()[0]
            finally:
                raw.close()
            ended = resource.getrusage(resource.RUSAGE_SELF)
            os.write(report_to, f"{ended.ru_utime - begun.ru_utime} {ended.ru_stime - begun.ru_stime}".encode())
            code = 0 if queries == len(events) and stats["dropped"] == 0 else 3
        finally:
            os._exit(code)
    reading.close()
    os.close(report_to)
    asks = Asks(devices)
    channel = EventChannel(sending, max_waiting=10_000_000)
    stage = EventsStage(channel, "bench")
    stage.fold_asks(0 if UNFOLDED else BATCH_EVENTS)  # as the daemon's workers do (dns.daemon)
    # Each query's arguments made before the clock starts: the worker has them from the packet.
    clients = {client.device_id: client for client in asks.clients}
    queries = [(clients[e[9]], e[3], e[4], QTYPE_NUMBERS[e[13]], e[0]) for e in events]

    def tick() -> None:  # a worker's tick hands over what it gathered
        stage.flush_due(datetime.now(UTC))
        channel.flush()

    handing = hand_over(queries, rate, stage.record, asks.decision, tick)
    stage.flush()
    channel.stop(timeout=600)
    handing = time.thread_time() - handing
    # The same loop, its sleeps and wake-ups, logging nothing: what a paced worker spends anyway
    # (a thread woken every tick finds its caches cold), taken off the worker's figure.
    idle = time.thread_time() - hand_over(queries, rate, lambda *_, **__: None, asks.decision, lambda: None)
    handing -= idle
    sending.close()
    with os.fdopen(report_from) as report:
        spent = report.read().split()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or len(spent) != 2:
        raise SystemExit(f"the writing process did not write every event (exit status {status})")
    user, system = (float(seconds) for seconds in spent)
    return user / len(events) * 1e6, system / len(events) * 1e6, handing / len(events) * 1e6


def hand_over(queries: list[tuple[Any, ...]], rate: float, record: Any, decision: Any, tick: Any) -> float:
    """Hand `queries` to `record` as a worker does, paced at `rate` a second (0: at once), with
    a `tick` every EVENTS_TICK_S of the paced time, as the daemon's loop ticks (dns.daemon);
    returns the thread time it started at (sleeps are not counted). The pacing sleeps every 32
    queries, whatever the tick."""
    paced_from = time.monotonic()
    started = time.thread_time()
    per_tick = max(1, round(rate * EVENTS_TICK_S))  # queries between two ticks at this rate
    for i, (client, client_ip, host, qtype, ts) in enumerate(queries):
        record(decision, client, client_ip, host, qtype, ts=ts)
        if rate and i % per_tick == per_tick - 1:
            tick()
        if rate and i % 32 == 31:
            ahead = paced_from + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return started


def watcher_config(folder: Path) -> Any:
    """An appliance configuration for net watch in `folder` (its database: folder/schoolgate.db)."""
    from schoolgate.config import load_config

    path = folder / "schoolgate.toml"
    path.write_text(f"""policy = "absent-policy.toml"
data_dir = "{folder}"
[site]
id = "bench"
[network]
lan_interface = "lo"
appliance_ipv4 = "127.0.0.1"
lan_cidrs = ["127.0.0.0/8"]
nflog_group = 29
""")
    return load_config(str(path))


def body_processes(url: str, events: list[CompactEvent], rate: float, shared: bool,
                   watcher: Any = None) -> tuple[float, int, float]:
    """(µs of CPU per event, events written, the watcher thread's CPU seconds) of the real
    writing body, fed the DNS daemon's
    channel and the proxy's (a proxy event for every tenth DNS event): each read by a process
    of its own (the daemons' own writers), or both by one process (`shared`, `sg-events`),
    with net watch beside them if `watcher` is its configuration."""
    from types import SimpleNamespace

    from schoolgate.dns.daemon import WRITER_SETTINGS as DNS_SETTINGS
    from schoolgate.proxy.events import WRITER_SETTINGS as PROXY_SETTINGS
    from schoolgate.store.events.writing import Source, run_writing_sources

    pairs = [channel_pair(), channel_pair()]
    settings = (DNS_SETTINGS, PROXY_SETTINGS)
    groups = [[0, 1]] if shared else [[0], [1]]  # which channels each writing process reads
    children: list[tuple[int, int]] = []  # (pid, the pipe its CPU time comes on)
    for group in groups:
        report_from, report_to = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sending, _ in pairs:
                    sending.close()
                os.close(report_from)
                config = SimpleNamespace(site=SimpleNamespace(id="bench"), data_dir=None)
                sources = [Source(pairs[index][1], settings[index]) for index in group]
                companions: list[tuple[str, Any]] = []
                watched = [0.0]  # the watcher thread's own CPU seconds (user and system)
                if watcher is not None:
                    from schoolgate.gateway.circumvention import keep_watching

                    private_network()

                    def watch(stop: threading.Event, watched: list[float] = watched) -> None:
                        try:
                            keep_watching(watcher, stop)
                        finally:
                            watched[0] = time.thread_time()

                    companions.append(("net watch", watch))
                begun = resource.getrusage(resource.RUSAGE_SELF)
                code = run_writing_sources(config, url, sources, companions)
                ended = resource.getrusage(resource.RUSAGE_SELF)
                spent_here = ended.ru_utime - begun.ru_utime + ended.ru_stime - begun.ru_stime
                os.write(report_to, f"{spent_here} {watched[0]}".encode())
            finally:
                os._exit(code)
        os.close(report_to)
        children.append((pid, report_from))
    channels = []
    for sending, reading in pairs:
        reading.close()
        channels.append(EventChannel(sending, max_waiting=10_000_000))
    begun_at = time.monotonic()
    for i, compact in enumerate(events):
        channels[0].submit_compact(compact)
        if i % 10 == 9:
            proxy: CompactEvent = (compact[0], compact[1], "proxy", compact[3], f"www.{compact[4]}", *compact[5:])
            channels[1].submit_compact(proxy)
        if rate and i % 32 == 31:
            for channel in channels:
                channel.flush()
            ahead = begun_at + i / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    for channel, (sending, _) in zip(channels, pairs, strict=True):
        channel.stop(timeout=600)
        sending.close()
    spent = watching = 0.0
    for pid, report_from in children:
        with os.fdopen(report_from) as report:
            told = report.read().split()
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or len(told) != 2:
            raise SystemExit(f"a writing process failed (exit status {status})")
        spent += float(told[0])
        watching += float(told[1])
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            # Queries, not rows: a row holds a burst's repeated asks (its count).
            written = int(conn.exec_driver_sql("SELECT sum(count) FROM events").scalar_one())
    finally:
        engine.dispose()
    return spent / written * 1e6, written, watching


def private_network() -> None:
    """This process into a network namespace of its own (its NFLOG group is then its own)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET): run the bench as root")


CLONE_NEWNET = 0x40000000


def bare_sqlite(path: Path, events: list[CompactEvent], per_transaction: int) -> tuple[float, float]:
    """(user, system) µs of CPU per row of the same rows through sqlite3 alone."""
    uids = UidSource()
    rows = [SqliteRows.build_compact(compact, uids) for compact in events]
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", f"cache_size=-{WRITER_SQLITE_CACHE_KIB}"):
        conn.execute(f"PRAGMA {pragma}")
    before = resource.getrusage(resource.RUSAGE_SELF)
    for start in range(0, len(rows), per_transaction):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(SqliteRows.INSERT, rows[start:start + per_transaction])
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = resource.getrusage(resource.RUSAGE_SELF)
    conn.close()
    return ((after.ru_utime - before.ru_utime) / len(rows) * 1e6, (after.ru_stime - before.ru_stime) / len(rows) * 1e6)


def bytes_per_row(path: Path) -> tuple[float, float]:
    """(table, indexes) bytes on disk per events row of the database at `path` (SQLite's dbstat:
    the pages each B-tree holds, so their free space counts too, as it does on the disk)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        sizes = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                                    "AND tbl_name = 'events'")}
    finally:
        conn.close()
    table = sizes.get("events", 0)
    return table / max(rows, 1), sum(sizes.get(name, 0) for name in indexes) / max(rows, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="events per case when not paced")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of a paced case")
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 300])
    parser.add_argument("--rates", type=float, nargs="+", default=[0, 1000, 200])
    parser.add_argument("--mix", choices=MIXES, default="bench",
                        help="bench: every query a different name; real: each name asked as A, AAAA and HTTPS")
    parser.add_argument("--no-body", action="store_true", help="only the first table (the forked writer)")
    parser.add_argument("--unfolded", action="store_true",
                        help="no folding of repeated asks, by the worker or the writer (a row per query), "
                             "for comparison")
    args = parser.parse_args()
    if args.unfolded:
        import schoolgate.store.events.writer as writer_module

        global UNFOLDED
        UNFOLDED = True
        writer_module.fold_repeats = lambda records: (list(records), 0)  # type: ignore[assignment]
    print(f"event-writing process: {WRITER_BATCH_ROWS:,} rows a transaction at most, bursts {WRITER_GATHER_S:g} s "
          f"apart, {WRITER_SQLITE_CACHE_KIB} KiB page cache; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs; {args.mix} mix (µs per query handed over; bare sqlite3: one row per query)")
    print(f"  {'devices':>7} {'rate/s':>7} {'events':>8}   {'µs CPU/event':>12} {'(user':>6} {'sys)':>6}"
          f"   {'bare sqlite3':>12}   ratio   {'worker µs':>9}   {'worker+writer':>13}"
          f"   {'B/row: table':>12} {'indexes':>7}")
    for devices in args.devices:
        for rate in args.rates:
            count = args.events if not rate else int(rate * args.seconds)
            t0 = time.time()
            events = [event(i, devices, t0, rate, args.mix) for i in range(count)]
            folder = Path(tempfile.mkdtemp(prefix="sg-bench-writer-"))
            try:
                url = f"sqlite:///{folder / 'events.db'}"
                init_db(url).dispose()
                user, system, worker = writing_process(url, events, rate, devices)
                table_bytes, index_bytes = bytes_per_row(folder / "events.db")
                init_db(f"sqlite:///{folder / 'bare.db'}").dispose()
                # The writer's transactions: a burst's events, up to its batch size.
                per_transaction = min(WRITER_BATCH_ROWS, int(rate * WRITER_GATHER_S)) if rate else WRITER_BATCH_ROWS
                bare_user, bare_system = bare_sqlite(folder / "bare.db", events, max(1, per_transaction))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            total, bare = user + system, bare_user + bare_system
            label = f"{rate:g}" if rate else "max"
            print(f"  {devices:>7} {label:>7} {count:>8,}   {total:12.2f} {user:6.2f} {system:6.2f}"
                  f"   {bare:12.2f}   {total / bare:5.2f}   {worker:9.2f}   {worker + total:13.2f}"
                  f"   {table_bytes:12.0f} {index_bytes:7.0f}", flush=True)
    if args.no_body:
        return 0
    print("The writing body, from each process's start to its end, the DNS daemon's events and a proxy event "
          "for every tenth: a writing process each (as the daemons' own writers), or one for both (sg-events)")
    # What net watch imports, imported before the forks (as the preloaded supervisor has them).
    import schoolgate.gateway.census
    import schoolgate.gateway.circumvention
    import schoolgate.gateway.nflog
    import schoolgate.identity.resolver
    import schoolgate.live  # noqa: F401

    logging.basicConfig(level=logging.ERROR)  # the watcher's warnings (no policy, no nft table) are expected
    print(f"  {'devices':>7} {'rate/s':>7} {'events':>8}   {'two: µs/event':>13}   {'one: µs/event':>13}   one/two"
          f"   {'one+watch: µs/event':>19} {'writers':>8} {'ratio':>6} {'watcher ms':>10}")
    for devices in args.devices:
        for rate in args.rates:
            count = args.events if not rate else int(rate * args.seconds)
            t0 = time.time()
            events = [event(i, devices, t0, rate, args.mix) for i in range(count)]
            figures = []
            for shared, watching in ((False, False), (True, False), (True, True)):
                folder = Path(tempfile.mkdtemp(prefix="sg-bench-writer-"))
                try:
                    url = f"sqlite:///{folder / 'schoolgate.db'}"
                    init_db(url).dispose()
                    watcher = watcher_config(folder) if watching else None
                    per_event, written, watching_s = body_processes(url, events, rate, shared, watcher)
                    expected = count + count // 10
                    if written != expected:
                        raise SystemExit(f"{written} events written of {expected}")
                    figures.append((per_event, written, watching_s))
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            (own, _, _), (shared_cost, written, _), (watching_cost, _, watcher_s) = figures
            writers_cost = watching_cost - watcher_s / written * 1e6
            label = f"{rate:g}" if rate else "max"
            print(f"  {devices:>7} {label:>7} {written:>8,}   {own:13.2f}   {shared_cost:13.2f}"
                  f"   {shared_cost / own:7.2f}   {watching_cost:19.2f} {writers_cost:8.2f}"
                  f" {writers_cost / shared_cost:6.2f} {watcher_s * 1e3:10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
