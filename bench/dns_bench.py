"""Benchmark: schoolgate's DNS resolver against dnsmasq, same blocklist, same upstream, same loads.

Run through `bench/dns`. Builds a 1,000,000-domain blocklist (the StevenBlack list from the
shared reference data, `../shared/data/` beside the checkout or `$SCHOOLGATE_SHARED/data/`,
plus generated names), gives it to both servers (a policy list for schoolgate, a hosts file for
dnsmasq), and runs three query mixes with dnsperf against each:

  blocked  every query for a listed name, each one new to the policy (200,000 names in turn):
           the policy's first decision of a name, every time
  cached   every query for an allowed name already in the cache
  mixed    20% listed names, 80% allowed names with Zipf repetition (first sights go upstream)

and, with --mixes blocked-hot (not run by default),

  blocked-hot  every query for one of 500 listed names, as a school's devices ask the same
               trackers again and again: the decision remembered for the client and name

at full speed, and again at a fixed 2,000 QPS (dnsperf -Q 2000) for latency percentiles.

The upstream of both servers is a second dnsmasq that answers every name itself (an A record,
TTL 3600): a fast upstream, so that the mixed load measures the servers, not the upstream.

For every run it reads the CPU time (user + system, every thread) of every process of each
server from /proc before and after, and prints queries per second, queries per CPU-second
(answered queries / CPU seconds of the server's processes: the figure least moved by a busy
machine), CPU microseconds per query, mean and p99 latency, lost queries, and for schoolgate
each process's share (its serving workers, the process writing their events, and the one
supervising them), with the ratio of the workers' own queries per CPU-second to dnsmasq's,
and the kernel's share of the CPU per query (system time: receiving, sending, waking up) for
dnsmasq and for schoolgate's workers, which no leaner Python path can save.
Memory: RSS and PSS of every process of each server after the loads, and their sums. With
--runs N everything is measured N times, the servers alternating, and printed as ranges
(min-max) with the median. schoolgate runs with its per-client policy (pupil network) and
event logging to SQLite on; dnsmasq logs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from schoolgate.lab.packages import ensure_programs

REPO = Path(__file__).resolve().parent.parent
# The shared reference data beside the checkout (../shared/), or where SCHOOLGATE_SHARED says.
SHARED = Path(os.environ.get("SCHOOLGATE_SHARED") or REPO.parent / "shared")
STEVENBLACK = SHARED / "data" / "stevenblack_domains.txt"
LIST_SIZE = 1_000_000
ALLOWED_NAMES = 100_000
UPSTREAM_ANSWER = "198.51.100.7"
FIXED_QPS = 2000
MIXES = ("blocked", "cached", "mixed")
OTHER_MIXES = ("blocked-hot",)
LOADS = (*MIXES, *(f"{m}@{FIXED_QPS}" for m in MIXES))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_tools() -> None:
    # dnsmasq-base is the program without the Debian service, so nothing starts on port 53.
    missing = ensure_programs({"dnsperf": "dnsperf", "dnsmasq": "dnsmasq-base"})
    if missing:
        raise SystemExit(f"cannot run without {', '.join(missing)}")


def free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def build_blocklist(workdir: Path) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    if STEVENBLACK.exists():
        for line in STEVENBLACK.read_text(encoding="utf-8").splitlines():
            name = line.strip().lower()
            if name and not name.startswith("#") and name not in seen:
                seen.add(name)
                names.append(name)
    else:
        log(f"{STEVENBLACK} not found (set SCHOOLGATE_SHARED): the list is all generated names")
    rng = random.Random(1)
    words = ["ads", "track", "metric", "pixel", "banner", "stat", "beacon", "click", "promo", "adserv"]
    tlds = ["com", "net", "org", "io", "info", "biz"]
    i = 0
    while len(names) < LIST_SIZE:
        name = f"{rng.choice(words)}{i}.{rng.choice(words)}-{i % 9973}.{rng.choice(tlds)}"
        i += 1
        if name not in seen:
            seen.add(name)
            names.append(name)
    (workdir / "blocklist.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (workdir / "blocklist.hosts").write_text("".join(f"0.0.0.0 {n}\n" for n in names), encoding="utf-8")
    return names


def write_schoolgate_config(workdir: Path) -> Path:
    example = (REPO / "deploy" / "policy.example.toml").read_text(encoding="utf-8")
    shutil.copytree(REPO / "deploy" / "lists", workdir / "lists", dirs_exist_ok=True)
    policy = example + f"""

# --- added by bench/dns: the benchmark's million-name blocklist and a loopback pupil network
[categories.bench_adverts]
name = "Advertising and tracking (benchmark list)"

[lists.bench_blocklist]
name = "Benchmark blocklist"
file = "{workdir / 'blocklist.txt'}"
format = "plain"
category = "bench_adverts"

[[rules]]
id = "bench-blocklist"
clause = "Online Safety Policy (filtering)"
reason = "advertising and tracking"
action = "block"
lists = ["bench_blocklist"]

[[networks]]
name = "benchmark clients"
cidrs = ["127.0.0.0/8"]
role = "pupil"
"""
    (workdir / "policy.toml").write_text(policy, encoding="utf-8")
    config = workdir / "schoolgate.toml"
    config.write_text(
        'policy = "policy.toml"\ndata_dir = "var"\n\n[site]\nid = "kingswood"\n\n'
        "[dns]\nupstream_timeout_ms = 1500\ncache_size = 50000\n",
        encoding="utf-8",
    )
    return config


def write_queries(workdir: Path, blocked: list[str]) -> dict[str, Path]:
    rng = random.Random(2)
    allowed = [f"site{i}.allowed-example.org" for i in range(ALLOWED_NAMES)]
    files = {}
    sample = rng.sample(blocked, 200_000)
    files["blocked"] = workdir / "q_blocked.txt"
    files["blocked"].write_text("".join(f"{n} A\n" for n in sample))
    trackers, pick = sample[:500], random.Random(3)  # a generator of its own: the other files stay as they were
    files["blocked-hot"] = workdir / "q_blocked_hot.txt"
    files["blocked-hot"].write_text("".join(f"{pick.choice(trackers)} A\n" for _ in range(200_000)))
    hot = allowed[:2000]
    files["cached_warm"] = workdir / "q_cached_warm.txt"
    files["cached_warm"].write_text("".join(f"{n} A\n" for n in hot))
    files["cached"] = workdir / "q_cached.txt"
    files["cached"].write_text("".join(f"{rng.choice(hot)} A\n" for _ in range(200_000)))
    # Zipf over the allowed names: rank r is asked with weight 1/r^1.1.
    weights = [1 / (r ** 1.1) for r in range(1, ALLOWED_NAMES + 1)]
    zipf = rng.choices(allowed, weights=weights, k=400_000)
    lines = []
    for name in zipf:
        lines.append(f"{rng.choice(blocked)} A\n" if rng.random() < 0.2 else f"{name} A\n")
    files["mixed"] = workdir / "q_mixed.txt"
    files["mixed"].write_text("".join(lines))
    return files


# -- processes: their tree, CPU time and memory, from /proc


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        with contextlib.suppress(FileNotFoundError):
            for child in (task / "children").read_text().split():
                pids.extend(process_tree(int(child)))
    return pids


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return "?"


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process, all its threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_by_process(root: int) -> dict[int, tuple[float, float]]:
    return {pid: cpu_times(pid) for pid in process_tree(root)}


def memory_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


@dataclass
class Result:
    qps: float = 0.0
    mean_ms: float = 0.0
    p99_ms: float = 0.0
    lost: int = 0
    sent: int = 0
    completed: int = 0
    cpu_s: float = 0.0  # the server's processes, all of them
    cpu_by_role: dict[str, float] = field(default_factory=dict)  # schoolgate: worker / control
    # The kernel's share of it (system time: receiving and sending datagrams, waking up), by role.
    system_by_role: dict[str, float] = field(default_factory=dict)

    @property
    def per_cpu_second(self) -> float:
        return self.completed / self.cpu_s if self.cpu_s else 0.0

    @property
    def cpu_us_per_query(self) -> float:
        return self.cpu_s / self.completed * 1e6 if self.completed else 0.0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float = 0.0
    memory: list[tuple[str, int, int, int]] = field(default_factory=list)  # (name, pid, rss kB, pss kB)
    results: dict[str, Result] = field(default_factory=dict)
    roles: Callable[[int], str] = lambda pid: "all"

    @property
    def rss_mb(self) -> float:
        return sum(m[2] for m in self.memory) / 1024

    @property
    def pss_mb(self) -> float:
        return sum(m[3] for m in self.memory) / 1024


def wait_until_answering(port: int, name: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    import dns.message
    import dns.query

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.2)
            return
        except Exception:
            time.sleep(0.02)
    raise RuntimeError("server did not answer in time")


def dnsperf(server: Server, queries: Path, seconds: int, *, clients: int = 20, outstanding: int = 200,
            max_qps: int | None = None, verbose: bool = False) -> Result:
    args = ["dnsperf", "-s", "127.0.0.1", "-p", str(server.port), "-d", str(queries), "-l", str(seconds),
            "-c", str(clients), "-q", str(outstanding), "-t", "2"]
    if max_qps:
        args += ["-Q", str(max_qps)]
    if verbose:
        args += ["-v"]
    before = cpu_by_process(server.proc.pid)
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
    after = cpu_by_process(server.proc.pid)
    result = Result()
    for pid, (user, system) in after.items():
        user_before, system_before = before.get(pid, (0.0, 0.0))
        used = user - user_before + system - system_before
        result.cpu_s += used
        role = server.roles(pid)
        result.cpu_by_role[role] = result.cpu_by_role.get(role, 0.0) + used
        result.system_by_role[role] = result.system_by_role.get(role, 0.0) + system - system_before
    latencies = []
    for line in out.splitlines():
        stripped = line.strip()
        if verbose and line.startswith("> "):
            parts = line.split()
            with contextlib.suppress(ValueError):
                latencies.append(float(parts[-1]))
        elif stripped.startswith("Queries per second:"):
            result.qps = float(stripped.split(":")[1])
        elif stripped.startswith("Queries sent:"):
            result.sent = int(stripped.split(":")[1])
        elif stripped.startswith("Queries completed:"):
            result.completed = int(stripped.split(":")[1].split()[0])
        elif stripped.startswith("Queries lost:"):
            result.lost = int(stripped.split(":")[1].split()[0])
        elif stripped.startswith("Average Latency (s):"):
            result.mean_ms = float(stripped.split(":")[1].split()[0]) * 1000
    if latencies:
        latencies.sort()
        result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        result.mean_ms = statistics.fmean(latencies) * 1000
    return result


def start_upstream(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A dnsmasq that answers every A query itself: the fast upstream of both servers."""
    port = free_port()
    proc = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", f"--address=/#/{UPSTREAM_ANSWER}",
         "--local-ttl=3600", "--cache-size=0", "--user=root", "--pid-file=", "--log-facility=-",
         "--dns-forward-max=1000"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "upstream.log").open("wb"),
    )
    wait_until_answering(port, "upstream.check.example", 30, proc)
    return proc, port


def start_schoolgate(workdir: Path, config: Path, upstream_port: int, workers: int) -> Server:
    from schoolgate.store.db import init_db

    (workdir / "var").mkdir(exist_ok=True)
    init_db(f"sqlite:///{workdir / 'var' / 'schoolgate.db'}").dispose()
    port = free_port()
    exe = Path(sys.executable).with_name("schoolgate")
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(exe), "dns", "--config", str(config), "--listen", f"127.0.0.1:{port}",
         "--upstream", f"127.0.0.1:{upstream_port}", "--workers", str(workers)],
        cwd=workdir, stderr=(workdir / "schoolgate-dns.log").open("ab"),
        env={**os.environ, "SCHOOLGATE_LOG_LEVEL": "WARNING"},
    )
    server = Server("schoolgate", proc, port)
    wait_until_answering(port, "schoolgate.lan", 120, proc)
    # Every worker must be up (the first answer may come from the first one ready): the daemon
    # is a supervising process, its workers and the process that writes their events; with one
    # worker, the daemon's own process is the worker.
    expected = workers + 2 if workers > 1 else 2
    deadline = time.monotonic() + 60
    while len(process_tree(proc.pid)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    for _ in range(50):
        wait_until_answering(port, "schoolgate.lan", 60, proc)
    server.startup_s = time.monotonic() - started
    from schoolgate.dns.daemon import WRITER_PROCESS_NAME

    def role(pid: int) -> str:
        if pid == proc.pid and workers > 1:
            return "supervisor"
        return "event writer" if process_name(pid) == WRITER_PROCESS_NAME else "workers"

    server.roles = role
    return server


def start_dnsmasq(workdir: Path, upstream_port: int) -> Server:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", f"--server=127.0.0.1#{upstream_port}",
         f"--addn-hosts={workdir / 'blocklist.hosts'}", "--cache-size=10000", "--user=root",
         "--pid-file=", "--log-facility=-", "--dns-forward-max=1000"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "dnsmasq.log").open("ab"),
    )
    wait_until_answering(port, "site0.allowed-example.org", 120, proc)
    return Server("dnsmasq", proc, port, startup_s=time.monotonic() - started)


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


def run_loads(server: Server, files: dict[str, Path], seconds: int, profile: Callable[[str], object],
              mixes: tuple[str, ...] = MIXES) -> None:
    log(f"  {server.name}: warming the cache")
    dnsperf(server, files["cached_warm"], 5, clients=4, outstanding=20)
    for mix in mixes:
        log(f"  {server.name}: {mix} at full speed for {seconds} s")
        with profile(mix):  # type: ignore[attr-defined]
            server.results[mix] = dnsperf(server, files[mix], seconds, verbose=True)
    for mix in mixes:
        log(f"  {server.name}: {mix} at {FIXED_QPS:,} QPS for {seconds} s")
        server.results[f"{mix}@{FIXED_QPS}"] = dnsperf(server, files[mix], seconds, clients=10, max_qps=FIXED_QPS,
                                                       verbose=True)
    server.memory = [(process_name(pid), pid, *memory_kb(pid)) for pid in process_tree(server.proc.pid)]


class Profiler:
    """py-spy over every process of the server while one load runs (--profile FOLDER)."""

    def __init__(self, folder: Path | None, server: Server, run: int) -> None:
        self.folder, self.server, self.run = folder, server, run
        self.procs: list[subprocess.Popen[bytes]] = []
        self.mix = ""

    def __call__(self, mix: str) -> Profiler:
        self.mix = mix
        return self

    def __enter__(self) -> Profiler:
        if self.folder is None or self.server.name != "schoolgate":
            return self
        spy = Path(sys.executable).with_name("py-spy")
        for pid in process_tree(self.server.proc.pid):
            out = self.folder / f"{self.mix}-run{self.run}-{pid}"
            self.procs.append(subprocess.Popen(
                [str(spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--output",
                 f"{out}.txt", "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()


def _span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    low, high, mid = min(values), max(values), statistics.median(values)
    if len(values) == 1:
        return format(mid, fmt)
    return f"{format(mid, fmt)} ({format(low, fmt)}-{format(high, fmt)})"


def report(runs: list[dict[str, Server]], workers: int, loads: tuple[str, ...] = LOADS) -> dict[str, object]:
    names = [name for name in ("dnsmasq", "schoolgate") if any(name in run for run in runs)]
    both = [run for run in runs if "dnsmasq" in run and "schoolgate" in run]

    def values(name: str, load: str, attr: str) -> list[float]:
        return [float(getattr(run[name].results[load], attr)) for run in runs if name in run]

    print()
    print(f"{len(runs)} run(s); median (min-max). schoolgate: {workers} worker(s); dnsmasq: one process. "
          "q/CPU-s: answered queries per CPU-second of the server's processes.")
    header = f"{'load':<14} {'server':<11} {'QPS':>24} {'q/CPU-s':>24} {'CPU us/q':>18} {'p99 ms':>20} {'lost':>9}"
    print(header)
    summary: dict[str, object] = {}
    for load in loads:
        for name in names:
            print(f"{load:<14} {name:<11} {_span(values(name, load, 'qps'), ',.0f'):>24} "
                  f"{_span(values(name, load, 'per_cpu_second'), ',.0f'):>24} "
                  f"{_span(values(name, load, 'cpu_us_per_query'), '.1f'):>18} "
                  f"{_span(values(name, load, 'p99_ms'), '.2f'):>20} {_span(values(name, load, 'lost'), '.0f'):>9}")
        qps_ratio = [run["schoolgate"].results[load].qps / run["dnsmasq"].results[load].qps
                     for run in both if run["dnsmasq"].results[load].qps]
        cpu_ratio = [run["schoolgate"].results[load].per_cpu_second / run["dnsmasq"].results[load].per_cpu_second
                     for run in both if run["dnsmasq"].results[load].per_cpu_second]
        if both:
            print(f"{'':<14} {'ratio':<11} {_span(qps_ratio, '.2f'):>24} {_span(cpu_ratio, '.2f'):>24}"
                  "   (schoolgate/dnsmasq: QPS, and queries per CPU-second)")
        roles: dict[str, list[float]] = {}
        for run in runs:
            if "schoolgate" not in run:
                continue
            result = run["schoolgate"].results[load]
            for role, spent in result.cpu_by_role.items():
                roles.setdefault(role, []).append(spent / result.completed * 1e6 if result.completed else 0.0)
        if len(roles) > 1:
            print(f"{'':<14} {'':<11} schoolgate CPU us/q by process: "
                  + ", ".join(f"{role} {_span(v, '.1f')}" for role, v in sorted(roles.items())))
        # The workers alone (what answers; the writer's work is on another process): their
        # queries per CPU-second against dnsmasq's, per worker as the issue's goal reads.
        worker_ratio = [
            run["dnsmasq"].results[load].cpu_us_per_query
            / (run["schoolgate"].results[load].cpu_by_role["workers"] / run["schoolgate"].results[load].completed * 1e6)
            for run in both
            if run["schoolgate"].results[load].completed and run["schoolgate"].results[load].cpu_by_role.get("workers")
        ]
        if worker_ratio:
            print(f"{'':<14} {'ratio':<11} {'':>24} {_span(worker_ratio, '.2f'):>24}"
                  "   (schoolgate's workers alone/dnsmasq: queries per CPU-second)")
        # Of each CPU us/q, the kernel's (system time): what a leaner Python path cannot save.
        kernel = {
            label: [run[name].results[load].system_by_role.get(role, 0.0) / run[name].results[load].completed * 1e6
                    for run in runs if name in run and run[name].results[load].completed]
            for label, name, role in (("dnsmasq", "dnsmasq", "all"), ("schoolgate workers", "schoolgate", "workers"))
        }
        if any(kernel.values()):
            print(f"{'':<14} {'':<11} kernel (system) CPU us/q: "
                  + ", ".join(f"{label} {_span(v, '.1f')}" for label, v in kernel.items() if v))
        summary[load] = {"qps_ratio": qps_ratio, "cpu_ratio": cpu_ratio, "worker_cpu_ratio": worker_ratio}
    print()
    for name in names:
        servers = [run[name] for run in runs if name in run]
        print(f"{name:<11} start-up {_span([s.startup_s for s in servers], '.2f')} s   "
              f"RSS {_span([s.rss_mb for s in servers], '.1f')} MB   PSS {_span([s.pss_mb for s in servers], '.1f')} MB"
              "   (all processes, after the loads)")
        for pname, pid, rss, pss in servers[-1].memory:
            print(f"{'':<11}   {pname:<16} pid {pid:<8} RSS {rss / 1024:7.1f} MB   PSS {pss / 1024:7.1f} MB")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each dnsperf run")
    parser.add_argument("--workers", type=int, default=2, help="schoolgate worker processes")
    parser.add_argument("--runs", type=int, default=1, help="measure everything this many times (ranges)")
    parser.add_argument("--only", choices=("schoolgate", "dnsmasq"), help="measure one server only")
    parser.add_argument("--mixes", default=",".join(MIXES),
                        help=f"which mixes (default: {', '.join(MIXES)}; also {', '.join(OTHER_MIXES)})")
    parser.add_argument("--profile", type=Path, help="py-spy the schoolgate processes during the full-speed loads")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    mixes = tuple(m for m in args.mixes.split(",") if m)
    if not mixes or set(mixes) - set(MIXES) - set(OTHER_MIXES):
        parser.error(f"--mixes: choose from {', '.join(MIXES + OTHER_MIXES)}")
    loads = (*mixes, *(f"{m}@{FIXED_QPS}" for m in mixes))
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="schoolgate-bench-dns-"))
    log(f"work folder {workdir}; load average {os.getloadavg()}")
    blocked = build_blocklist(workdir)
    log(f"blocklist: {len(blocked):,} names")
    config = write_schoolgate_config(workdir)
    files = write_queries(workdir, blocked)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    upstream, upstream_port = start_upstream(workdir)
    runs: list[dict[str, Server]] = []
    live: list[Server] = []
    try:
        for run in range(args.runs):
            starters = {
                "dnsmasq": lambda: start_dnsmasq(workdir, upstream_port),
                "schoolgate": lambda: start_schoolgate(workdir, config, upstream_port, args.workers),
            }
            order = list(starters) if run % 2 == 0 else list(reversed(starters))
            measured: dict[str, Server] = {}
            for name in order:
                if args.only and name != args.only:
                    continue
                server = starters[name]()
                live.append(server)
                log(f"run {run + 1}: {server.name} answering after {server.startup_s:.2f} s")
                try:
                    run_loads(server, files, args.seconds, Profiler(args.profile, server, run + 1), mixes)
                finally:
                    stop(server)
                    live.remove(server)
                measured[name] = server
            runs.append(measured)
        summary = report(runs, args.workers, loads)
        print(json.dumps({"runs": [{name: {"startup_s": round(s.startup_s, 3), "rss_mb": round(s.rss_mb, 1),
                                           "pss_mb": round(s.pss_mb, 1),
                                           **{load: {**r.__dict__, "per_cpu_second": r.per_cpu_second}
                                              for load, r in s.results.items()}}
                                    for name, s in run.items()} for run in runs], "summary": summary}))
    finally:
        for server in live:
            stop(server)
        upstream.terminate()
        upstream.wait(10)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
