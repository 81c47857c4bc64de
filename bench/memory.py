"""The whole appliance's memory, idle, with the example policy: each process's PSS, and the sum.

    sudo .venv/bin/python -P bench/memory.py [--idle 20] [--separate] [--mappings 8] [--copied]

Builds a private lab (namespaces `sgm…`, its own SQLite database in a temporary folder) and runs
the appliance in it as `./deploy/dev.sh start` does: every daemon under one `schoolgate run`,
forked from its preloaded supervisor. Once every daemon reports ready (the lab's own start-up
checks: DNS, proxy and console listening, the scheduler and identity service reporting, net
watch bound to its NFLOG group) it lets the appliance sit idle and prints, for every process of
the appliance, its RSS, PSS (shared pages divided among the processes that map them: what adds
up to the machine's real use) and USS (pages only it holds), and the sums. The goal is a PSS sum
of at most 200 MB.

The console runs on demand (schoolgate.console.activation): the lab's start-up check is a
request, which wakes it. So the appliance is measured twice, both printed: first with the
console awake (it has just served that request, as after a technician's visit), then, once it
has gone back to sleep by itself after `[console] idle_minutes` (set here to cover the awake
measurement), with the console asleep: its socket held by the supervisor, no process.

In the same run, as the reference, dnsmasq (the example policy's local block lists as hosts
files, a cache of 10,000 names) and Squid (peek at the ClientHello, then terminate or splice by
server name: the proxy's job) are started in the lab's gateway and measured the same way.

`--separate` starts each daemon as its own Python process instead (`schoolgate run --no-preload`),
as systemd runs them on an appliance: nothing is shared between daemons but the page cache.
`--mappings N` also prints, for each process, the N mappings that hold most of its PSS (the
Python heap, anonymous arenas, each shared library): where the memory goes.

`--copied` also splits each forked daemon's private memory (heap and anonymous pages, read from
/proc/PID/pagemap) into pages copied from the supervisor after the fork (the supervisor has a
page at that address: the daemon wrote to a shared page, if only a reference count or CPython
3.11's specialising of a function's bytecode as it runs) and pages new since the fork, and the
supervisor's own into pages only it changed since (the daemons still share the original) and
pages every daemon copied. An approximation (the supervisor's pages are read now, not at the
fork), but it shows what cutting imports cannot: most of a forked daemon's memory is pages it
copied by running code it shares.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import struct
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from schoolgate.lab import netns
from schoolgate.lab.internet import RESOLVER_IP
from schoolgate.lab.lab import DEFAULT_CLOCK, DEFAULT_POLICY, Lab
from schoolgate.lab.packages import ensure_programs
from schoolgate.lab.squid import SQUID_TLS_PORT, write_squid_config
from schoolgate.lab.topology import private_prefix
from schoolgate.runner import ASLEEP

GOAL_MB = 200.0
DNSMASQ_PORT = 5454  # not 53 (schoolgate's) nor 5353 (the lab's)


@dataclass
class Memory:
    pid: int
    name: str
    rss_kb: int
    pss_kb: int
    uss_kb: int  # Private_Clean + Private_Dirty
    mappings: dict[str, int] = field(default_factory=dict)  # PSS kB by what is mapped


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    out = [pid]
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            out.extend(process_tree(int(child)))
    return out


def _process_name(pid: int) -> str:
    name = Path(f"/proc/{pid}/comm").read_text().strip()
    if name.startswith(("python", "schoolgate")):
        # A process started as `python -m schoolgate X`: name it by its subcommand.
        words = [w.decode(errors="replace") for w in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if w]
        if "schoolgate" in words:
            rest = words[words.index("schoolgate") + 1 :]
            name = "schoolgate " + " ".join(w for w in rest[:2] if not w.startswith("-"))
    return name


def pss_by_mapping(pid: int) -> dict[str, int]:
    """PSS kB of one process by mapping: a file's name, [heap], [stack], or [anon] for the rest."""
    found: dict[str, int] = defaultdict(int)
    current = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's header line
            current = os.path.basename(head[5].strip()) if len(head) == 6 and head[5].strip() else "[anon]"
        elif line.startswith("Pss:"):
            found[current] += int(line.split()[1])
    return dict(found)


def memory_of(pid: int, *, mappings: bool = False) -> Memory | None:
    """RSS, PSS and USS of one process, from smaps_rollup."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        name = _process_name(pid)
        by_mapping = pss_by_mapping(pid) if mappings else {}
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    return Memory(
        pid, name, values.get("Rss", 0), values.get("Pss", 0),
        values.get("Private_Clean", 0) + values.get("Private_Dirty", 0), by_mapping,
    )


PAGE = os.sysconf("SC_PAGE_SIZE")
PFN_MASK = (1 << 55) - 1


def present_pages(pid: int) -> dict[int, int]:
    """Address -> physical frame of each present page of `pid`'s heap and anonymous mappings
    (the frame numbers need root; they read as 0 otherwise)."""
    pages: dict[int, int] = {}
    with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split(None, 5)
            name = fields[5].strip() if len(fields) == 6 else ""
            if name not in ("", "[heap]"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            pagemap.seek(start // PAGE * 8)
            entries = pagemap.read((end - start) // PAGE * 8)
            for index, (entry,) in enumerate(struct.iter_unpack("Q", entries)):
                if entry >> 63:  # present in memory
                    pages[start + index * PAGE] = entry & PFN_MASK
    return pages


def copied_report(supervisor: int) -> None:
    """Each forked process's private pages: copied from the supervisor, or new since the fork."""
    tree = process_tree(supervisor)
    pages = {pid: present_pages(pid) for pid in tree}
    users: defaultdict[int, int] = defaultdict(int)  # frame -> processes of the tree mapping it
    for mapped in pages.values():
        for frame in mapped.values():
            users[frame] += 1
    ours = pages[supervisor]
    mb = PAGE / 2**20
    print("\nPrivate heap and anonymous memory, by where it came from (MB)")
    print(f"  {'process':28} {'pid':>7} {'copied':>8} {'new':>8}")
    for pid in tree[1:]:
        private = [address for address, frame in pages[pid].items() if users[frame] == 1]
        copied = sum(1 for address in private if address in ours)
        name = _process_name(pid)
        print(f"  {name:28} {pid:7d} {copied * mb:8.1f} {(len(private) - copied) * mb:8.1f}")
    others = [pages[pid] for pid in tree[1:]]
    own_change = every_copy = 0
    for address, frame in ours.items():
        if users[frame] != 1:
            continue
        theirs = [mapped[address] for mapped in others if address in mapped]
        if len(theirs) > len(set(theirs)):
            own_change += 1  # daemons still share the original: the supervisor wrote here
        else:
            every_copy += 1
    print(f"  supervisor: {own_change * mb:.1f} MB it changed since the fork (the daemons share the original), "
          f"{every_copy * mb:.1f} MB the daemons each copied or never had")


def measure(root_pids: list[int], *, mappings: bool = False) -> list[Memory]:
    found = [memory_of(pid, mappings=mappings) for root in root_pids for pid in process_tree(root)]
    return [m for m in found if m is not None]


def report(title: str, rows: list[Memory], *, goal: float | None = None, mappings: int = 0) -> float:
    print(f"\n{title}")
    print(f"  {'process':28} {'pid':>7} {'RSS MB':>8} {'PSS MB':>8} {'USS MB':>8}")
    for row in rows:
        rss, pss, uss = row.rss_kb / 1024, row.pss_kb / 1024, row.uss_kb / 1024
        print(f"  {row.name:28} {row.pid:7d} {rss:8.1f} {pss:8.1f} {uss:8.1f}")
        for mapped, kb in sorted(row.mappings.items(), key=lambda item: -item[1])[:mappings]:
            print(f"      {mapped[:44]:44} {kb / 1024:8.1f}")
    pss = sum(r.pss_kb for r in rows) / 1024
    print(f"  {'sum':28} {'':7} {sum(r.rss_kb for r in rows) / 1024:8.1f} {pss:8.1f} "
          f"{sum(r.uss_kb for r in rows) / 1024:8.1f}")
    if goal is not None:
        print(f"  PSS sum {pss:.1f} MB against the goal of {goal:.0f} MB: {'met' if pss <= goal else 'NOT met'}")
    return pss


class SeparateLab(Lab):
    """The lab with every daemon started as a new Python process, as systemd would."""

    def _supervisor_argv(self) -> list[str]:
        return [*super()._supervisor_argv(), "--no-preload"]


def blocklist_hosts(policy: Path, block_ip: str, target: Path) -> int:
    """The policy's local lists as one hosts file for dnsmasq: the same names, blocked alike."""
    from schoolgate.policy.loader import load_list_sources

    names: set[str] = set()
    for source in load_list_sources(policy):
        if source.file:  # a subscription has nothing local until `schoolgate lists update`
            for line in (policy.parent / source.file).read_text().splitlines():
                word = line.split("#", 1)[0].strip()
                if word and "/" not in word and not word[0].isdigit():
                    names.add(word)
    target.write_text("".join(f"{block_ip} {name}\n" for name in sorted(names)))
    return len(names)


def _listening(lab: Lab, port: int, kind: int) -> bool:
    def attempt() -> bool:
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((lab.appliance_ip, port))
            except OSError:
                return True  # taken: the server has bound it
            return False
    return bool(netns.call_in(lab.names.gateway, attempt))


def _free(lab: Lab, name: str, port: int, kind: int) -> None:
    if _listening(lab, port, kind):  # else "bound" below would not be the reference's doing
        raise RuntimeError(f"port {port} of {lab.appliance_ip} is taken: {name} cannot be measured")


def _wait_listening(lab: Lab, name: str, process: tuple[int, str | None], port: int, kind: int, log: Path) -> None:
    netns.wait_for(lambda: not netns.process_alive(*process) or _listening(lab, port, kind), timeout=30, what=name)
    if not netns.process_alive(*process):
        raise RuntimeError(f"{name} ended at start-up:\n{log.read_text()}")


def start_references(lab: Lab, folder: Path) -> dict[str, tuple[int, str | None]]:
    """dnsmasq and Squid in the lab's gateway, each waited for until it has bound its port."""
    started: dict[str, tuple[int, str | None]] = {}
    ensure_programs({"dnsmasq": "dnsmasq-base", "squid": "squid-openssl"})
    hosts = folder / "blocklist.hosts"
    blocklist_hosts(lab.policy.resolve(), lab.appliance_ip, hosts)
    if shutil.which("dnsmasq"):
        _free(lab, "dnsmasq", DNSMASQ_PORT, socket.SOCK_DGRAM)
        process = netns.spawn(lab.names.gateway, [
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--port={DNSMASQ_PORT}",
            f"--listen-address={lab.appliance_ip}", "--bind-interfaces", f"--server={RESOLVER_IP}",
            f"--addn-hosts={hosts}", "--cache-size=10000", "--user=root", "--pid-file=", "--log-facility=-",
        ], log_path=folder / "dnsmasq.log")
        started["dnsmasq"] = (process.pid, netns.process_start_time(process.pid))
        _wait_listening(lab, "dnsmasq", started["dnsmasq"], DNSMASQ_PORT, socket.SOCK_DGRAM, folder / "dnsmasq.log")
    else:
        print("dnsmasq is not installed (Debian: dnsmasq-base): no DNS reference", file=sys.stderr)
    if shutil.which("squid"):
        _free(lab, "squid", SQUID_TLS_PORT, socket.SOCK_STREAM)
        squid = folder / "squid"
        squid.mkdir()
        config = write_squid_config(squid, lab, lab.appliance_ip)
        process = netns.spawn(lab.names.gateway, ["squid", "-N", "-f", str(config)], log_path=folder / "squid.log")
        started["squid"] = (process.pid, netns.process_start_time(process.pid))
        _wait_listening(lab, "squid", started["squid"], SQUID_TLS_PORT, socket.SOCK_STREAM, folder / "squid.log")
    else:
        print("squid is not installed (Debian: squid-openssl): no proxy reference", file=sys.stderr)
    return started


def idle_samples(supervisor: int, idle: float, samples: int) -> tuple[list[Memory], list[float]]:
    """After `idle` seconds, `samples` measurements `idle`/2 apart: the last one's rows, and
    every one's PSS sum."""
    time.sleep(idle)
    sums: list[float] = []
    rows: list[Memory] = []
    for sample in range(max(1, samples)):
        if sample:
            time.sleep(idle / 2)
        rows = measure([supervisor])
        sums.append(sum(r.pss_kb for r in rows) / 1024)
    return rows, sums


def print_sums(sums: list[float]) -> None:
    print(f"  PSS sums over {len(sums)} samples: " + ", ".join(f"{s:.1f}" for s in sums) + " MB")


def console_state(lab: Lab) -> str:
    return str((lab.supervisor_state()["children"].get("console") or {}).get("state", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds idle before measuring")
    parser.add_argument("--samples", type=int, default=3, help="measurements, --idle/2 s apart; the last is shown")
    parser.add_argument("--separate", action="store_true", help="each daemon its own Python process (no preload)")
    parser.add_argument("--mappings", type=int, default=0, metavar="N",
                        help="also print each process's N largest mappings by PSS")
    parser.add_argument("--no-reference", action="store_true", help="measure schoolgate only")
    parser.add_argument("--copied", action="store_true",
                        help="also split each forked daemon's private memory into pages copied since the fork and new")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    # Long enough for the awake measurement: the console sleeps by itself only after it.
    awake_for_s = args.idle * (1 + (max(1, args.samples) - 1) / 2) + 15
    with tempfile.TemporaryDirectory(prefix="sg-memory-") as tmp:
        kind = SeparateLab if args.separate else Lab
        lab = kind(private_prefix("sgm", 0, os.getpid()), state_root=Path(tmp) / "state", policy=DEFAULT_POLICY,
                   console_idle_minutes=round(awake_for_s / 60, 3))
        lab.down()
        references: dict[str, tuple[int, str | None]] = {}
        try:
            lab.up(clock=DEFAULT_CLOCK)  # returns once every daemon reports ready
            if not args.no_reference:
                references = start_references(lab, Path(tmp))
            supervisor = int(lab.state.processes["appliance"]["pid"])
            how = "each daemon its own process" if args.separate else "forked from the preloaded supervisor"
            if console_state(lab) != "running":
                print(f"the console is not awake after start-up ({console_state(lab)!r})", file=sys.stderr)
            awake_rows, awake_sums = idle_samples(supervisor, args.idle, args.samples)
            if args.mappings:
                awake_rows = measure([supervisor], mappings=True)
            awake_state = console_state(lab)
            report(f"CONSOLE AWAKE (console {awake_state}): the appliance idle with the example policy ({how}), "
                   f"after {args.idle:.0f} s", awake_rows, goal=GOAL_MB, mappings=args.mappings)
            print_sums(awake_sums)
            if args.copied and not args.separate:
                copied_report(supervisor)
            netns.wait_for(lambda: console_state(lab) == ASLEEP, timeout=awake_for_s + 60, what="the console to sleep")
            rows, sums = idle_samples(supervisor, args.idle / 2, args.samples)
            if args.mappings:
                rows = measure([supervisor], mappings=True)
            report(f"CONSOLE ASLEEP ({console_state(lab)}): the appliance idle with the example policy ({how}), "
                   f"after {args.idle / 2:.0f} s more", rows, goal=GOAL_MB, mappings=args.mappings)
            print_sums(sums)
            console_mb = sum(r.pss_kb for r in awake_rows if r.name in ("sg-console", "schoolgate console")) / 1024
            print(f"\nPSS sum, console asleep: {sums[-1]:.1f} MB; console awake: {awake_sums[-1]:.1f} MB "
                  f"(the console process: {console_mb:.1f} MB when awake); goal {GOAL_MB:.0f} MB")
            for name, (pid, start) in references.items():
                if not netns.process_alive(pid, start):
                    print(f"{name} ended while idle:\n{(Path(tmp) / f'{name}.log').read_text()}", file=sys.stderr)
            if references:
                peers = measure([pid for pid, _ in references.values()], mappings=bool(args.mappings))
                report("The reference in the same run, idle: dnsmasq (the same local lists) and Squid "
                       "(peek, then terminate or splice)", peers, mappings=args.mappings)
                by_name = {name: sum(r.pss_kb for r in measure([pid])) / 1024 for name, (pid, _) in references.items()}
                # The event-writing process `schoolgate run` shares between the DNS daemon and the
                # proxy (`sg-events`, or `schoolgate events` with --separate) also runs net watch
                # and the scheduler: it is shown apart, not shared out between the two.
                shared = sum(r.pss_kb for r in rows if r.name in ("sg-events", "schoolgate events")) / 1024
                for peer, daemon in (("dnsmasq", "dns"), ("squid", "proxy")):
                    # Every process of the daemon: its workers and its event writer (`sg-dns`,
                    # `sg-dns-events`, `sg-proxy.2`, `sg-proxy.events` when forked; `schoolgate dns`
                    # when started on its own).
                    ours = sum(r.pss_kb for r in rows if daemon in re.split(r"[-. ]", r.name)[1:2]) / 1024
                    if peer in by_name and ours and by_name[peer]:
                        print(f"  schoolgate {daemon} (all its processes) {ours:.1f} MB / {peer} "
                              f"{by_name[peer]:.1f} MB PSS: {ours / by_name[peer]:.1f}x")
                if shared:
                    print(f"  beside them, the event-writing process both hand their events to, which also runs "
                          f"net watch and the scheduler: {shared:.1f} MB")
        finally:
            for pid, start in references.values():
                netns.stop_process(pid, start)
            lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
