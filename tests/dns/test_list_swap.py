"""A new list version swapped in under the running DNS daemon, under a steady 2,000 queries a
second: no query is lost, and every query sent after the swap plus the measured reload bound
gets the new verdict. Its two workers map the one version file (one inode, shared pages)."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import dns.message
import dns.rdatatype
import pytest
from authority import Authority
from conftest import Daemon, init_database, wait_for

from schoolgate.dns.daemon import worker_pids
from schoolgate.lists.state import ListState
from schoolgate.lists.update import INSTALLED, Updater
from schoolgate.policy.loader import load_list_sources

BLOCK_ADDRESS = "10.99.0.1"
RATE = 2000  # queries a second
DURATION_S = 8.0
SWAP_AT_S = 3.0
NAMES = 40  # per version
POLICY = """\
[school]
id = "dnstest"
name = "DNS Test Primary"
timezone = "Europe/London"
block_ipv4 = "10.99.0.1"

[calendar]
terms = [{ name = "Autumn 2026", start = "2026-09-02", end = "2026-12-18" }]

[[networks]]
name = "pupil loopback"
cidrs = ["127.0.0.0/8"]
role = "pupil"

[lists.feed]
url = "https://lists.example/gambling.txt"
format = "plain"
category = "gambling"

[[rules]]
id = "no-gambling"
clause = "Online Safety Policy"
reason = "gambling sites are blocked"
categories = ["gambling"]
action = "block"
"""


@dataclass
class Sent:
    name: str
    at: float


@dataclass
class Load:
    sent: dict[int, Sent] = field(default_factory=dict)
    answered: dict[int, tuple[float, bool]] = field(default_factory=dict)  # id -> (when, blocked)
    errors: list[str] = field(default_factory=list)


def _version(state: ListState, folder: Path, name: str, names: list[str], now: datetime) -> str:
    path = folder / name
    path.write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    (source,) = load_list_sources(state.folder.parent / "policy.toml")
    outcome = Updater(state).import_path(source, path, now)
    assert outcome.result == INSTALLED, outcome.message
    assert outcome.version is not None
    return outcome.version


def _blocked(message: dns.message.Message) -> bool:
    return any(rd.address == BLOCK_ADDRESS for rrset in message.answer for rd in rrset
               if rrset.rdtype == dns.rdatatype.A)


def _run_load(port: int, names: list[str], load: Load, stop_at: float, on_tick: Callable[[float], None]) -> None:
    """Send RATE queries a second from one UDP socket (in steps of 10 ms) until `stop_at`;
    a second thread collects the answers by query id."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(0.2)
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError as err:
                load.errors.append(str(err))
                return
            try:
                message = dns.message.from_wire(data)
            except Exception as err:
                load.errors.append(f"bad answer: {err}")
                continue
            load.answered.setdefault(message.id, (time.monotonic(), _blocked(message)))

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    rnd = random.Random(7)
    ids = list(range(1, 65536))
    rnd.shuffle(ids)
    per_step = RATE // 100
    step = 0
    start = time.monotonic()
    try:
        while time.monotonic() < stop_at and ids:
            for _ in range(per_step):
                if not ids:
                    break
                qid = ids.pop()
                name = names[qid % len(names)]
                query = dns.message.make_query(name, "A")
                query.id = qid
                load.sent[qid] = Sent(name, time.monotonic())
                sock.send(query.to_wire())
            on_tick(time.monotonic())
            step += 1
            delay = start + step * 0.01 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        # Answers in flight: wait until every query is answered, or the daemon's own deadline.
        wait_for(lambda: len(load.answered) >= len(load.sent), timeout=10, interval=0.05)
    finally:
        done.set()
        receiver.join(2)
        sock.close()


def _worker_pids(pid: int) -> list[int]:
    return worker_pids(pid)  # the supervisor's children but its event writer


def _mapped(pid: int, version: str) -> tuple[int, int] | None:
    """(inode, PSS in kB) of the version file as mapped by `pid`, or None."""
    inode, pss, inside = None, 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and "-" in parts[0] and ":" in parts[3]:
            inside = parts[-1].endswith(version)
            if inside:
                inode = int(parts[4])
        elif inside and parts and parts[0] == "Pss:":
            pss += int(parts[1])
    return (inode, pss) if inode is not None else None


@pytest.mark.slow
def test_a_new_version_is_swapped_in_under_load_without_losing_a_query(tmp_path: Path) -> None:
    authority = Authority(synthetic=True).start()
    workdir = tmp_path / "d"
    (workdir / "var").mkdir(parents=True)
    (workdir / "policy.toml").write_text(POLICY, encoding="utf-8")
    state = ListState(workdir / "var" / "lists")
    # ListState's folder sits in var/; the policy is beside var/ (as load_list_sources needs).
    (state.folder.parent / "policy.toml").write_text(POLICY, encoding="utf-8")
    now = datetime.now(UTC)
    old = [f"old-casino-{i}.example" for i in range(NAMES)]
    new = [f"new-casino-{i}.example" for i in range(NAMES)]
    first = _version(state, tmp_path, "v1.txt", old, now)
    daemon = Daemon(workdir, [authority.address], workers=2, extra_listen=False)
    init_database(daemon.db_url)
    try:
        daemon.start()
        assert daemon.proc is not None
        workers = wait_for(lambda: len(_worker_pids(daemon.proc.pid)) == 2 and _worker_pids(daemon.proc.pid), 10)
        wait_for(lambda: all(_mapped(w, first) for w in workers), 10)
        maps = [_mapped(w, first) for w in workers]
        # Both workers map the one file (one inode); each is charged about half the pages it
        # touched (PSS divides shared pages among the processes mapping them).
        assert len({m[0] for m in maps if m}) == 1, maps
        # Compiling lists needs numpy; answering queries never loads it.
        for worker in workers:
            assert "numpy" not in Path(f"/proc/{worker}/maps").read_text()

        load = Load()
        swapped: list[float] = []
        started = time.monotonic()

        def swap() -> None:
            _version(state, tmp_path, "v2.txt", new, datetime.now(UTC))
            swapped.append(time.monotonic())  # the manifest names the new version from here

        swapper = threading.Thread(target=swap)

        def tick(at: float) -> None:
            # The swap runs beside the load (as `lists update` does beside the daemon).
            if not swapper.is_alive() and not swapped and at - started >= SWAP_AT_S:
                swapper.start()

        _run_load(daemon.port, old + new, load, started + DURATION_S, tick)
        swapper.join(10)
    finally:
        code = daemon.stop()
        authority.close()
    assert code == 0, daemon.log_text()

    assert not load.errors, load.errors[:5]
    lost = [qid for qid in load.sent if qid not in load.answered]
    assert lost == [], f"{len(lost)} of {len(load.sent)} queries lost"
    assert len(load.sent) >= RATE * DURATION_S * 0.9  # the load really was steady
    swap = swapped[0]
    # The last query answered with the old verdict, sent after the swap: how long the daemon
    # took to bring the new version in (its watcher polls every second, then compiles).
    stale = [s.at - swap for qid, s in load.sent.items()
             if s.at > swap and load.answered[qid][1] != (s.name in new)]
    bound = max(stale, default=0.0)
    print(f"\nswap test: {len(load.sent)} queries, 0 lost; new verdicts {bound:.3f} s after the swap")
    assert bound < 2.0, f"old verdicts were still given {bound:.2f} s after the swap"
    before = [load.answered[qid][1] == (s.name in old) for qid, s in load.sent.items() if s.at < swap]
    assert before and all(before)  # before the swap, the first version's verdicts
    reloads = daemon.log_text().count("reloaded (lists:")
    assert reloads == 2, daemon.log_text()[-2000:]  # one per worker
