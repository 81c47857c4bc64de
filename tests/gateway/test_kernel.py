"""`schoolgate net apply|show|status|watch` against a real kernel, in private namespaces."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from schoolgate.gateway.nft import NftWatchedSets, live_watched_elements, read_counters
from schoolgate.lab.netns import call_in, wait_for

pytestmark = pytest.mark.root


def write_config(tmp_path: Path, lan: str = "sgt-lan") -> Path:
    config = tmp_path / "schoolgate.toml"
    config.write_text(
        f"""
policy = "policy.toml"
data_dir = "{tmp_path / "data"}"
[site]
id = "gwtest"
[dns]
listen = ["10.98.0.1:5353", "[fd98::1]:5353"]
watched_set_timeout_s = 900
[proxy]
listen = "*:8081"
[network]
lan_interface = "{lan}"
appliance_ipv4 = "10.98.0.1"
appliance_ipv6 = "fd98::1"
lan_cidrs = ["10.98.0.0/24", "fd98::/64"]
watched_prefixes = ["198.51.100.0/25", "2001:db8:fb::/48"]
doh_addresses = ["192.0.2.53", "2001:db8::53"]
known_doh_addresses = false
nflog_group = 11
"""
    )
    return config


def schoolgate(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-P", "-m", "schoolgate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def nft_list(namespace: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "list", "table", "inet", "schoolgate"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_show_needs_no_root_or_kernel(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "schoolgate", "net", "show", "--config", str(write_config(tmp_path))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("#!/usr/sbin/nft -f")
    assert "redirect to :5353" in done.stdout and "198.51.100.0/25" in done.stdout


def test_show_reports_a_bad_setting(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('"10.98.0.0/24"', '"10.98.0.0/40"'))
    done = subprocess.run(
        [sys.executable, "-P", "-m", "schoolgate", "net", "show", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "network.lan_cidrs" in done.stderr


def test_apply_sets_up_the_gateway_and_is_idempotent(gateway_pair: tuple[str, str], tmp_path: Path) -> None:
    gw, _client = gateway_pair
    config = str(write_config(tmp_path))
    subprocess.run(["ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=0"], check=True)
    first = schoolgate(gw, "net", "apply", "--config", config)
    assert "address 10.98.0.1/24 on sgt-lan" in first.stdout
    assert "net.ipv4.ip_forward = 1" in first.stdout
    addresses = subprocess.run(
        ["ip", "-n", gw, "-j", "addr", "show", "sgt-lan"], capture_output=True, text=True, check=True
    ).stdout
    assert any(a["local"] == "10.98.0.1" and a["prefixlen"] == 24 for a in json.loads(addresses)[0]["addr_info"])
    before = nft_list(gw)

    second = schoolgate(gw, "net", "apply", "--config", config)
    assert "changed:" not in second.stdout  # nothing left to change
    assert nft_list(gw) == before
    tables = subprocess.run(
        ["ip", "netns", "exec", gw, "nft", "list", "tables"], capture_output=True, text=True, check=True
    ).stdout
    assert tables.count("inet schoolgate") == 1


def test_learnt_watched_addresses_survive_a_reapply_unless_flushed(
    gateway_pair: tuple[str, str], tmp_path: Path
) -> None:
    gw, _client = gateway_pair
    config = str(write_config(tmp_path))
    schoolgate(gw, "net", "apply", "--config", config)

    def learn() -> tuple[int, int]:
        sets = NftWatchedSets()
        sets.add(["203.0.113.10", "2001:db8::10"], 300)
        sets.add(["203.0.113.10", "not-an-address"], 300)
        sets.flush()
        return sets.added, sets.failures

    assert call_in(gw, learn) == (2, 0)
    schoolgate(gw, "net", "apply", "--config", config)
    kept = call_in(gw, live_watched_elements)
    assert {(e.set_name, e.address) for e in kept} == {("watched4", "203.0.113.10"), ("watched6", "2001:db8::10")}
    assert all(250 < e.expires_s <= 300 for e in kept)

    schoolgate(gw, "net", "apply", "--flush-watched", "--config", config)
    assert call_in(gw, live_watched_elements) == []


def test_watched_sets_refresh_timeouts_and_skip_fresh_ones(gateway_pair: tuple[str, str], tmp_path: Path) -> None:
    gw, _client = gateway_pair
    schoolgate(gw, "net", "apply", "--rules-only", "--config", str(write_config(tmp_path)))

    def scenario() -> tuple[int, int, int]:
        sets = NftWatchedSets()
        sets.add(["203.0.113.20"], 60)
        sets.flush()
        sets.add(["203.0.113.20"], 60)  # fresh: not rewritten
        sets.flush()
        batches_after_repeat = sets.batches
        sets.add(["203.0.113.20"], 600)  # a longer timeout than half-left: refreshed
        sets.flush()
        (element,) = live_watched_elements()
        return batches_after_repeat, sets.batches, element.expires_s

    batches_after_repeat, batches, expires = call_in(gw, scenario)
    assert batches_after_repeat == 1 and batches == 2
    assert 590 < expires <= 600


def test_add_never_blocks_and_runs_in_the_background(gateway_pair: tuple[str, str], tmp_path: Path) -> None:
    gw, _client = gateway_pair
    schoolgate(gw, "net", "apply", "--rules-only", "--config", str(write_config(tmp_path)))

    def scenario() -> tuple[float, int]:
        sets = NftWatchedSets(max_queue=1000)
        started = time.perf_counter()
        for i in range(500):
            sets.add([f"203.0.113.{i % 250 + 1}"], 120)
        spent = time.perf_counter() - started
        wait_for(lambda: len(live_watched_elements()) == 250, timeout=10, what="the writer thread")
        sets.stop()
        return spent, sets.dropped

    spent, dropped = call_in(gw, scenario)
    assert dropped == 0
    assert spent < 0.5  # 500 calls only queue: no nft subprocess on the caller's thread


def test_refused_attempts_reach_nflog_and_are_rejected_at_once(gateway_pair: tuple[str, str], tmp_path: Path) -> None:
    gw, client = gateway_pair
    schoolgate(gw, "net", "apply", "--config", str(write_config(tmp_path)))
    from schoolgate.gateway.nflog import NflogSocket

    reader = call_in(gw, lambda: NflogSocket(11))
    reader.settimeout(3)

    def connect(host: str, port: int) -> str:
        started = time.monotonic()
        try:
            socket.create_connection((host, port), timeout=3).close()
            return "connected"
        except ConnectionRefusedError:
            return f"refused in {time.monotonic() - started:.2f}s"
        except OSError as err:
            return f"{type(err).__name__}"

    dot = call_in(client, lambda: connect("198.51.100.200", 853))
    doh = call_in(client, lambda: connect("192.0.2.53", 443))
    assert dot.startswith("refused") and float(dot.split()[-1][:-1]) < 1.0
    assert doh.startswith("refused")
    seen = []
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        seen += reader.receive()
    reader.close()
    assert [(a.kind, a.client_ip, a.dest_ip, a.dest_port, a.protocol, a.mac) for a in seen] == [
        ("dot", "10.98.0.2", "198.51.100.200", 853, "tcp", "02:98:00:00:00:02"),
        ("doh", "10.98.0.2", "192.0.2.53", 443, "tcp", "02:98:00:00:00:02"),
    ]
    counters = call_in(gw, read_counters)
    assert counters["refused_dot"][0] == 1 and counters["refused_doh"][0] == 1


def test_watch_daemon_writes_circumvention_events(gateway_pair: tuple[str, str], tmp_path: Path) -> None:
    from schoolgate.store.db import init_db, make_engine, session_factory
    from schoolgate.store.models import AccessEvent

    gw, client = gateway_pair
    config = str(write_config(tmp_path))
    schoolgate(gw, "net", "apply", "--config", config)
    url = f"sqlite:///{tmp_path / 'data' / 'schoolgate.db'}"
    init_db(url).dispose()
    log = (tmp_path / "watch.log").open("wb")
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", gw, sys.executable, "-P", "-m", "schoolgate", "net", "watch", "--config", config],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def bound() -> bool:
            text = subprocess.run(
                ["ip", "netns", "exec", gw, "cat", "/proc/net/netfilter/nfnetlink_log"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            return any(line.split()[:1] == ["11"] for line in text.splitlines())

        wait_for(bound, timeout=30, what="the watch daemon to bind NFLOG group 11")

        def attempts() -> None:
            for _ in range(3):  # retries of one attempt: one event
                with contextlib.suppress(OSError):
                    socket.create_connection(("198.51.100.200", 853), timeout=2).close()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.sendto(b"\0" * 1200, ("198.51.100.5", 443))  # QUIC to a watched prefix

        call_in(client, attempts)
        engine = make_engine(url)
        sessions = session_factory(engine)

        def rows() -> list[AccessEvent]:
            with sessions() as session:
                return list(session.scalars(select(AccessEvent).order_by(AccessEvent.id)))

        wait_for(lambda: len(rows()) >= 2, timeout=10, what="two events in the database")
        time.sleep(0.5)  # nothing more should arrive (the retries were folded)
        found = rows()
        engine.dispose()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
        log.close()
    assert daemon.returncode == 0, (tmp_path / "watch.log").read_text()
    assert [(r.rule_id, r.client_ip, r.host, r.url, r.flags, r.verdict, r.category) for r in found] == [
        ("gateway.refuse.dot", "10.98.0.2", "198.51.100.200", "tcp://198.51.100.200:853", "circumvention,dot", "block",
         "circumvention"),
        # QUIC is refused quietly (the browser falls back to TCP): never circumvention
        ("gateway.refuse.quic", "10.98.0.2", "198.51.100.5", "udp://198.51.100.5:443", "quic", "refused", None),
    ]
    assert all(r.site == "gwtest" and r.source == "gateway" for r in found)
    assert all(r.mac == "02:98:00:00:00:02" for r in found)


def test_status_and_down(gateway_pair: tuple[str, str], tmp_path: Path) -> None:
    gw, _client = gateway_pair
    config = str(write_config(tmp_path))
    schoolgate(gw, "net", "apply", "--config", config)
    status = schoolgate(gw, "net", "status", "--config", config)
    assert "dns_redirected" in status.stdout and "watched addresses" in status.stdout
    schoolgate(gw, "net", "down", "--config", config)
    assert schoolgate(gw, "net", "status", "--config", config, check=False).returncode == 1
    assert os.path.exists(f"/run/netns/{gw}")


def test_ipv6_refusals_and_their_log(gateway_pair: tuple[str, str], tmp_path: Path, refusal_probe: Any) -> None:
    gw, client = gateway_pair
    applied = schoolgate(gw, "net", "apply", "--config", str(write_config(tmp_path)))
    assert "address fd98::1/64 on sgt-lan" in applied.stdout
    from schoolgate.gateway.nflog import NflogSocket

    reader = call_in(gw, lambda: NflogSocket(11))
    reader.settimeout(3)

    def address_usable() -> bool:  # duplicate address detection has finished on the new address
        out = subprocess.run(["ip", "-n", gw, "-6", "addr", "show", "dev", "sgt-lan", "tentative"],
                             capture_output=True, text=True, check=False).stdout
        return "fd98::1" not in out

    wait_for(address_usable, timeout=10, what="the gateway's IPv6 address")
    dot = call_in(client, lambda: refusal_probe.tcp("2001:db8::99", 853))
    doh = call_in(client, lambda: refusal_probe.tcp("2001:db8::53", 443))
    refused_quic = call_in(client, lambda: refusal_probe.quic("2001:db8:fb::1"))
    for outcome, seconds in (dot, doh, refused_quic):
        assert outcome in ("ConnectionRefusedError", "PermissionError", "OSError"), outcome
        assert seconds < 1.0
    seen = []
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        seen += reader.receive()
    reader.close()
    assert [(a.kind, a.client_ip, a.dest_ip, a.dest_port, a.protocol) for a in seen] == [
        ("dot", "fd98::2", "2001:db8::99", 853, "tcp"),
        ("doh", "fd98::2", "2001:db8::53", 443, "tcp"),
        ("quic", "fd98::2", "2001:db8:fb::1", 443, "udp"),
    ]


def test_the_blocked_address_sets_are_replaced_without_touching_the_ruleset(
    gateway_pair: tuple[str, str], tmp_path: Path
) -> None:
    import ipaddress

    from schoolgate.gateway.blocked import BlockedSets

    gw, _client = gateway_pair
    config = str(write_config(tmp_path))
    schoolgate(gw, "net", "apply", "--config", config)
    first = [ipaddress.ip_network(n) for n in ("93.184.216.34/32", "118.123.4.0/24", "118.123.4.224/32",
                                                  "2a00:1450:4000::/40")]

    def write(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> int:
        sets = BlockedSets()
        sets.sync(networks)
        return sets.writes

    assert call_in(gw, lambda: write(first)) == 1
    listed = nft_list(gw)
    assert "93.184.216.34" in listed and "118.123.4.0/24" in listed and "2a00:1450:4000::/40" in listed
    assert "@blocked4 tcp dport { 80, 443 }" in listed  # steered to the proxy
    counters_before = call_in(gw, read_counters)
    call_in(gw, lambda: write([ipaddress.ip_network("203.0.113.0/24")]))
    listed = nft_list(gw)
    assert "203.0.113.0/24" in listed and "93.184.216.34" not in listed and "2a00" not in listed
    assert set(call_in(gw, read_counters)) == set(counters_before)  # the rest of the table untouched


def test_net_watch_beside_the_event_writer_retries_a_refused_bind_while_dns_events_are_written(
    gateway_pair: tuple[str, str], tmp_path: Path
) -> None:
    """`schoolgate events --source dns=FD --watch`, net watch in the writing process as
    `schoolgate run` has it: while another socket holds the NFLOG group the watcher's bind is
    refused, and the DNS daemon's events are written all the same; the watcher's status row says
    why and when it tries again, and once the group is free it binds it and records attempts."""
    from schoolgate.gateway.nflog import NflogSocket
    from schoolgate.store.db import init_db, make_engine, session_factory
    from schoolgate.store.events import EventRecord, read_status
    from schoolgate.store.events.channel import EventChannel, channel_pair
    from schoolgate.store.events.record import compact
    from schoolgate.store.models import AccessEvent

    gw, client = gateway_pair
    config = str(write_config(tmp_path))
    schoolgate(gw, "net", "apply", "--config", config)
    url = f"sqlite:///{tmp_path / 'data' / 'schoolgate.db'}"
    init_db(url).dispose()
    holder = call_in(gw, lambda: NflogSocket(11))  # the group is taken: the watcher's bind is refused
    sending, reading = channel_pair()
    log = (tmp_path / "events.log").open("wb")
    process = subprocess.Popen(
        ["ip", "netns", "exec", gw, sys.executable, "-P", "-m", "schoolgate", "events", "--config", config,
         "--source", f"dns={reading.fileno()}", "--watch"],
        stdout=log, stderr=subprocess.STDOUT, pass_fds=(reading.fileno(),),
    )
    reading.close()
    sender = EventChannel(sending)
    engine = make_engine(url)
    sessions = session_factory(engine)

    def watcher_row() -> dict[str, Any]:
        with sessions() as session:
            row: dict[str, Any] = read_status(session, "gwtest").get("gateway") or {"stats": {}}
            return row

    def hosts(source: str) -> set[str]:
        with sessions() as session:
            return set(session.scalars(select(AccessEvent.host).where(AccessEvent.source == source)))

    try:
        wait_for(lambda: watcher_row()["stats"].get("error"), timeout=30, what="the watcher's failure row")
        refused = watcher_row()["stats"]["error"]
        assert "NFLOG group 11" in refused, refused
        for n in range(100):
            sender.submit(compact(EventRecord(
                ts=datetime.now(UTC), site="gwtest", source="dns", client_ip="10.98.0.2", host=f"dns{n}.example",
                verdict="block", rule_id="social-media", role="pupil", qtype="A", clause="§9", category="social_media",
            )))
        sender.flush()
        wait_for(lambda: hosts("dns") == {f"dns{n}.example" for n in range(100)}, timeout=30,
                 what="the DNS daemon's events written while the watcher cannot bind")
        # It keeps trying, each time after the pause its row announced.
        first_pause = float(watcher_row()["stats"]["retry_in_s"])
        wait_for(lambda: watcher_row()["stats"].get("failures_in_a_row", 0) >= 2, timeout=first_pause + 30,
                 what="a second attempt to bind")
        holder.close()
        pause = float(watcher_row()["stats"].get("retry_in_s", 0.0))
        wait_for(lambda: "events" in watcher_row()["stats"], timeout=pause + 30, what="the watcher bound at last")

        def dot_attempt() -> None:
            with contextlib.suppress(OSError):
                socket.create_connection(("198.51.100.200", 853), timeout=2).close()

        call_in(client, dot_attempt)
        wait_for(lambda: hosts("gateway") == {"198.51.100.200"}, timeout=10, what="the attempt recorded")
    finally:
        sender.stop(timeout=10)
        sending.close()  # the last sender gone: the process ends by itself, net watch with it
        holder.close()
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
            engine.dispose()
    assert process.returncode == 0, (tmp_path / "events.log").read_text()
    text = (tmp_path / "events.log").read_text()
    assert "net watch failed" in text and "starting it again in" in text
