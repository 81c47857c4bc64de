"""The transparent proxy in the lab, against Squid doing the same job in the same run.

    sudo .venv/bin/python -P bench/proxy/run.py [--seconds 8] [--concurrency 32]
        [--proxy-workers 2] [--profile FOLDER]

(`--profile`: py-spy, from PyPI, samples schoolgate's proxy during each load; one collapsed
stack file per slice. `--proxy-workers`: the CPU per connection is summed over every process of
schoolgate's proxy, its workers and the one that writes their events, and shown per process;
where that process also writes the DNS daemon's events and runs net watch and the scheduler, as
`schoolgate run` has it, only its threads that write the proxy's events are counted.)

Builds a private lab (namespaces `sgb…`), then measures from the lab's devices:

1. new TLS connections per second that the proxy kills at the SNI (a pupil, Facebook, in a
   lesson: the same name again and again, as a blocked app retries, and a new name each time,
   which schoolgate must judge anew each time) and that it passes
   through (staff, Facebook, after school: steered to the proxy, then spliced without
   decryption) — for schoolgate's proxy and for Squid (squid-openssl, peek at step 1, then
   terminate or splice by SNI and client network: the same decision); and the CPU time each
   proxy process spent per connection meanwhile (user + system, all its threads, from
   /proc): the load generator shares the machine, so the rate moves with whatever else runs,
   while the CPU cost of a connection hardly does;
2. the latency the proxy adds to a passthrough connection's setup (TCP + TLS handshake to
   Facebook through the proxy vs. to an unwatched site the kernel forwards directly, the two
   taken in turn so that the machine's load falls on both alike: median and p99 of each
   proxied handshake less the direct one beside it);
3. the throughput of an unwatched download through the gateway with schoolgate running and
   with a bare NAT gateway (goal: equal — that traffic never reaches Python).

Every loop is bounded in time and count. Squid runs from a temporary config inside the
gateway namespace (never the system service) and is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import resource
import selectors
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from schoolgate.config import load_config
from schoolgate.gateway.cli import build_ruleset
from schoolgate.lab import netns
from schoolgate.lab.hello import client_hello
from schoolgate.lab.internet import SITES
from schoolgate.lab.lab import Lab
from schoolgate.lab.packages import ensure_programs
from schoolgate.lab.squid import SQUID_TLS_PORT as SQUID_PORT
from schoolgate.lab.squid import write_squid_config
from schoolgate.lab.topology import GATEWAY_LAN_IP, WAN_INTERFACE
from schoolgate.runner import PROXY_EVENTS, SHARED_EVENTS
from schoolgate.store.events.writing import OS_THREAD_PREFIX

LESSON = "2026-11-23T10:15:00+00:00"
AFTER_SCHOOL = "2026-11-23T16:30:00+00:00"  # the example policy (ASPIRE §4): staff social media after school
FACEBOOK = next(s.ip for s in SITES if s.label == "facebook")
LIBRARY = next(s.ip for s in SITES if s.label == "library")
MAX_CONNECTIONS = 200_000  # per measurement, whatever the duration
# The loads, each measured on both proxies. A blocked app retries: most kills are a device asking
# again for what was just killed (the same name and address), which schoolgate kills from a
# table of this minute's kills (schoolgate.proxy.door_verdicts). "killed-new" gives each connection a
# name never asked before (n1.www.facebook.com, n2...): every one judged anew.
KINDS = ("killed", "killed-new", "passed")
KILLS_OF_SCHOOLGATE = (("schoolgate", "killed"), ("schoolgate", "killed-new"))
KIND_LABELS = {
    "killed": "killed at the SNI (a device retrying)",
    "killed-new": "killed at the SNI, a new name each time",
    "passed": "passed through (spliced)",
}
TABLE_LABELS = {
    "killed": "Proxy, TLS connections killed at the SNI (retries)",
    "killed-new": "Proxy, TLS connections killed at the SNI (a new name each)",
    "passed": "Proxy, passthrough",
}


@dataclass
class Rate:
    done: int
    failed: int
    seconds: float
    client_cpu: float = 0.0  # CPU seconds the load generator itself spent (its thread)
    client_system: float = 0.0  # of which in the kernel (the lab network's packets are handled there too)

    @property
    def per_second(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0


class _Attempt:
    """One TLS connection of the load generator: a non-blocking socket and OpenSSL over memory
    buffers (a passthrough's handshake is real: a fresh ClientHello each time, the server's
    certificate checked against the lab CA; a kill's hello is ready-made, see _handshakes)."""

    __slots__ = ("incoming", "outgoing", "sock", "started", "tls")

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.started = started
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls: ssl.SSLObject | None = None


def _handshakes(host: str, ip: str, expect_killed: bool, seconds: float, concurrency: int,
                cafile: str, fresh_names: bool = False) -> Rate:
    """Open TLS connections back to back, `concurrency` at a time, for `seconds`.

    The load generator shares the two cores with both proxies, so its own cost must be small
    and is shown: on asyncio's TLS streams it spent 390-480 µs of CPU per killed connection
    and 1.1-1.5 ms per completed handshake, more than either proxy, and that CPU was taken
    from whichever proxy was measured. Here one thread drives every connection from one epoll
    loop, with OpenSSL over memory buffers: the same real handshake (for a passthrough a fresh
    ClientHello each time, the site's certificate checked against the lab CA) without asyncio's transports,
    futures and per-connection tasks. Its CPU, and how much of it was in the kernel (the lab's
    packets are handled there, on the sender's CPU), is counted in `Rate` and printed.

    A connection counts as killed when it ends before the server's first byte reaches the
    device, and as passed through when the TLS handshake with the real site completes (the
    device then sends its Finished and closes, as a client that got what it came for).
    With `fresh_names`, each connection's SNI is a new subdomain of `host`.

    Where the proxy is to kill the connection, the device sends a ClientHello that this
    machine's TLS stack made once before the load (`kill_hellos`), not one made afresh for each
    connection: a killed connection never gets past its hello, and making one (a key share
    above all) cost the generator 300-360 µs of CPU per connection, twice what either proxy
    spends killing it, so that on a quiet machine the rate was the generator's. Both proxies
    read the same bytes; neither keeps anything of a hello's bytes between connections.
    """
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    hellos = kill_hellos(host, fresh_names) if expect_killed else None
    selector = selectors.EpollSelector()
    attempts: dict[int, _Attempt] = {}
    done = failed = 0
    serials = itertools.count(1)
    started = time.monotonic()
    deadline = started + seconds
    usage_at_start = resource.getrusage(resource.RUSAGE_THREAD)

    def open_one(now: float) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect_ex((ip, 443))
        attempts[sock.fileno()] = _Attempt(sock, now)
        selector.register(sock, selectors.EVENT_WRITE)

    def finish(attempt: _Attempt, ok: bool) -> None:
        nonlocal done, failed
        del attempts[attempt.sock.fileno()]
        selector.unregister(attempt.sock)
        attempt.sock.close()
        if ok:
            done += 1
        else:
            failed += 1

    def flush(attempt: _Attempt) -> None:
        pending = attempt.outgoing.read()
        if pending:
            attempt.sock.send(pending)  # a handshake flight: far below the socket's buffer

    def step(attempt: _Attempt, writable: bool) -> None:
        sock = attempt.sock
        if attempt.tls is None:  # connected (or refused): say hello
            if not writable or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                finish(attempt, False)
                return
            if hellos is not None:
                sock.send(hellos(next(serials)))
                selector.modify(sock, selectors.EVENT_READ)
                attempt.tls = KILL_ONLY
                return
            name = f"n{next(serials)}.{host}" if fresh_names else host
            attempt.tls = context.wrap_bio(attempt.incoming, attempt.outgoing, server_hostname=name)
            selector.modify(sock, selectors.EVENT_READ)
        else:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed by the proxy")
            if expect_killed:  # the server answered: the proxy let it through
                finish(attempt, False)
                return
            attempt.incoming.write(data)
        try:
            attempt.tls.do_handshake()
        except ssl.SSLWantReadError:
            flush(attempt)
            return
        flush(attempt)  # the device's Finished
        finish(attempt, not expect_killed)

    try:
        for _ in range(concurrency):
            open_one(time.monotonic())
        while attempts:
            now = time.monotonic()
            for key, events in selector.select(timeout=0.25):
                attempt = attempts[key.fd]
                try:
                    step(attempt, bool(events & selectors.EVENT_WRITE))
                except (ssl.SSLError, OSError):
                    finish(attempt, expect_killed)  # the proxy ended the handshake: a kill
            now = time.monotonic()
            for attempt in [a for a in attempts.values() if now - a.started > 5]:
                finish(attempt, False)  # no verdict carried out within 5 s
            while len(attempts) < concurrency and now < deadline and done + failed < MAX_CONNECTIONS:
                open_one(now)
    finally:
        for attempt in list(attempts.values()):
            attempt.sock.close()
        selector.close()
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    system = usage.ru_stime - usage_at_start.ru_stime
    return Rate(done, failed, time.monotonic() - started, usage.ru_utime - usage_at_start.ru_utime + system, system)


KILL_ONLY: Any = object()  # an attempt's `tls` once its ready-made hello is sent: it only waits to be killed
_SERIAL_DIGITS = 7


def kill_hellos(host: str, fresh_names: bool) -> Callable[[int], bytes]:
    """The ClientHello for connection number N: `host`'s, made once; with `fresh_names`, that of
    nN.`host` (N zero-padded to a fixed width, so that every name is as long as the one the
    hello was made for, and only its server_name bytes differ)."""
    if not fresh_names:
        hello = client_hello(host, ["http/1.1"])
        return lambda serial: hello
    template = ("n" + "0" * _SERIAL_DIGITS).encode()
    made = client_hello(f"{template.decode()}.{host}", ["http/1.1"])
    if made.count(template) != 1:
        raise RuntimeError("the template name does not appear exactly once in its ClientHello")
    at = made.index(template)
    head, tail = made[:at], made[at + len(template):]
    limit = 10**_SERIAL_DIGITS
    return lambda serial: head + b"n%0*d" % (_SERIAL_DIGITS, serial % limit) + tail


def connection_rate(namespace: str, host: str, ip: str, *, killed: bool, seconds: float, concurrency: int,
                    cafile: str, fresh_names: bool = False) -> Rate:
    return netns.call_in(
        namespace,
        lambda: _handshakes(host, ip, killed, seconds, concurrency, cafile, fresh_names),
        timeout=seconds + 60,
    )


LATENCY_FAILURES: dict[str, int] = {}  # handshakes that failed, by host: counted and printed


def setup_latency(namespace: str, targets: list[tuple[str, str]], cafile: str, count: int) -> list[list[float]]:
    """`count` rounds of sequential TCP connect + TLS handshakes, one to each of `targets`
    (host, address) in turn, so a burst of load on the machine falls on every target alike:
    per round, each one's time in milliseconds. A round where a handshake failed is left out
    and counted in LATENCY_FAILURES (one reset on a busy machine must not end the run)."""

    def measure() -> list[list[float]]:
        context = ssl.create_default_context(cafile=cafile)
        rounds = []
        for _ in range(count):
            times = []
            for host, ip in targets:
                started = time.perf_counter()
                try:
                    with socket.create_connection((ip, 443), timeout=5) as raw, context.wrap_socket(
                        raw, server_hostname=host
                    ):
                        times.append((time.perf_counter() - started) * 1000)
                except (OSError, ssl.SSLError):
                    LATENCY_FAILURES[host] = LATENCY_FAILURES.get(host, 0) + 1
                    break
            else:
                rounds.append(times)
        return rounds

    return netns.call_in(namespace, measure, timeout=count * len(targets) * 5 + 30)


def download_speed(lab: Lab, device: str, size: int) -> float:
    """MB/s of one HTTP download of `size` bytes from the unwatched site."""
    done = netns.exec_in(lab.names.device(device), [
        "curl", "-sS", "-o", "/dev/null", "--max-time", "60", "-w", "%{speed_download}",
        # by address: the bare-NAT runs have no schoolgate DNS to ask
        "-H", "Host: library.example.org", f"http://{LIBRARY}/bytes/{size}",
    ], timeout=90)
    return float(done.stdout) / 1e6


def apply_redirect_to(lab: Lab, port: int) -> None:
    """Reload the gateway's ruleset with the web redirect pointing at `port` (keeps the sets)."""
    from schoolgate.gateway.nft import apply_ruleset

    config = load_config(lab.config_path)
    text = build_ruleset(config).replace("redirect to :8081", f"redirect to :{port}")
    netns.call_in(lab.names.gateway, lambda: apply_ruleset(text))


def bare_nat(lab: Lab) -> None:
    """The gateway without schoolgate: its table removed, a plain masquerade in its place."""
    gw = lab.names.gateway
    netns.exec_in(gw, ["nft", "delete", "table", "inet", "schoolgate"], check=False)
    netns.run(["ip", "netns", "exec", gw, "nft", "-f", "-"], input_text=(
        "table ip sgbench\ndelete table ip sgbench\n"
        "table ip sgbench {\n chain post { type nat hook postrouting priority srcnat; policy accept;\n"
        f'  oifname "{WAN_INTERFACE}" masquerade\n }}\n}}\n'
    ))


def schoolgate_nat(lab: Lab) -> None:
    """Back to schoolgate's ruleset (the bare table removed)."""
    netns.exec_in(lab.names.gateway, ["nft", "delete", "table", "ip", "sgbench"], check=False)
    apply_redirect_to(lab, 8081)


# The threads of the shared event-writing process that write the proxy's events (and the
# threads they start): the process also writes the DNS daemon's events and runs net watch and
# the scheduler, none of which is the proxy's cost (schoolgate.store.events.writing names each
# part's threads in the kernel).
PROXY_WRITING_THREADS = f"{OS_THREAD_PREFIX}{PROXY_EVENTS}"[:15]


@dataclass(frozen=True)
class Measured:
    """A process whose CPU time is counted, or only its threads of one kernel name."""

    pid: int
    threads: str | None = None  # a thread name (/proc/PID/task/TID/comm); None: the whole process


def cpu_seconds(measured: Measured) -> float:
    """User + system CPU time of a process (all its threads), or of its threads named so."""
    return sum(cpu_split(measured))


def cpu_split(measured: Measured) -> tuple[float, float]:
    """(user, system) CPU time of a process (all its threads), or of its threads named so."""
    tick = os.sysconf("SC_CLK_TCK")
    if measured.threads is None:
        paths = [Path(f"/proc/{measured.pid}/stat")]
    else:
        paths = []
        for task in Path(f"/proc/{measured.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                if (task / "comm").read_text().strip() == measured.threads:
                    paths.append(task / "stat")
    user = system = 0
    for path in paths:
        with contextlib.suppress(OSError):  # a thread that has just ended
            fields = path.read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
    return user / tick, system / tick


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, every CPU (/proc/stat; idle and
    iowait are not busy)."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return (total - fields[3] - fields[4]) / tick, total / tick


def settle(measured: list[Measured], *, at_least: float = 0.0, step: float = 0.25, quiet: float = 0.1,
           limit: float = 60.0) -> float:
    """Wait `at_least` seconds, then until the processes are idle (under `quiet` of a CPU over
    one `step`), at most `limit` seconds in all; returns the CPU seconds they spent meanwhile.

    schoolgate writes the events of a load, and its scheduler scans them for alerts at its next
    scan (every `[alerts] scan_interval_seconds`), after the load has ended; without this wait,
    that work would run during the next slice, and its rate (or Squid's, which writes no
    events) would be measured on a busier machine."""
    spent = 0.0
    last = sum(cpu_seconds(m) for m in measured)
    started = time.monotonic()
    while time.monotonic() - started < limit:
        time.sleep(step)
        now = sum(cpu_seconds(m) for m in measured)
        spent, busy = spent + now - last, now - last
        last = now
        if busy < quiet * step and time.monotonic() - started >= at_least:
            break
    return spent


def report(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    for name, value in rows:
        print(f"  {name:48} {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0, help="per connection-rate measurement")
    parser.add_argument("--rounds", type=int, default=4, help="alternating slices the time is cut into")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--download-mb", type=int, default=400)
    parser.add_argument("--download-runs", type=int, default=5)
    parser.add_argument("--prefix", default="sgb")
    parser.add_argument("--proxy-workers", type=int, default=1, help="schoolgate proxy workers (proxy.workers)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record py-spy profiles of schoolgate's proxy per load into this folder "
                             "(py-spy from PyPI; the profiler's sampling adds a little CPU to the figures)")
    args = parser.parse_args(argv)
    if args.profile is not None and _py_spy() is None:
        print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    if ensure_programs({"squid": "squid-openssl"}):
        return 2

    load_at_start = os.getloadavg()
    state_root = Path(tempfile.mkdtemp(prefix="sg-bench-"))
    lab = Lab(args.prefix, state_root=state_root, proxy_workers=args.proxy_workers)
    lab.down()
    squid_pid: tuple[int, str | None] | None = None
    squid_folder: Path | None = None
    try:
        lab.up(clock=LESSON)
        cafile = str(lab.public_ca)
        pupil, staff = lab.names.device("pupil"), lab.names.device("staff")
        engines = {"schoolgate": 8081, "squid": SQUID_PORT}

        folder = squid_folder = Path(tempfile.mkdtemp(prefix="sg-squid-"))
        config = write_squid_config(folder, lab, GATEWAY_LAN_IP)
        squid_log = folder / "squid.out"
        process = netns.spawn(lab.names.gateway, ["squid", "-N", "-f", str(config)], log_path=squid_log)
        squid_pid = (process.pid, netns.process_start_time(process.pid))
        netns.wait_for(
            lambda: not netns.process_alive(*squid_pid) or netns.call_in(  # type: ignore[misc]
                lab.names.gateway, lambda: _port_open(GATEWAY_LAN_IP, SQUID_PORT)),
            timeout=30, what="squid to listen")
        if not netns.process_alive(*squid_pid):
            print(squid_log.read_text(), (folder / "cache.log").read_text(), file=sys.stderr)
            return 1

        # Both proxies run side by side; the redirect is switched between them and the
        # measurements alternate in short slices, so background load hits both alike.
        totals = {(e, k): Rate(0, 0, 0.0) for e in engines for k in KINDS}
        cpu = {(e, k): 0.0 for e in engines for k in KINDS}
        proxy_pid = lab.daemon_pid("proxy")
        if proxy_pid is None:
            print("the schoolgate proxy is not running in the lab", file=sys.stderr)
            return 1
        # Every process of schoolgate's proxy: its workers and the one that writes their events
        # ("proxy.events", or "events" where one process also writes the DNS daemon's events and
        # runs net watch and the scheduler: of that one, only the threads that write the proxy's).
        processes = {
            name: Measured(int(info["pid"]), PROXY_WRITING_THREADS if name == SHARED_EVENTS else None)
            for name, info in lab.supervisor_state()["children"].items()
            if (name == "proxy" or name.startswith("proxy.") or name == SHARED_EVENTS) and info.get("pid")
        }
        pids = {"schoolgate": list(processes.values()) or [Measured(proxy_pid)], "squid": [Measured(squid_pid[0])]}
        # Every schoolgate process, whole: what it still does after a load (the event writer's
        # rows, the scheduler's alert scan of them) waits for it to finish before the next slice.
        everything = [Measured(int(info["pid"])) for info in lab.supervisor_state()["children"].values()
                      if info.get("pid")]
        afterwards = {key: 0.0 for key in ((e, k) for e in engines for k in KINDS)}
        during = {key: 0.0 for key in afterwards}  # every schoolgate process, in each slice
        previous: tuple[str, str] | None = None
        scan_s = float(load_config(lab.config_path).alerts.scan_interval_seconds)
        by_process = {(name, kind): 0.0 for name in processes for kind in KINDS}
        in_kernel = {key: 0.0 for key in cpu}  # each proxy's system time
        # The rest of the machine in the same slices: the lab's web server (one process: the
        # sites' TLS handshakes, the same work for both proxies) and every CPU's busy share, so
        # that a rate can be read as the proxy's or as the machine's.
        origin = Measured(int(lab.state.processes["internet"]["pid"]))
        origin_cpu = {key: 0.0 for key in cpu}
        busy = {key: [0.0, 0.0] for key in cpu}  # busy, total CPU seconds of the machine
        latency: dict[str, list[float]] = {e: [] for e in engines}
        direct: dict[str, list[float]] = {e: [] for e in engines}  # taken in turn with each engine's
        slices = max(1, args.rounds)
        lab.set_clock(datetime.fromisoformat(AFTER_SCHOOL))  # the warm-up's connections are passed
        time.sleep(0.5)
        for port in engines.values():  # warm up: caches, address book, conntrack
            apply_redirect_to(lab, port)
            connection_rate(staff, "www.facebook.com", FACEBOOK, killed=False, seconds=1, concurrency=4,
                            cafile=cafile)
        for _ in range(slices):
            for engine, port in engines.items():
                apply_redirect_to(lab, port)
                for kind, device, clock in (
                    ("killed", pupil, LESSON), ("killed-new", pupil, LESSON), ("passed", staff, AFTER_SCHOOL)
                ):
                    lab.set_clock(datetime.fromisoformat(clock))
                    time.sleep(0.5)  # the daemons re-read the clock file
                    # After schoolgate's kills, its next alert scan comes within scan_s.
                    spent = settle(everything, at_least=scan_s + 1 if previous in KILLS_OF_SCHOOLGATE else 0.0)
                    if previous is not None:
                        afterwards[previous] += spent
                    previous = (engine, kind)
                    everything_before = sum(cpu_seconds(m) for m in everything)
                    profiler = _start_profile(args.profile, pids[engine][0].pid, f"{engine}-{kind}") \
                        if engine == "schoolgate" else None
                    each_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
                    system_before = sum(cpu_split(pid)[1] for pid in pids[engine])
                    cpu_before = sum(cpu_seconds(pid) for pid in pids[engine])
                    origin_before, machine_before = cpu_seconds(origin), machine_busy()
                    rate = connection_rate(device, "www.facebook.com", FACEBOOK, killed=kind != "passed",
                                           seconds=args.seconds / slices, concurrency=args.concurrency,
                                           cafile=cafile, fresh_names=kind == "killed-new")
                    cpu[(engine, kind)] += sum(cpu_seconds(pid) for pid in pids[engine]) - cpu_before
                    during[(engine, kind)] += sum(cpu_seconds(m) for m in everything) - everything_before
                    origin_cpu[(engine, kind)] += cpu_seconds(origin) - origin_before
                    machine_after = machine_busy()
                    busy[(engine, kind)][0] += machine_after[0] - machine_before[0]
                    busy[(engine, kind)][1] += machine_after[1] - machine_before[1]
                    in_kernel[(engine, kind)] += sum(cpu_split(pid)[1] for pid in pids[engine]) - system_before
                    if engine == "schoolgate":
                        for name, pid in processes.items():
                            by_process[(name, kind)] += cpu_seconds(pid) - each_before[name]
                    _stop_profile(profiler)
                    total = totals[(engine, kind)]
                    totals[(engine, kind)] = Rate(total.done + rate.done, total.failed + rate.failed,
                                                  total.seconds + rate.seconds, total.client_cpu + rate.client_cpu,
                                                  total.client_system + rate.client_system)
                for proxied, kernel_forwarded in setup_latency(
                    staff, [("www.facebook.com", FACEBOOK), ("library.example.org", LIBRARY)], cafile,
                    args.latency_samples // slices):
                    latency[engine].append(proxied)
                    direct[engine].append(kernel_forwarded)
        spent = settle(everything, at_least=scan_s + 1 if previous in KILLS_OF_SCHOOLGATE else 0.0)
        if previous is not None:
            afterwards[previous] += spent
        results = {e: {k: totals[(e, k)] for k in KINDS} for e in engines}
        worker_stats = _worker_stats(lab.data_dir, args.proxy_workers)
        front_doors = [stats.get("front") or {} for stats in worker_stats]
        via_proxy, via_squid = latency["schoolgate"], latency["squid"]
        netns.stop_process(*squid_pid)
        squid_pid = None
        apply_redirect_to(lab, 8081)

        # Alternate the two gateways so that background load hits both alike.
        size = args.download_mb * 1_000_000
        speeds: dict[str, list[float]] = {"schoolgate": [], "bare": []}
        for _ in range(args.download_runs):
            schoolgate_nat(lab)
            speeds["schoolgate"].append(download_speed(lab, "pupil", size))
            bare_nat(lab)
            speeds["bare"].append(download_speed(lab, "pupil", size))
        with_schoolgate = statistics.median(speeds["schoolgate"])
        without = statistics.median(speeds["bare"])
        lab.stop_daemons()  # the supervisor stops every daemon (each flushes first)
        no_daemons = download_speed(lab, "pupil", size)

        sg, sq = results["schoolgate"], results["squid"]
        print(f"schoolgate proxy benchmark (lab, {args.concurrency} concurrent clients, {args.seconds:.0f} s each "
              f"in {args.rounds} alternating slices)")
        print(f"load average (1, 5, 15 min): at start {_load(load_at_start)}, at end {_load(os.getloadavg())}; "
              f"{os.cpu_count()} CPUs")
        report("New TLS connections per second", [
            row for kind in KINDS for row in (
                (f"{KIND_LABELS[kind]}: schoolgate", _rate(sg[kind])),
                (f"{KIND_LABELS[kind]}: squid", _rate(sq[kind])),
                ("  ratio schoolgate/squid", f"{_ratio(sg[kind], sq[kind]):8.2f}"),
            )
        ])
        per_connection = {key: cpu[key] / max(1, totals[key].done) * 1e6 for key in cpu}
        report(f"Proxy CPU time per connection (µs, user + system, its {len(pids['schoolgate'])} "
               "processes: workers and event writing)", [
            row for kind in KINDS for row in (
                (f"{KIND_LABELS[kind]}: schoolgate", f"{per_connection[('schoolgate', kind)]:8.0f}"),
                (f"{KIND_LABELS[kind]}: squid", f"{per_connection[('squid', kind)]:8.0f}"),
                ("  ratio squid/schoolgate", f"{_cost_ratio(per_connection, kind):8.2f}"),
            )
        ])
        report(f"schoolgate's CPU time per connection by process (µs; {' / '.join(KINDS)})", [
            (name if measured.threads is None else f"{name}: its {measured.threads} threads",
             " / ".join(f"{by_process[(name, kind)] / max(1, totals[('schoolgate', kind)].done) * 1e6:.0f}"
                        for kind in KINDS))
            for name, measured in processes.items()
        ] + [
            (f"  of which in the kernel (system time){': ' + engine if engine == 'squid' else ''}",
             " / ".join(f"{in_kernel[(engine, kind)] / max(1, totals[(engine, kind)].done) * 1e6:.0f}"
                        for kind in KINDS))
            for engine in engines
        ])
        report("schoolgate's front doors (all loads, warm-up included)", [
            ("connections accepted", f"{sum(f.get('accepted', 0) for f in front_doors):8d}"),
            ("  judged in the accept callback (hello already in)",
             f"{sum(f.get('judged_at_accept', 0) for f in front_doors):8d}"),
            ("  killed / spliced / handed to mitmproxy",
             " / ".join(f"{sum(f.get(key, 0) for f in front_doors)}" for key in ("killed", "spliced", "handed_over"))),
            ("  killed at the door: judged there / from this minute's memory",
             " / ".join(f"{sum(f.get(key, 0) for f in front_doors)}"
                        for key in ("killed_judged_at_door", "killed_from_memory"))),
            ("  spliced at the door (judged there, no hooks)",
             f"{sum(f.get('passed_at_door', 0) for f in front_doors):8d}"),
            ("workers whose splices share the loop's one wait",
             f"{sum(f.get('splices_in_loop_wait', 0) for f in front_doors):8d} of {len(front_doors)}"),
            ("identity: answered on the loop / waited for a lookup",
             " / ".join(f"{sum(w.get(key, 0) for w in worker_stats)}"
                        for key in ("identity_cache_hits", "identity_cache_misses"))),
            ("  lookups off the loop (of which renewals ahead / shared)",
             f"{sum(w.get('identity_lookups', 0) for w in worker_stats):8d} ("
             + " / ".join(f"{sum(w.get(key, 0) for w in worker_stats)}"
                          for key in ("identity_refreshes", "identity_lookups_shared")) + ")"),
        ])
        report(f"schoolgate after each load, until idle: its processes' CPU per connection of that load (µs; "
               f"{' / '.join(KINDS)})", [
            ("writing and scanning the load's events (all processes)",
             " / ".join(f"{afterwards[('schoolgate', kind)] / max(1, totals[('schoolgate', kind)].done) * 1e6:.0f}"
                        for kind in KINDS)),
        ] + [
            (f"every schoolgate process during the {engine} slices",
             " / ".join(f"{during[(engine, kind)] / max(1, totals[(engine, kind)].done) * 1e6:.0f}" for kind in KINDS))
            for engine in engines
        ])
        report(f"The rest of the machine meanwhile ({' / '.join(KINDS)})", [
            (f"lab web server's CPU per connection (µs): {engine}",
             " / ".join(f"{origin_cpu[(engine, kind)] / max(1, totals[(engine, kind)].done) * 1e6:.0f}"
                        for kind in KINDS))
            for engine in engines
        ] + [
            (f"machine busy (all {os.cpu_count()} CPUs): {engine}",
             " / ".join(f"{busy[(engine, kind)][0] / max(1e-9, busy[(engine, kind)][1]):.0%}"
                        for kind in KINDS))
            for engine in engines
        ])
        report("Connections per CPU-second of the proxy process (higher is leaner)", [
            (f"{kind}: schoolgate / squid",
             f"{1e6 / per_connection[('schoolgate', kind)]:8.0f} / {1e6 / per_connection[('squid', kind)]:.0f}"
             if per_connection[("schoolgate", kind)] and per_connection[("squid", kind)] else "n/a")
            for kind in KINDS
        ])
        # What the proxy adds to one connection: its handshake less the direct one taken just
        # before it (the machine's load at that moment falls on both), over all rounds.
        paired = {e: [p - d for p, d in zip(latency[e], direct[e], strict=True)] for e in engines}
        added, added_squid = statistics.median(paired["schoolgate"]), statistics.median(paired["squid"])
        added_p99, added_p99_squid = _quantile(paired["schoolgate"], 0.99), _quantile(paired["squid"], 0.99)
        print("\nThe issue's table (this run; goals: rate ratio >= 1.0, CPU <= 2x Squid's, added setup <= 1 ms)")
        print("  | | schoolgate | Squid | rate ratio | CPU ratio |")
        print("  |---|---|---|---|---|")
        for kind, label in TABLE_LABELS.items():
            ours, theirs = totals[("schoolgate", kind)], totals[("squid", kind)]
            cost, cost_squid = per_connection[("schoolgate", kind)], per_connection[("squid", kind)]
            print(f"  | {label} | {ours.per_second:,.0f}/s, {cost:,.0f} µs CPU each "
                  f"| {theirs.per_second:,.0f}/s, {cost_squid:,.0f} µs | {_ratio(ours, theirs):.2f} "
                  f"| {cost / cost_squid if cost_squid else float('nan'):.2f}x |")
        print(f"  | Proxy, setup latency added (median) | {added:.2f} ms | {added_squid:.2f} ms | | |")
        print(f"  | Proxy, setup latency added (p99) | {added_p99:.2f} ms | {added_p99_squid:.2f} ms | | |")
        report(f"Connection setup, TCP + TLS handshake (ms, {len(via_proxy)} sequential each, taken in turn with "
               "a direct one)", [
            ("direct, beside schoolgate's (unwatched site, kernel-forwarded)", _dist(direct["schoolgate"])),
            ("through schoolgate proxy (passthrough)", _dist(via_proxy)),
            ("direct, beside squid's", _dist(direct["squid"])),
            ("through squid (splice)", _dist(via_squid)),
            ("added by schoolgate (each less its direct one: median / p99)", f"{added:8.2f} / {added_p99:.2f}"),
            ("added by squid (each less its direct one: median / p99)", f"{added_squid:8.2f} / {added_p99_squid:.2f}"),
            ("difference of the medians: schoolgate / squid",
             f"{statistics.median(via_proxy) - statistics.median(direct['schoolgate']):8.2f} / "
             f"{statistics.median(via_squid) - statistics.median(direct['squid']):.2f}"),
            ("handshakes that failed (not timed)",
             ", ".join(f"{host}: {n}" for host, n in LATENCY_FAILURES.items()) or "none"),
        ])
        report(f"Unwatched HTTP download, {args.download_mb} MB, median of {args.download_runs} alternating (MB/s)", [
            ("with schoolgate running", f"{with_schoolgate:8.1f}"),
            ("bare NAT gateway (daemons idle)", f"{without:8.1f}"),
            ("  ratio", f"{with_schoolgate / without:8.2f}"),
            ("bare NAT gateway, daemons stopped (1 run)", f"{no_daemons:8.1f}"),
        ])
        return 0
    finally:
        if squid_pid is not None:
            netns.stop_process(*squid_pid)
        lab.down()
        shutil.rmtree(state_root, ignore_errors=True)
        if squid_folder is not None:
            shutil.rmtree(squid_folder, ignore_errors=True)


def _py_spy() -> str | None:
    """py-spy beside this interpreter (the venv's) or on the PATH; None if neither has it."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _start_profile(folder: Path | None, pid: int, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling `pid` (with its native threads' Python frames) until `_stop_profile`;
    one collapsed-stack file per slice: `<name>-<n>.txt` (flamegraph.pl or speedscope read it)."""
    if folder is None:
        return None
    spy = _py_spy()
    assert spy is not None  # main() checked before the lab was built
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}-{len(list(folder.glob(name + '-*.txt')))}.txt"
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                             "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profile(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait()


def _worker_stats(data_dir: Path, workers: int) -> list[dict[str, Any]]:
    """Each worker's stats file (written every second)."""
    import json

    names = ["proxy-stats.json"] if workers <= 1 else [f"proxy-stats.{n}.json" for n in range(1, workers + 1)]
    found = []
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            found.append(json.loads((data_dir / name).read_text()))
    return found


def _load(averages: tuple[float, float, float]) -> str:
    return " ".join(f"{a:.2f}" for a in averages)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _rate(rate: Rate) -> str:
    busy = rate.client_cpu / rate.seconds if rate.seconds else 0.0
    count = max(1, rate.done + rate.failed)
    return (f"{rate.per_second:8.1f}/s  ({rate.done} ok, {rate.failed} not as expected; load generator "
            f"{busy:4.0%} busy, {rate.client_cpu / count * 1e6:.0f} µs CPU each, "
            f"{rate.client_system / count * 1e6:.0f} in the kernel)")


def _ratio(ours: Rate, theirs: Rate) -> float:
    return ours.per_second / theirs.per_second if theirs.per_second else float("nan")


def _cost_ratio(per_connection: dict[tuple[str, str], float], kind: str) -> float:
    ours = per_connection[("schoolgate", kind)]
    return per_connection[("squid", kind)] / ours if ours else float("nan")


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


def _dist(samples: list[float]) -> str:
    return (f"median {statistics.median(samples):6.2f}  p95 {_quantile(samples, 0.95):6.2f}"
            f"  p99 {_quantile(samples, 0.99):6.2f}")


if __name__ == "__main__":
    sys.exit(main())
