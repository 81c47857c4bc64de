"""The whole appliance's memory, idle, with the example policy: each process's PSS, and the sum.

    sudo .venv/bin/python -P bench/memory.py [--idle 20] [--separate]

Builds a private lab (namespaces `sgm…`), runs every daemon under `schoolgate run` as the lab
does (forked from one preloaded supervisor), lets it sit idle, and prints for every process of
the appliance its RSS, PSS (shared pages divided among the processes that map them: what adds up
to the machine's real use) and USS (pages only it holds), and the sums. The goal is a PSS sum of
at most 200 MB.

`--separate` starts each daemon as its own Python process instead (`schoolgate run --no-preload`),
as systemd runs them on an appliance: nothing is shared between daemons but the page cache.

Each process is named by what it runs (`sg-dns`, `sg-proxy`...: the supervisor names its forked
children so) and by the modules it has imported, counted, so that a daemon carrying imports it
does not need shows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from schoolgate.lab.lab import DEFAULT_CLOCK, Lab
from schoolgate.lab.topology import private_prefix

GOAL_MB = 200.0


@dataclass
class Memory:
    pid: int
    name: str
    rss_kb: int
    pss_kb: int
    uss_kb: int  # Private_Clean + Private_Dirty


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


def memory_of(pid: int) -> Memory | None:
    """RSS, PSS and USS of one process, from smaps_rollup."""
    values: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.strip().endswith("kB"):
            values[key] = int(rest.split()[0])
    if name.startswith(("python", "schoolgate")):
        # A process started as `python -m schoolgate X`: name it by its subcommand.
        words = [w.decode(errors="replace") for w in argv if w]
        if "schoolgate" in words:
            rest = words[words.index("schoolgate") + 1 :]
            name = "schoolgate " + " ".join(w for w in rest[:2] if not w.startswith("-"))
    return Memory(
        pid, name, values.get("Rss", 0), values.get("Pss", 0),
        values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
    )


def measure(root_pid: int) -> list[Memory]:
    found = [memory_of(pid) for pid in process_tree(root_pid)]
    return [m for m in found if m is not None]


def report(title: str, rows: list[Memory]) -> float:
    print(f"\n{title}")
    print(f"  {'process':28} {'pid':>7} {'RSS MB':>8} {'PSS MB':>8} {'USS MB':>8}")
    for row in rows:
        rss, pss, uss = row.rss_kb / 1024, row.pss_kb / 1024, row.uss_kb / 1024
        print(f"  {row.name:28} {row.pid:7d} {rss:8.1f} {pss:8.1f} {uss:8.1f}")
    pss = sum(r.pss_kb for r in rows) / 1024
    print(f"  {'sum':28} {'':7} {sum(r.rss_kb for r in rows) / 1024:8.1f} {pss:8.1f} "
          f"{sum(r.uss_kb for r in rows) / 1024:8.1f}")
    print(f"  PSS sum {pss:.1f} MB against the goal of {GOAL_MB:.0f} MB: {'met' if pss <= GOAL_MB else 'NOT met'}")
    return pss


class SeparateLab(Lab):
    """The lab with every daemon started as a new Python process, as systemd would."""

    def _supervisor_argv(self) -> list[str]:
        return [*super()._supervisor_argv(), "--no-preload"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds idle before measuring")
    parser.add_argument("--samples", type=int, default=3, help="measurements, --idle/2 s apart; the last is shown")
    parser.add_argument("--separate", action="store_true", help="each daemon its own Python process (no preload)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sg-memory-") as tmp:
        kind = SeparateLab if args.separate else Lab
        lab = kind(private_prefix("sgm", 0, os.getpid()), state_root=Path(tmp) / "state")
        lab.down()
        lab.up(clock=DEFAULT_CLOCK)
        try:
            supervisor = int(lab.state.processes["appliance"]["pid"])
            time.sleep(args.idle)
            sums = []
            rows: list[Memory] = []
            for sample in range(max(1, args.samples)):
                if sample:
                    time.sleep(args.idle / 2)
                rows = measure(supervisor)
                sums.append(sum(r.pss_kb for r in rows) / 1024)
            how = "each daemon its own process" if args.separate else "forked from the preloaded supervisor"
            report(f"The appliance idle with the example policy ({how}), after {args.idle:.0f} s", rows)
            print(f"  PSS sums over {len(sums)} samples: " + ", ".join(f"{s:.1f}" for s in sums) + " MB")
        finally:
            lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
