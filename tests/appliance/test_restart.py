"""Kill each appliance daemon with SIGKILL while the school is busy: it comes back, and what
it lost is small and counted.

The lab's gateway runs every daemon under `schoolgate run`. While pupils' and staff devices
make traffic (a bounded loop of dig and curl, every success counted), a daemon is killed.
Measured: the time from the kill to the first successful answer of the new process, reported
against the 2 s goal and bounded by what a restart waits for in this same lab (the supervisor's
poll and announced delay, and the daemon's own first start when the lab came up), and the
events lost: what the devices did (and the appliance answered) that is missing from the
events table. A kill may lose what the writer took since its last flush (one flush interval);
the supervisor must say so where a technician sees it (its log and `daemon_status`).

Only blocked and flagged attempts are compared: allowed traffic is folded per minute before
it is written, so the staff device's allowed lookups are load, not a count.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from schoolgate.dns.daemon import worker_pids
from schoolgate.lab.client import LabClient
from schoolgate.lab.lab import nflog_bound
from schoolgate.lab.netns import call_in, exec_in
from schoolgate.lab.topology import GATEWAY_LAN_IP, NFLOG_GROUP
from schoolgate.lab.traffic import Traffic, began, dns_answers, expected, settled
from schoolgate.runner import ASLEEP
from schoolgate.runner import POLL_S as SUPERVISOR_POLL_S
from schoolgate.store.events import StatusTarget, read_status
from schoolgate.store.models import AccessEvent

pytestmark = [pytest.mark.root, pytest.mark.slow]

FLUSH_INTERVAL_S = 0.2  # EventWriter's
RESTART_GOAL_S = 2.0  # the goal reported against; the assertion's bound is measured (see below)
PROBE_PAUSE_S = 0.01  # between probes
NFLOG_HOLD_S = 0.1  # how long the kernel may hold an NFLOG message back (gateway.nflog)
WARM_UP_S = 6.0  # traffic before the kill: the DNS daemon's status row is written every 5 s
AFTER_KILL_S = 3.0
# How often net watch's writer writes its status row (it gives no interval of its own).
GATEWAY_STATUS_EVERY_S = StatusTarget.__dataclass_fields__["interval"].default


# -- how each daemon shows it is serving again, asked from a pupil's device or the gateway


def _http_first_line(lab: LabClient, port: int, host: str, path: str) -> str:
    def ask() -> str:
        try:
            with socket.create_connection((GATEWAY_LAN_IP, port), timeout=0.3) as sock:
                sock.settimeout(0.5)
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                return sock.recv(200).decode("latin-1").split("\r\n", 1)[0]
        except OSError:
            return ""

    return call_in(lab.ns("pupil"), ask)


def _proxy_answers(lab: LabClient, serial: int) -> bool:
    return _http_first_line(lab, 80, f"probe{serial}.facebook.com", "/").startswith("HTTP/1.1 403")


def _console_answers(lab: LabClient, serial: int) -> bool:
    return " 200 " in _http_first_line(lab, 8443, GATEWAY_LAN_IP, "/login") + " "


def _scheduler_answers(lab: LabClient, old_pid: int) -> bool:
    with lab.session() as session:
        row = read_status(session, "kingswood").get("scheduler")
    return row is not None and row["pid"] not in (old_pid, None)


def _watch_answers(lab: LabClient, old_pid: int) -> bool:
    pid = lab.lab.daemon_pid("watch")
    return pid not in (None, old_pid) and nflog_bound(lab.gateway, NFLOG_GROUP)


def announced_restart_delay(log_text: str, daemon: str) -> float:
    """The delay the supervisor said it would wait before restarting the killed daemon."""
    found = re.findall(rf"{daemon} killed by SIGKILL after [0-9.]+ s; restarting in ([0-9.]+) s", log_text)
    assert found, f"the supervisor did not announce {daemon}'s restart"
    return float(found[-1])


PROBES: dict[str, Callable[[LabClient, int], bool]] = {
    "dns": dns_answers,
    "proxy": _proxy_answers,
    "console": _console_answers,
    "scheduler": _scheduler_answers,
    "watch": _watch_answers,
}


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _writer_rows(lab: LabClient) -> dict[str, int | None]:
    """The pid in each of the DNS daemon's and the proxy's event-writing status rows."""
    with lab.session() as session:
        rows = read_status(session, "kingswood")
    return {name: (rows[name]["pid"] if name in rows else None) for name in ("dns.events", "proxy.events")}


def test_one_event_writing_process_writes_for_the_dns_daemon_and_the_proxy(lab: LabClient) -> None:
    """The appliance's default `schoolgate run`: the supervisor's children are the daemons and
    one event-writing process, which writes the DNS daemon's and the proxy's events (both
    status rows are its) and runs net watch (its "gateway" row is the same process's); the DNS
    daemon forks no writer of its own, and net watch has no process of its own."""
    appliance = lab.lab
    supervisor = int(appliance.state.processes["appliance"]["pid"])
    writer, dns = appliance.daemon_pid("events"), appliance.daemon_pid("dns")
    assert writer is not None and dns is not None
    names = sorted(_comm(pid) for pid in _children(supervisor))
    assert "sg-events" in names and "sg-dns-events" not in names and "sg-proxy.events" not in names, names
    assert "sg-watch" not in names and appliance.daemon_pid("watch") == writer, names
    assert _children(dns) == [] and worker_pids(dns) == [dns]  # one worker: the daemon itself
    assert _children(writer) == []
    # Both rows are the writer's (each written a second apart by its own writer thread).
    _wait_for(lambda: set(_writer_rows(lab).values()) == {writer}, 10)
    assert _writer_rows(lab) == {"dns.events": writer, "proxy.events": writer}
    # Net watch's row comes from its own writer, which starts after the watcher has bound NFLOG
    # (what the lab waits for) and read the policy, and reports at its first flush: asked the
    # moment the lab came up, it may not be written yet (so it failed in CI). Only a row that
    # never comes waits the whole cap, which leaves a slow policy read several report intervals.
    _wait_for(lambda: _row_pid(lab, "gateway") == writer, 6 * GATEWAY_STATUS_EVERY_S)


def _row_pid(lab: LabClient, name: str) -> int | None:
    with lab.session() as session:
        row = read_status(session, "kingswood").get(name)
    return None if row is None else row["pid"]


def _wait_for(condition: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("daemon", ["dns", "proxy", "console", "scheduler", "watch"])
def test_a_killed_daemon_serves_again_as_fast_as_it_first_started_and_its_losses_are_counted(
    lab: LabClient, daemon: str, measured: list[str]
) -> None:
    from schoolgate.dns.daemon import EVENTS_TICK_S as DNS_TICK_S
    from schoolgate.dns.daemon import WRITER_GATHER_S
    from schoolgate.proxy.daemon import EVENTS_TICK_S as PROXY_TICK_S

    appliance = lab.lab
    if daemon == "console":  # it runs on demand: a request wakes it if it has gone to sleep
        assert _console_answers(lab, 0)
    # The supervisor's child that runs it: net watch runs in the event-writing process, so
    # killing what runs the watcher kills the writing of the DNS daemon's and the proxy's events.
    host = appliance.host_of(daemon)
    old_pid = appliance.daemon_pid(daemon)
    assert old_pid is not None, appliance.supervisor_state()
    before = appliance.supervisor_state()["children"][host]
    first_id = lab.last_event_id()
    tag = f"k{daemon[:2]}{os.getpid() % 1000}"
    probe = PROBES[daemon]

    with Traffic(lab, tag) as traffic:
        time.sleep(WARM_UP_S)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        serial, serving_after, probe_took = 0, None, 0.0
        while time.monotonic() - killed_at < 15:
            serial += 1
            asked = time.monotonic()
            # A process that runs net watch beside the daemon serves again once the watcher
            # has bound its NFLOG group too (the scheduler in the event-writing process).
            if probe(lab, old_pid if daemon in ("scheduler", "watch") else serial) and (
                "watch" not in before["runs"] or _watch_answers(lab, old_pid)
            ):
                serving_after, probe_took = time.monotonic() - killed_at, time.monotonic() - asked
                break
            time.sleep(PROBE_PAUSE_S)
        time.sleep(AFTER_KILL_S)

    new_pid = appliance.daemon_pid(daemon)
    assert serving_after is not None, f"{daemon} was not serving 15 s after the kill"
    assert new_pid not in (None, old_pid)

    found = settled(lab, traffic, first_id)
    missing = {s: expected(traffic, s) - found[s] for s in found}
    lost = {s: len(missing[s]) for s in found}
    # What the killed writer took since its last flush, and the attempt in flight. For net
    # watch also what the kernel held back for it (up to 0.1 s) and what it logged to the
    # group while nobody listened (until the new watcher bound it).
    # Counted from the attempts each stream really began in that window, not from its average
    # rate: traffic comes in bursts, and a burst just before the kill is what a writer loses.
    lead_in = {s: FLUSH_INTERVAL_S for s in found}
    lead_in["gateway"] += NFLOG_HOLD_S
    # The streams whose writing the killed process held: its daemon's, and with net watch or the
    # scheduler in the event-writing process the DNS daemon's, the proxy's and net watch's too
    # (each with its own window, as when the writer alone is killed: their workers' hand-over
    # tick and the writer's gathering).
    own = {"dns": "dns", "proxy": "proxy", "watch": "gateway"}.get(daemon)
    owned = {own} if own is not None else set()
    if host == "events":
        owned |= {"dns", "proxy"} | ({"gateway"} if "watch" in before["runs"] else set())
        lead_in["dns"] = DNS_TICK_S + WRITER_GATHER_S + FLUSH_INTERVAL_S
        lead_in["proxy"] = PROXY_TICK_S + FLUSH_INTERVAL_S
    after_kill = {s: serving_after if s == "gateway" else 0.0 for s in found}

    def begun_in_window(stream: str) -> int:
        times = (began(traffic, stream, item) - killed_at for item in expected(traffic, stream))
        return sum(1 for t in times if -lead_in[stream] <= t <= after_kill[stream])

    allowance = {s: begun_in_window(s) + 1 for s in found}
    after = appliance.supervisor_state()["children"][host]
    log_text = lab.lab.log_path("appliance").read_text(errors="replace")
    counted = after["events_maybe_lost"] - before["events_maybe_lost"]
    # The bound is what a restart waits for, measured in this lab: the supervisor noticing the
    # death (one poll) and the delay it announced, the daemon's own start as timed when the lab
    # came up (forked from the same preloaded supervisor, while every daemon started at once),
    # and the probe that saw it answer (the pause before it, and its own round trip).
    # Serving again waits for everything the killed process ran (see the probe above).
    waited_for = [daemon, *(["watch"] if "watch" in before["runs"] else [])]
    first_starts = [appliance.first_start(name) for name in waited_for]
    assert None not in first_starts, f"the lab did not time the first start of {waited_for}: {first_starts}"
    first_start = max(start for start in first_starts if start is not None)
    restart_delay = announced_restart_delay(log_text, host)
    # The goal holds whenever the machine lets it: a restart on a busy machine may take as long
    # as a start did there, and no longer. (Bounded by the first start alone, a restart that
    # meets a moment's load failed at 0.17 s against a first start timed at 0.07 s.)
    waits_for = SUPERVISOR_POLL_S + restart_delay + first_start + PROBE_PAUSE_S + probe_took
    bound = max(RESTART_GOAL_S, waits_for)
    goal = "within" if serving_after <= RESTART_GOAL_S else "OVER"
    measured.append(
        f"{daemon:9} serving again {serving_after:.2f} s after SIGKILL ({goal} the {RESTART_GOAL_S:g} s goal; "
        f"bound {bound:.2f} s = the goal, or first start {first_start:.2f} + restart delay {restart_delay:g} "
        f"+ poll and probe if longer); "
        + ", ".join(f"{s}: {len(expected(traffic, s))} answered, {lost[s]} lost" for s in found)
        + f"; staff lookups {len(traffic.stream('staff').done)}; supervisor counted up to {counted} maybe lost"
    )

    # Back and serving as soon as a restart can be (the first successful answer of the new
    # process): within the goal, or no slower than the same daemon's first start in this lab.
    assert serving_after <= bound, (
        f"{daemon}: first answer {serving_after:.2f} s after the kill; its first start took {first_start:.2f} s, "
        f"the supervisor announced a {restart_delay:g} s delay (bound {bound:.2f} s)"
    )
    # The supervisor noticed, restarted it, and said what may have been lost.
    assert after["restarts"] == before["restarts"] + 1
    assert after["unclean_exits"] == before["unclean_exits"] + 1
    assert f"{host} killed by SIGKILL" in log_text
    assert "Previous run ended without flushing" in log_text
    with lab.session() as session:
        board = read_status(session, "kingswood")["run"]["stats"]["children"][host]
    assert board["unclean_exits"] == after["unclean_exits"]

    # The losses: only the streams the killed process wrote may lose, and each at most what it
    # took in its window (plus the one attempt in flight); and no more than the supervisor counted.
    for stream, count in lost.items():
        when = sorted(round(began(traffic, stream, item) - killed_at, 2) for item in missing[stream])
        if stream in owned:
            assert count <= allowance[stream], f"{stream}: {count} lost (allowed {allowance[stream]}), " \
                f"attempts begun at {when} s from the kill"
        else:
            assert count == 0, f"{stream}: {count} lost ({sorted(missing[stream])}), begun at {when} s from the kill"
    # The staff device kept being answered except while the DNS daemon was down.
    assert traffic.stream("staff").done
    if own is not None:
        # An event-writing daemon's unclean end is reported with a number, not just a note.
        assert "events may be lost" in log_text
    if host == "events":
        # The writer's own losses are within what the supervisor counted. (net watch's may not be:
        # what the kernel logs while no watcher listens is not a count it can know.)
        assert lost["dns"] + lost["proxy"] <= counted, (lost, counted)


def test_a_killed_event_writer_loses_at_most_what_it_had_taken_and_the_supervisor_counts_it(
    lab: LabClient, measured: list[str]
) -> None:
    """SIGKILL to the one event-writing process while pupils' lookups and pages keep the DNS
    daemon and the proxy busy. Their workers keep sending; what they send meanwhile waits in
    the channels the supervisor holds, and the restarted writer writes it. Lost: at most what
    the killed process had read and not written, for each source its own window (the DNS
    daemon's hand-over tick, its writer's second of gathering and a flush interval; the
    proxy's tick and a flush interval; for net watch, which runs in it, a flush interval and
    what the kernel held back, and what it logged until the new watcher bound the NFLOG group),
    and the supervisor says how many may be lost."""
    from schoolgate.dns.daemon import EVENTS_TICK_S as DNS_TICK_S
    from schoolgate.dns.daemon import WRITER_GATHER_S
    from schoolgate.proxy.daemon import EVENTS_TICK_S as PROXY_TICK_S

    appliance = lab.lab
    old_pid = appliance.daemon_pid("events")
    assert old_pid is not None, appliance.supervisor_state()
    before = appliance.supervisor_state()["children"]["events"]
    watching = "watch" in before["runs"]
    first_id = lab.last_event_id()
    with Traffic(lab, f"kev{os.getpid() % 1000}") as traffic:
        time.sleep(WARM_UP_S)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        new_pid = None
        while time.monotonic() - killed_at < 15 and new_pid is None:
            pid = appliance.daemon_pid("events")
            if pid not in (None, old_pid) and set(_writer_rows(lab).values()) == {pid} and (
                not watching or nflog_bound(lab.gateway, NFLOG_GROUP)
            ):
                new_pid = pid
            time.sleep(PROBE_PAUSE_S)
        back_after = time.monotonic() - killed_at
        time.sleep(AFTER_KILL_S)
    assert new_pid is not None, "the event writer was not writing again 15 s after the kill"

    found = settled(lab, traffic, first_id)
    missing = {s: expected(traffic, s) - found[s] for s in found}
    lead_in = {"dns": DNS_TICK_S + WRITER_GATHER_S + FLUSH_INTERVAL_S, "proxy": PROXY_TICK_S + FLUSH_INTERVAL_S}
    after_kill = {"dns": 0.0, "proxy": 0.0}
    if watching:
        lead_in["gateway"], after_kill["gateway"] = FLUSH_INTERVAL_S + NFLOG_HOLD_S, back_after

    def begun_in_window(stream: str) -> int:
        times = (began(traffic, stream, item) - killed_at for item in expected(traffic, stream))
        return sum(1 for t in times if -lead_in[stream] <= t <= after_kill[stream])

    after = appliance.supervisor_state()["children"]["events"]
    counted = after["events_maybe_lost"] - before["events_maybe_lost"]
    measured.append(
        f"events    writing again {back_after:.2f} s after SIGKILL; "
        + ", ".join(f"{s}: {len(expected(traffic, s))} answered, {len(missing[s])} lost" for s in found)
        + f"; supervisor counted up to {counted} maybe lost"
    )
    for stream, gone in missing.items():
        when = sorted(round(began(traffic, stream, item) - killed_at, 2) for item in gone)
        if stream in lead_in:
            allowance = begun_in_window(stream) + 1
            assert len(gone) <= allowance, f"{stream}: {len(gone)} lost (allowed {allowance}), begun at {when} s"
        else:
            assert not gone, f"{stream}: {len(gone)} lost, begun at {when} s from the kill"
    assert found["dns"] and found["proxy"], "events from both daemons written"
    # Nothing the writer took lost beyond what the supervisor said may be lost (net watch's gap,
    # while no watcher listens, is the restart time the log reports, not a count).
    assert len(missing["dns"]) + len(missing["proxy"]) <= counted, (missing, counted)
    assert after["restarts"] == before["restarts"] + 1
    log_text = appliance.log_path("appliance").read_text(errors="replace")
    assert "events killed by SIGKILL" in log_text and "events may be lost" in log_text
    assert "dns.events:" in log_text and "proxy.events:" in log_text  # the estimate names each source


def test_the_supervisor_keeps_every_daemon_running_after_the_kills(lab: LabClient) -> None:
    status = lab.lab.status()
    assert status["processes"]["appliance"]["alive"]
    # The identity service runs only where it has lease files or RADIUS to receive.
    identity = {"identity"} if lab.lab.identity_configured else set()
    # The console runs on demand: serving since the kill test's requests, or asleep again.
    assert {
        name for name, info in status["daemons"].items()
        if info["alive"] or (name == "console" and info["state"] == ASLEEP)
    } == {"dns", "proxy", "events", "console", "scheduler", "watch", *identity}
    with lab.session() as session:
        assert session.scalar(select(func.count()).select_from(AccessEvent)) > 0


def test_killing_the_supervisor_stops_its_daemons(lab: LabClient) -> None:
    """PR_SET_PDEATHSIG: if `schoolgate run` itself dies, no daemon is left running alone."""
    appliance = lab.lab
    assert _console_answers(lab, 0)  # awake (it runs on demand), so that it too must stop
    names = ["dns", "proxy", "console", "scheduler", "watch", *(["identity"] if appliance.identity_configured else [])]
    pids = {name: appliance.daemon_pid(name) for name in names}
    assert all(pids.values()), pids
    supervisor = appliance.state.processes["appliance"]
    os.kill(int(supervisor["pid"]), signal.SIGKILL)
    deadline = time.monotonic() + 20
    alive = dict(pids)
    while alive and time.monotonic() < deadline:
        alive = {n: p for n, p in alive.items() if p is not None and _running(p)}
        time.sleep(0.1)
    assert not alive, f"still running after their supervisor died: {alive}"
    done = exec_in(lab.gateway, ["ss", "-lntu"], check=False)
    assert ":5353" not in done.stdout and ":8081" not in done.stdout


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
