"""`schoolgate run` on its own, on loopback: restarts a killed daemon, stops all on SIGTERM.

No namespaces here: the DNS daemon listens on a free loopback port, the scheduler writes its
heartbeat to a private SQLite file. (The lab tests kill every daemon under real traffic.)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from dnslib import DNSRecord

from schoolgate.clock import set_clock_file
from schoolgate.dns.daemon import WRITER_PROCESS_NAME, worker_pids
from schoolgate.store.db import make_engine, session_factory
from schoolgate.store.events import read_status

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
LESSON = "2026-11-23T10:15:00+00:00"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int, name: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(DNSRecord.question(name).pack(), ("127.0.0.1", port))
        try:
            return DNSRecord.parse(sock.recv(4096)).header.rcode == 0
        except OSError:
            return False


def _wait(condition: object, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Running:
    def __init__(self, tmp: Path, dns_workers: int = 1) -> None:
        self.port = _free_udp_port()
        self.dns_workers = dns_workers
        self.database = f"sqlite:///{tmp / 'schoolgate.db'}"
        self.config = tmp / "schoolgate.toml"
        self.config.write_text(f"""
policy = "{REPO / 'deploy' / 'policy.example.toml'}"
data_dir = "{tmp}"
[site]
id = "kingswood"
name = "Kingswood Primary School"
[database]
url = "{self.database}"
[dns]
listen = ["127.0.0.1:{self.port}"]
upstreams = ["127.0.0.1:9"]
workers = {dns_workers}
[mail]
host = ""
""")
        clock = self.clock = tmp / "clock"
        set_clock_file(clock, datetime.fromisoformat(LESSON))
        self.env = {**os.environ, "SCHOOLGATE_CLOCK_FILE": str(clock)}
        subprocess.run([sys.executable, "-P", "-m", "schoolgate", "db", "upgrade", "--config", str(self.config)],
                       check=True, capture_output=True, env=self.env, timeout=120)
        self.state = tmp / "run.json"
        self.log = tmp / "run.log"
        self.launched = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "schoolgate", "run", "--config", str(self.config),
             "--only", "dns", "--only", "scheduler", "--state-file", str(self.state)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
            start_new_session=True,  # a signal from this test, not a terminal's Ctrl-C
        )

    def pid(self, name: str) -> int | None:
        try:
            pid = json.loads(self.state.read_text())["children"][name]["pid"]
        except (FileNotFoundError, ValueError, KeyError):
            return None
        return int(pid) if pid else None

    def status(self) -> dict[str, dict[str, object]]:
        engine = make_engine(self.database)
        try:
            with session_factory(engine)() as session:
                return read_status(session, "kingswood")
        finally:
            engine.dispose()


@pytest.fixture
def running(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Running]:
    run = Running(tmp_path, dns_workers=getattr(request, "param", 1))
    try:
        yield run
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGTERM)
            try:
                run.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()


def test_a_killed_daemon_is_restarted_and_sigterm_stops_all_cleanly(running: Running) -> None:
    _wait(lambda: _answers(running.port, "www.facebook.com"), 60, "schoolgate dns to answer")
    # How long this machine, as loaded now, took to start the daemon (with the supervisor's
    # preload, which a restart skips): a restart with no back-off is never slower than that.
    first_start = time.monotonic() - running.launched
    _wait(lambda: "scheduler" in running.status(), 30, "the scheduler's heartbeat")
    old = running.pid("dns")
    assert old is not None
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    # The killed daemon's worker answers until its SIGTERM (on its parent's death) closes the
    # port: "again" is the restarted daemon answering.
    _wait(lambda: running.pid("dns") not in (None, old) and _answers(running.port, "www.facebook.com"), 10,
          "the restarted schoolgate dns to answer")
    back_after = time.monotonic() - killed
    log = running.log.read_text(errors="replace")
    assert "dns killed by SIGKILL" in log and "Previous run ended without flushing" in log, log
    bound = max(2.0, first_start)
    assert back_after <= bound, f"answered again {back_after:.2f} s after the kill (first start {first_start:.2f} s)"
    board = running.status()["run.dns.scheduler"]  # a supervisor of some daemons: its own row
    children = board["stats"]["children"]  # type: ignore[index]
    assert children["dns"]["restarts"] == 1 and children["dns"]["unclean_exits"] == 1
    assert children["scheduler"]["restarts"] == 0

    pids = [running.pid("dns"), running.pid("scheduler")]
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(timeout=30) == 0
    log = running.log.read_text(errors="replace")
    assert "dns exited with status 0" in log and "scheduler exited with status 0" in log, log
    assert not running.state.exists()
    for pid in pids:
        assert pid is not None and not Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("running", [1, 2], indirect=True, ids=["one-worker", "two-workers"])
def test_allowed_traffic_folded_in_memory_is_counted_lost_when_killed(running: Running) -> None:
    """A DNS worker folds allowed queries per client, name and minute before it logs them; a
    kill -9 of the worker loses what it holds, and its supervisor must count that like every
    other loss: `schoolgate run` when the daemon is its one worker, the daemon's own supervising
    process when it has several. (A kill -9 of that supervising process loses none of it: its
    workers get SIGTERM and hand it over as they stop.)"""
    _wait(lambda: _answers(running.port, "www.facebook.com"), 60, "schoolgate dns to answer")
    daemon = running.pid("dns")
    assert daemon is not None
    alone = running.dns_workers == 1
    _wait(lambda: len(worker_pids(daemon)) == running.dns_workers, 10, "the DNS workers")
    if alone:
        # One worker: the daemon answers itself and forks only its event writer.
        assert worker_pids(daemon) == [daemon]
        assert [_comm(child) for child in _children(daemon)] == [WRITER_PROCESS_NAME]
    # The start of a minute: its rows stay folded for the next 60 s, longer than this test.
    set_clock_file(running.clock, datetime.fromisoformat("2026-11-23T10:20:00+00:00"))
    time.sleep(0.5)  # the daemon re-reads the clock file at most every 0.2 s
    names = [f"folded{n}.example.org" for n in range(30)]
    for name in names:  # allowed in a lesson; each asked twice, so 30 rows of 60 queries
        _answers(running.port, name)
        _answers(running.port, name)

    def held() -> dict[int, tuple[int, int]]:
        """pid -> (rows held, queries in them), for each worker's status row ("dns", "dns.N")."""
        found = {}
        for name, row in running.status().items():
            if name == "dns" or (name.startswith("dns.") and name[4:].isdigit()):
                events: dict[str, Any] = cast(dict[str, Any], row["stats"]).get("events", {})
                found[int(cast(int, row["pid"]))] = (int(events.get("held", 0)), int(events.get("held_queries", 0)))
        return found

    _wait(lambda: sum(rows for rows, _ in held().values()) >= len(names), 10,
          "the status rows to show the folded rows")
    # Kill the worker holding most (with two, the kernel spreads the queries, even one name's, between them).
    victim, (rows, queries) = max(held().items(), key=lambda item: item[1][0])
    assert victim in worker_pids(daemon)
    assert rows > 0 and queries >= rows
    os.kill(victim, signal.SIGKILL)
    said = "dns killed by SIGKILL" if alone else f"DNS worker {victim} exited"
    _wait(lambda: said in running.log.read_text(errors="replace"), 10, "the supervisor's report of the kill")
    log = running.log.read_text(errors="replace")
    report = next(line for line in log.splitlines() if said in line)
    assert f"{rows} rows of allowed traffic folded in memory ({queries} queries)" in report, log
    counted = int(report.split("up to ")[1].split()[0])
    assert counted >= rows
    if not alone:
        assert running.pid("dns") == daemon  # the worker was replaced; the daemon itself ran on


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@pytest.mark.parametrize(
    ("settings", "skipped"),
    [
        ("", ["identity"]),  # nothing for the identity service to receive
        ('[identity]\nradius_listen = "127.0.0.1:1813"\nradius_clients = ["127.0.0.1"]\n', []),
        ('[identity]\nlease_files = ["isc:/var/lib/dhcp/dhcpd.leases"]\n', []),
        ('[network]\nmode = "dns-only"\n', ["identity", "watch"]),
    ],
)
def test_daemons_with_nothing_to_do_are_not_started(tmp_path: Path, settings: str, skipped: list[str]) -> None:
    from schoolgate.runner import DAEMONS, _not_needed

    config = tmp_path / "schoolgate.toml"
    config.write_text(f'policy = "{REPO / "deploy" / "policy.example.toml"}"\ndata_dir = "{tmp_path}"\n{settings}')
    assert sorted(_not_needed(str(config), list(DAEMONS))) == skipped


def test_restart_delays_are_capped_at_2_s() -> None:
    from schoolgate.runner import restart_delay

    assert [restart_delay(n) for n in range(8)] == [0.0, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("counters", "beats", "expected"),
    [
        # idle writer: nothing waiting, no rate seen -> nothing lost
        ({"submitted": 10, "written": 10}, [(0, 10), (5, 10)], 0),
        # 100/s seen between heartbeats: up to 0.2 s of it (20) since the last flush
        ({"submitted": 600, "written": 600}, [(0, 100), (5, 600)], 20),
        # a backlog held while the database was busy is lost too
        ({"submitted": 700, "written": 600, "dropped": 50}, [(0, 100), (5, 600)], 70),
        # repeated asks folded into an earlier ask's row are written in its count, not waiting
        ({"submitted": 900, "written": 300, "folded": 600}, [(0, 900), (5, 900)], 0),
        # spooled rows are on disk, not lost
        ({"submitted": 700, "written": 600, "spooled": 100}, [(0, 700), (5, 700)], 0),
        # allowed traffic folded in memory, not yet submitted, dies with the process
        ({"submitted": 700, "written": 700, "held": 40, "held_queries": 900}, [(0, 700), (5, 700)], 40),
        # a DNS worker: what it handed to its daemon's event writer is the writer's to count
        ({"submitted": 700, "handed": 650, "dropped": 10, "held": 5}, [(0, 700), (5, 700)], 45),
    ],
)
def test_the_loss_estimate_of_an_unclean_exit(
    counters: dict[str, int], beats: list[tuple[int, int]], expected: int
) -> None:
    from datetime import UTC, timedelta

    from schoolgate.runner import RateTracker, estimate_loss

    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    rates = RateTracker()
    for seconds, submitted in beats:
        rates.observe("dns", start + timedelta(seconds=seconds), submitted)
    row = {"name": "dns", "stats": {"events": counters}, "heartbeat_at": start, "started_at": start}
    lost, detail = estimate_loss([row], rates)
    assert lost == expected, detail
    assert estimate_loss([{"name": "console", "stats": {}}], rates)[0] is None


def test_the_status_written_before_the_log_line_that_reports_an_exit_or_restart(tmp_path: Path) -> None:
    """Whoever reads the supervisor's log line about a death or a restart must find the same
    facts already written: it once said "Previous run ended without flushing" while the
    status still counted 0 events maybe lost."""
    from schoolgate.runner import Child, Supervisor

    state_file = tmp_path / "state.json"
    child = Child("dns", [sys.executable, "-c", "raise SystemExit(3)"])
    seen: list[tuple[str, dict[str, object]]] = []

    def say(message: str) -> None:
        seen.append((message, json.loads(state_file.read_text())["children"]["dns"]))

    supervisor = Supervisor([child], board=None, state_file=state_file, grace=1.0, say=say)
    child.start()
    assert child.process is not None
    child.process.wait(timeout=30)
    supervisor._tend()
    child.next_start = 0.0  # due now, not after the back-off
    supervisor._tend()
    supervisor.stop_all()
    (ended, at_end), (restarted, at_restart) = seen[:2]
    assert "status 3" in ended, ended
    assert at_end["unclean_exits"] == 1 and "status 3" in str(at_end["last_exit"])
    assert restarted.startswith("restarted dns")
    assert at_restart["restarts"] == 1


# The supervisor's preload, as `schoolgate run` does it, then one daemon forked from it: the
# child must run on what the supervisor built (its copy-on-write pages stay shared), not build
# the command line again. Run in a process of its own: the preload imports every daemon's modules.
PRELOAD_THEN_FORK = """
import sys
from schoolgate import cli
from schoolgate.runner import Preloaded

preloaded = Preloaded()
preloaded.load()
from schoolgate.store.models import Base

unconfigured = [m.class_.__name__ for m in Base.registry.mappers if not m.configured]
if unconfigured:
    sys.exit(f"mappers left for each daemon to configure after the fork: {unconfigured}")

def build_again():
    raise SystemExit("the forked daemon built the whole command line again")

cli.build_parser = build_again
daemon = preloaded.spawn("probe", ["policy", "check", sys.argv[1]])
sys.exit(daemon.wait(120))
"""


def test_a_forked_daemon_runs_on_the_parser_and_mappers_the_supervisor_built(repo_root: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-c", PRELOAD_THEN_FORK, str(repo_root / "deploy" / "policy.example.toml")],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "policy.example.toml: OK." in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("name", "workers", "expected"),
    [
        ("proxy", 1, [("proxy", None, [])]),
        ("dns", 3, [("dns", None, [])]),  # DNS forks its own workers: one child
        (
            "proxy",
            3,
            [
                ("proxy", "proxy.1", ["--worker", "1", "--workers", "3"]),
                ("proxy.2", "proxy.2", ["--worker", "2", "--workers", "3"]),
                ("proxy.3", "proxy.3", ["--worker", "3", "--workers", "3"]),
            ],
        ),
    ],
)
def test_each_proxy_worker_is_a_child_with_its_own_status_row(
    name: str, workers: int, expected: list[tuple[str, str | None, list[str]]]
) -> None:
    from schoolgate.runner import child_argv, children_of

    base = child_argv(name, "/etc/schoolgate.toml")
    children = children_of(name, "/etc/schoolgate.toml", workers, None)
    assert [(c.name, c.status_name, c.argv[len(base):]) for c in children] == expected
    assert all(c.argv[: len(base)] == base for c in children)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_proxy_workers_and_their_event_writer_share_one_channel(workers: int) -> None:
    """The workers get the channel's sending end, "proxy.events" its reading end, each named in
    its argv; each holds only its own end (a worker holding the reading end, or the writer the
    sending end, would keep the writer's stream from ever ending)."""
    from schoolgate.runner import PROXY_EVENTS, EventChannels, children_of, event_writer_child

    events = EventChannels.make(["proxy"])
    try:
        proxies = children_of("proxy", "/etc/schoolgate.toml", workers, None, events)
        writer = event_writer_child("/etc/schoolgate.toml", None, events)
        sending, reading = events.ends["proxy"].sending.fileno(), events.ends["proxy"].reading.fileno()
        assert len(proxies) == workers
        for child in proxies:
            assert child.argv[-2:] == ["--events-fd", str(sending)]
            assert (child.fds, child.closes) == ((sending,), (reading,))
            assert child.status_name == ("proxy" if workers == 1 else f"proxy.{child.argv[-5]}")
        assert (writer.name, writer.status_names) == (PROXY_EVENTS, (PROXY_EVENTS,))
        assert writer.argv[-5:] == ["events", "--config", "/etc/schoolgate.toml", "--source", f"proxy={reading}"]
        assert (writer.fds, writer.closes) == ((reading,), (sending,))
    finally:
        events.close()


@pytest.mark.parametrize(("present", "writing"), [
    (["dns", "proxy", "console", "scheduler", "watch"], ["dns", "proxy"]),  # the appliance's `schoolgate run`
    (["proxy"], ["proxy"]),  # the proxy's systemd unit
    (["dns"], []),  # the DNS daemon without the proxy forks its own writer
    (["dns", "scheduler"], []),
    (["console", "scheduler"], []),
])
def test_which_daemons_events_the_supervisors_writer_writes(present: list[str], writing: list[str]) -> None:
    from schoolgate.runner import writing_daemons

    assert writing_daemons(present) == writing


@pytest.mark.parametrize(("present", "companions"), [
    (["dns", "proxy", "console", "scheduler", "watch"], ["watch", "scheduler"]),  # the appliance's `schoolgate run`
    (["proxy", "watch"], ["watch"]),
    (["proxy", "scheduler"], ["scheduler"]),
    (["watch"], []),  # `--only watch`: a process of its own, as under systemd
    (["scheduler"], []),  # `--only scheduler`, likewise
    (["dns", "watch"], []),  # no writing process to run it in
    (["dns", "scheduler"], []),
    (["dns", "proxy"], []),
])
def test_net_watch_and_the_scheduler_run_in_the_supervisors_writing_process_whenever_there_is_one(
    present: list[str], companions: list[str]
) -> None:
    from schoolgate.runner import writing_companions

    assert writing_companions(present) == companions


def test_the_writing_process_that_runs_companions_owns_their_rows_and_says_it_runs_them() -> None:
    """`schoolgate events ... --watch --scheduler`: its rows are the two channels', net watch's
    ("gateway") and the scheduler's, so its death is counted against all four; the state file
    names what it runs."""
    from schoolgate.runner import EventChannels, event_writer_child

    events = EventChannels.make(["dns", "proxy"])
    try:
        writer = event_writer_child("/etc/schoolgate.toml", None, events, ["watch", "scheduler"])
        watching = event_writer_child("/etc/schoolgate.toml", None, events, ["watch"])
        plain = event_writer_child("/etc/schoolgate.toml", None, events)
    finally:
        events.close()
    assert writer.argv[-2:] == ["--watch", "--scheduler"] and watching.argv[-1] == "--watch"
    assert not {"--watch", "--scheduler"} & set(plain.argv)
    assert writer.argv[: len(plain.argv)] == plain.argv
    assert writer.own_rows == ("dns.events", "proxy.events", "gateway", "scheduler")
    assert watching.own_rows == ("dns.events", "proxy.events", "gateway")
    assert (writer.runs, watching.runs, plain.runs) == (("watch", "scheduler"), ("watch",), ())
    assert writer.describe()["runs"] == ["watch", "scheduler"] and plain.describe()["runs"] == []


def test_with_dns_and_proxy_one_writer_reads_both_channels_and_each_daemon_holds_its_own_end() -> None:
    """The appliance's default: the DNS daemon and the proxy each send on a channel of their
    own (`--events-fd`), and one child, "events", reads both (`--source dns=R1 --source
    proxy=R2`), each written with its daemon's settings into its daemon's row."""
    from schoolgate.runner import SHARED_EVENTS, EventChannels, children_of, event_writer_child

    events = EventChannels.make(["dns", "proxy"])
    try:
        (dns,) = children_of("dns", "/etc/schoolgate.toml", 1, None, events)
        (proxy,) = children_of("proxy", "/etc/schoolgate.toml", 1, None, events)
        (console,) = children_of("console", "/etc/schoolgate.toml", 1, None, events)
        writer = event_writer_child("/etc/schoolgate.toml", None, events)
        ends = {name: (pair.sending.fileno(), pair.reading.fileno()) for name, pair in events.ends.items()}
        every = set(events.fds)
        assert len(every) == 4
        for child, daemon in ((dns, "dns"), (proxy, "proxy")):
            sending = ends[daemon][0]
            assert child.argv[-2:] == ["--events-fd", str(sending)]
            assert child.fds == (sending,) and set(child.closes) == every - {sending}
        assert console.fds == () and "--events-fd" not in console.argv
        assert writer.name == SHARED_EVENTS
        assert writer.argv[-6:] == ["--config", "/etc/schoolgate.toml", "--source", f"dns={ends['dns'][1]}",
                                    "--source", f"proxy={ends['proxy'][1]}"]
        assert set(writer.fds) == {ends["dns"][1], ends["proxy"][1]}
        assert set(writer.closes) == {ends["dns"][0], ends["proxy"][0]}
        assert writer.status_names == ("dns.events", "proxy.events")
    finally:
        events.close()


def test_a_single_proxys_row_is_its_own_beside_its_event_writers() -> None:
    """A killed proxy worker's possible loss is read from its row alone, not the writer's; a
    killed DNS daemon's from its own rows, not those of the writer the supervisor runs for it."""
    from schoolgate.runner import PROXY_EVENTS, SHARED_EVENTS, Child, StatusBoard

    board = StatusBoard.__new__(StatusBoard)
    now = datetime.now().astimezone()
    rows = {name: {"heartbeat_at": now, "stats": {}} for name in ("proxy", PROXY_EVENTS, "dns", "dns.events")}
    board._read = lambda: rows  # type: ignore[method-assign]
    shared = Child(SHARED_EVENTS, [], status_names=("dns.events", PROXY_EVENTS))
    for name, status_name, status_names, owned_elsewhere, expected in (
        ("proxy", "proxy", (), (), ["proxy"]),
        (PROXY_EVENTS, None, (PROXY_EVENTS,), (), [PROXY_EVENTS]),
        ("dns", None, (), (), ["dns", "dns.events"]),  # the DNS daemon's own writer is its child process
        ("dns", None, (), shared.status_names, ["dns"]),  # the supervisor's writer writes for it
        (SHARED_EVENTS, None, shared.status_names, (), ["dns.events", PROXY_EVENTS]),
    ):
        child = Child(name, [], status_name=status_name, status_names=status_names)
        child.started_wall = now
        assert sorted(row["name"] for row in board.rows_of(child, owned_elsewhere)) == expected


def test_a_killed_dns_daemons_loss_is_its_own_not_the_shared_writers() -> None:
    """With the supervisor's writer writing the DNS daemon's events, a killed DNS daemon may have
    lost what its own row says it held, not what the living writer holds (its row, "dns.events",
    is the writer's); the writer's death counts both of its rows."""
    from schoolgate.runner import SHARED_EVENTS, Child, RateTracker, StatusBoard, Supervisor

    now = datetime.now().astimezone()
    rows = {
        "dns": {"heartbeat_at": now, "stats": {"events": {"submitted": 10, "handed": 7, "held": 2}}},
        "dns.events": {"heartbeat_at": now, "stats": {"events": {"submitted": 500, "written": 100}}},
        "proxy.events": {"heartbeat_at": now, "stats": {"events": {"submitted": 50, "written": 20}}},
    }
    board = StatusBoard.__new__(StatusBoard)
    board._read = lambda: rows  # type: ignore[method-assign]
    board.rates = RateTracker()
    dns = Child("dns", [])
    writer = Child(SHARED_EVENTS, [], status_names=("dns.events", "proxy.events"))
    for child in (dns, writer):
        child.started_wall = now
    supervisor = Supervisor([dns, writer], board=board, state_file=None, grace=1.0, say=lambda _: None)
    report = supervisor._report(dns, -9)
    assert report.maybe_lost == 3 + 2 and "dns.events" not in report.detail, report
    report = supervisor._report(writer, -9)
    assert report.maybe_lost == 400 + 30 and "dns.events" in report.detail and "proxy.events" in report.detail


def test_a_workers_status_rows_are_its_own(tmp_path: Path) -> None:
    """The supervisor counts a dead worker's possibly lost events from that worker's row only."""
    from schoolgate.runner import Child, StatusBoard

    board = StatusBoard.__new__(StatusBoard)
    now = datetime.now().astimezone()
    rows = {name: {"heartbeat_at": now, "stats": {}} for name in ("proxy.1", "proxy.2", "dns")}
    board._read = lambda: rows  # type: ignore[method-assign]
    worker = Child("proxy.2", [], status_name="proxy.2")
    worker.started_wall = now
    assert [row["name"] for row in board.rows_of(worker)] == ["proxy.2"]
    single = Child("proxy", [])
    single.started_wall = now
    assert sorted(row["name"] for row in board.rows_of(single)) == ["proxy.1", "proxy.2"]


def test_the_loss_estimate_of_the_dns_event_writer_counts_the_second_its_events_wait_in_the_socket() -> None:
    """The DNS event-writing process reads its workers' events in bursts WRITER_GATHER_S apart:
    killed with its daemon, it loses up to that long at the fastest rate seen, on top of the
    flush interval, and the estimate says so."""
    import math
    from datetime import UTC, timedelta

    from schoolgate.dns.daemon import WRITER_GATHER_S
    from schoolgate.runner import EXTRA_HOLD_S, FLUSH_INTERVAL_S, RateTracker, estimate_loss

    assert EXTRA_HOLD_S["dns.events"] >= WRITER_GATHER_S
    start = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
    rates = RateTracker()
    for seconds, submitted in [(0, 100), (5, 600)]:  # 100 events a second
        rates.observe("dns.events", start + timedelta(seconds=seconds), submitted)
    counters = {"submitted": 600, "written": 600}
    row = {"name": "dns.events", "stats": {"events": counters}, "heartbeat_at": start, "started_at": start}
    lost, detail = estimate_loss([row], rates)
    assert lost == math.ceil(100 * (FLUSH_INTERVAL_S + EXTRA_HOLD_S["dns.events"])), detail
    assert lost >= 100 * WRITER_GATHER_S


# A supervisor of the proxy alone (its systemd unit runs `schoolgate run --only proxy`) preloads
# what the proxy's children share and none of the other daemons' libraries (each area's command
# table, `cli`, is part of the one parser every child runs on).
PRELOAD_FOR_THE_PROXY = """
import sys
from schoolgate.runner import Preloaded

Preloaded(daemons=["proxy"]).load()
others = sorted(m for m in sys.modules if m.split(".")[0] in ("gunicorn", "apscheduler")
                or m.startswith(("schoolgate.console.", "schoolgate.scheduler.")) and not m.endswith(".cli"))
print("mitmproxy" in sys.modules and "schoolgate.proxy.front" in sys.modules, others)
"""


def test_a_supervisor_of_the_proxy_alone_preloads_only_what_its_children_share() -> None:
    done = subprocess.run([sys.executable, "-P", "-c", PRELOAD_FOR_THE_PROXY], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True []", done.stdout


@pytest.mark.parametrize(
    ("only", "row"),
    [([], "run"), (["proxy"], "run.proxy"), (["proxy", "dns", "proxy"], "run.dns.proxy")],
)
def test_each_supervisor_writes_a_status_row_of_its_own(only: list[str], row: str) -> None:
    from schoolgate.runner import supervisor_status_name

    assert supervisor_status_name(only) == row
