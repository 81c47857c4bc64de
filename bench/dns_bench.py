"""Benchmark: schoolgate's DNS resolver against dnsmasq, same blocklist, same upstream, same loads.

Run through `bench/dns`. Builds a 1,000,000-domain blocklist (the StevenBlack list plus generated
names), gives it to both servers (a policy list for schoolgate, a hosts file for dnsmasq), starts
a local upstream, and runs three query mixes with dnsperf against each:

  blocked  every query for a listed name
  cached   every query for an allowed name already in the cache
  mixed    20% listed names, 80% allowed names with Zipf repetition (first sights go upstream)

and each mix again at a fixed 2,000 QPS (dnsperf -Q 2000) for latency percentiles (the mixed
load's misses include the upstream's own latency). It prints QPS,
mean and p99 latency, lost queries, RSS and start-up time for each server, and schoolgate/dnsmasq.
schoolgate runs with its per-client policy (pupil network) and event logging to SQLite on.
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "dns"))

from authority import Authority  # noqa: E402

# The shared reference data beside the checkout (../shared/), or where SCHOOLGATE_SHARED says.
SHARED = Path(os.environ.get("SCHOOLGATE_SHARED") or REPO.parent / "shared")
STEVENBLACK = SHARED / "data" / "stevenblack_domains.txt"
LIST_SIZE = 1_000_000
ALLOWED_NAMES = 100_000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_tools() -> None:
    missing = [p for p, tool in (("dnsperf", "dnsperf"), ("dnsmasq-base", "dnsmasq")) if not shutil.which(tool)
               and not Path(f"/usr/sbin/{tool}").exists()]
    if missing:
        # dnsmasq-base is the program without the Debian service, so nothing starts on port 53.
        log(f"installing {' '.join(missing)}")
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)


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


@dataclass
class Result:
    qps: float = 0.0
    mean_ms: float = 0.0
    p99_ms: float = 0.0
    lost: int = 0
    sent: int = 0


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    startup_s: float = 0.0
    rss_mb: float = 0.0
    pss_mb: float = 0.0
    results: dict[str, Result] = field(default_factory=dict)


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


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            pids.extend(process_tree(int(child)))
    return pids


def memory_mb(pid: int) -> tuple[float, float]:
    rss = pss = 0
    for p in process_tree(pid):
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def dnsperf(port: int, queries: Path, seconds: int, *, clients: int = 20, outstanding: int = 200,
            max_qps: int | None = None, verbose: bool = False) -> Result:
    args = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds),
            "-c", str(clients), "-q", str(outstanding), "-t", "2"]
    if max_qps:
        args += ["-Q", str(max_qps)]
    if verbose:
        args += ["-v"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30).stdout
    result = Result()
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
        elif stripped.startswith("Queries lost:"):
            result.lost = int(stripped.split(":")[1].split()[0])
        elif stripped.startswith("Average Latency (s):"):
            result.mean_ms = float(stripped.split(":")[1].split()[0]) * 1000
    if latencies:
        latencies.sort()
        result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
        result.mean_ms = statistics.fmean(latencies) * 1000
    return result


def start_schoolgate(workdir: Path, config: Path, upstream: str, workers: int) -> Server:
    from schoolgate.store.db import init_db

    (workdir / "var").mkdir(exist_ok=True)
    init_db(f"sqlite:///{workdir / 'var' / 'schoolgate.db'}")
    port = free_port()
    exe = Path(sys.executable).with_name("schoolgate")
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(exe), "dns", "--config", str(config), "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
         "--workers", str(workers)],
        cwd=workdir, stderr=(workdir / "schoolgate-dns.log").open("wb"),
        env={**os.environ, "SCHOOLGATE_LOG_LEVEL": "WARNING"},
    )
    wait_until_answering(port, "schoolgate.lan", 60, proc)
    server = Server("schoolgate", proc, port, startup_s=time.monotonic() - started)
    if workers > 1:
        # Every worker must be up (the first answer may come from the first one ready).
        deadline = time.monotonic() + 60
        while len(process_tree(proc.pid)) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(50):
            wait_until_answering(port, "schoolgate.lan", 60, proc)
        server.startup_s = time.monotonic() - started
    return server


def start_dnsmasq(workdir: Path, upstream_port: int) -> Server:
    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--port={port}",
         "--listen-address=127.0.0.1", "--bind-interfaces", f"--server=127.0.0.1#{upstream_port}",
         f"--addn-hosts={workdir / 'blocklist.hosts'}", "--cache-size=10000", "--user=root",
         "--pid-file=", "--log-facility=-", "--dns-forward-max=1000"],
        stdout=subprocess.DEVNULL, stderr=(workdir / "dnsmasq.log").open("wb"),
    )
    wait_until_answering(port, "site0.allowed-example.org", 60, proc)
    return Server("dnsmasq", proc, port, startup_s=time.monotonic() - started)


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


def run_loads(server: Server, files: dict[str, Path], seconds: int) -> None:
    log(f"  {server.name}: warming the cache")
    dnsperf(server.port, files["cached_warm"], 5, clients=4, outstanding=20)
    for mix in ("blocked", "cached", "mixed"):
        log(f"  {server.name}: {mix} at full speed for {seconds} s")
        server.results[mix] = dnsperf(server.port, files[mix], seconds, verbose=True)
    for mix in ("blocked", "cached", "mixed"):
        log(f"  {server.name}: {mix} at 2,000 QPS for {seconds} s")
        server.results[f"{mix}@2000"] = dnsperf(server.port, files[mix], seconds, clients=10, max_qps=2000,
                                                verbose=True)
    server.rss_mb, server.pss_mb = memory_mb(server.proc.pid)


def report(servers: list[Server]) -> None:
    by = {s.name: s for s in servers}
    print()
    print(f"{'load':<12} {'server':<11} {'QPS':>9} {'mean ms':>8} {'p99 ms':>8} {'lost':>7} {'sent':>8}")
    for mix in ("blocked", "cached", "mixed", "blocked@2000", "cached@2000", "mixed@2000"):
        for s in servers:
            r = s.results[mix]
            p99 = f"{r.p99_ms:8.2f}" if r.p99_ms else f"{'-':>8}"
            print(f"{mix:<12} {s.name:<11} {r.qps:9.0f} {r.mean_ms:8.3f} {p99} {r.lost:7d} {r.sent:8d}")
        if "schoolgate" in by and "dnsmasq" in by and by["dnsmasq"].results[mix].qps:
            ratio = by["schoolgate"].results[mix].qps / by["dnsmasq"].results[mix].qps
            print(f"{'':<12} {'ratio':<11} {ratio:9.2f}  (schoolgate/dnsmasq QPS)")
    print()
    for s in servers:
        print(f"{s.name:<11} start-up {s.startup_s:6.2f} s   RSS {s.rss_mb:7.1f} MB   PSS {s.pss_mb:7.1f} MB"
              f"   (all processes)")
    print(json.dumps({s.name: {"startup_s": round(s.startup_s, 3), "rss_mb": round(s.rss_mb, 1),
                               "pss_mb": round(s.pss_mb, 1),
                               **{m: r.__dict__ for m, r in s.results.items()}} for s in servers}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each dnsperf run")
    parser.add_argument("--workers", type=int, default=2, help="schoolgate worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="schoolgate-bench-dns-"))
    log(f"work folder {workdir}")
    blocked = build_blocklist(workdir)
    log(f"blocklist: {len(blocked):,} names")
    config = write_schoolgate_config(workdir)
    files = write_queries(workdir, blocked)
    upstream = Authority(synthetic=True).start()
    servers: list[Server] = []
    try:
        for start in (lambda: start_dnsmasq(workdir, upstream.port),
                      lambda: start_schoolgate(workdir, config, upstream.address, args.workers)):
            server = start()
            log(f"{server.name} answering after {server.startup_s:.2f} s")
            servers.append(server)
            try:
                run_loads(server, files, args.seconds)
            finally:
                stop(server)
        report(servers)
    finally:
        for server in servers:
            stop(server)
        upstream.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
