"""Bridge and dns-only modes against a real kernel: `net apply` builds the bridge, the ruleset
diverts exactly what it must, and everything else crosses the bridge untouched."""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from schoolgate.gateway.nft import NftWatchedSets, live_watched_elements, loaded_families, read_counters
from schoolgate.lab.netns import call_in, wait_for

pytestmark = pytest.mark.root

SO_ORIGINAL_DST = 80


def bridge_config(tmp_path: Path, *, mode: str = "bridge") -> Path:
    config = tmp_path / "schoolgate.toml"
    network = (
        'mode = "bridge"\nlan_interface = "lan0"\nwan_interface = "wan0"\nbridge_interface = "br0"\n'
        'router_ipv4 = "10.97.0.1"\n'
        if mode == "bridge"
        else 'mode = "gateway"\nlan_interface = "lan0"\n'
    )
    config.write_text(
        f"""
policy = "policy.toml"
data_dir = "{tmp_path / "data"}"
[site]
id = "brtest"
[dns]
listen = ["10.97.0.2:5353"]
[proxy]
listen = "*:8081"
[network]
{network}appliance_ipv4 = "10.97.0.2"
lan_cidrs = ["10.97.0.0/24"]
watched_prefixes = ["198.51.100.128/25"]
doh_addresses = ["192.0.2.53"]
known_doh_addresses = false
nflog_group = 12
"""
    )
    return config


def schoolgate(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, sys.executable, "-P", "-m", "schoolgate", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def ip_json(namespace: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(["ip", "-n", namespace, "-j", *args], capture_output=True, text=True, check=True).stdout
    result: list[dict[str, object]] = json.loads(out)
    return result


def serve_in(
    namespace: str, kind: int, address: tuple[str, int], handle: Callable[[socket.socket], None]
) -> socket.socket:
    """A socket made in `namespace`, served by a thread of ours (closed by the test)."""
    sock = call_in(namespace, lambda: socket.socket(socket.AF_INET, kind))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    if kind == socket.SOCK_STREAM:
        sock.listen(16)
    threading.Thread(target=handle, args=(sock,), daemon=True).start()
    return sock


def tcp_server(reply: Callable[[socket.socket], bytes]) -> Callable[[socket.socket], None]:
    def loop(listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(reply(conn))
                    while data := conn.recv(4096):  # echo what follows
                        conn.sendall(data)
                except OSError:
                    pass

    return loop


def original_destination(conn: socket.socket) -> bytes:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, address = struct.unpack_from("!2xH4s", raw)
    return f"proxy saw {socket.inet_ntoa(address)}:{port}\n".encode()


@pytest.fixture
def applied(bridge_trio: tuple[str, str, str], tmp_path: Path) -> Iterator[tuple[str, str, str, Path]]:
    client, appliance, router = bridge_trio
    config = bridge_config(tmp_path)
    schoolgate(appliance, "net", "apply", "--config", str(config))
    # Links that have just come up lose their first frames for a moment: wait for the cable.
    wait_for(lambda: subprocess.run(["ip", "netns", "exec", client, "ping", "-c", "1", "-W", "1", "10.97.0.1"],
                                    capture_output=True, check=False).returncode == 0,
             timeout=10, what="the bridge to carry the client's traffic")
    yield client, appliance, router, config


def test_apply_builds_the_bridge_and_is_idempotent(applied: tuple[str, str, str, Path]) -> None:
    _client, appliance, _router, config = applied
    links = {link["ifname"]: link for link in ip_json(appliance, "-d", "link", "show")}
    assert links["br0"]["linkinfo"]["info_kind"] == "bridge"  # type: ignore[index]
    assert links["lan0"]["master"] == links["wan0"]["master"] == "br0"
    assert links["br0"]["address"] == "02:97:00:00:00:02"  # pinned to the LAN port's
    addresses = ip_json(appliance, "addr", "show", "br0")[0]["addr_info"]
    assert any(a["local"] == "10.97.0.2" and a["prefixlen"] == 24 for a in addresses)  # type: ignore[index, union-attr]
    routes = ip_json(appliance, "route", "show", "default")
    assert routes and routes[0]["gateway"] == "10.97.0.1"
    sysctl = subprocess.run(["ip", "netns", "exec", appliance, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables"],
                            capture_output=True, text=True, check=False).stdout.strip()
    assert sysctl in ("0", "")  # off, or no br_netfilter in this kernel at all
    assert sorted(call_in(appliance, loaded_families)) == ["bridge", "inet"]
    again = schoolgate(appliance, "net", "apply", "--config", str(config))
    assert "changed:" not in again.stdout and "bridge mode" in again.stdout


def test_dns_to_the_router_is_answered_by_the_appliance(applied: tuple[str, str, str, Path]) -> None:
    from dnslib import RR, A, DNSRecord

    client, appliance, _router, _config = applied

    def answer(sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                return
            query = DNSRecord.parse(data)
            reply = query.reply()
            reply.add_answer(RR(query.q.qname, rdata=A("10.97.0.2")))
            sock.sendto(reply.pack(), peer)

    server = serve_in(appliance, socket.SOCK_DGRAM, ("10.97.0.2", 5353), answer)
    try:
        done = subprocess.run(["ip", "netns", "exec", client, "dig", "+short", "+time=2", "+tries=1", "@10.97.0.1",
                               "www.facebook.com"], capture_output=True, text=True, check=False)
    finally:
        server.close()
    assert done.stdout.split() == ["10.97.0.2"], done.stdout + done.stderr
    # The reply came back through the bridge, and the appliance now knows the client's MAC.
    neighbours = ip_json(appliance, "neigh", "show", "dev", "br0")
    assert {"dst": "10.97.0.11", "lladdr": "02:97:00:00:00:11"}.items() <= next(
        n for n in neighbours if n["dst"] == "10.97.0.11").items()
    assert call_in(appliance, read_counters)["dns_redirected"][0] >= 1


def test_watched_connections_go_to_the_proxy_and_running_ones_stay_put(
    applied: tuple[str, str, str, Path],
) -> None:
    client, appliance, router, _config = applied
    proxy = serve_in(appliance, socket.SOCK_STREAM, ("10.97.0.2", 8081), tcp_server(original_destination))
    server = serve_in(router, socket.SOCK_STREAM, ("198.51.100.7", 443), tcp_server(lambda _c: b"real server\n"))
    try:
        def talk(conn: socket.socket, text: bytes) -> bytes:
            conn.sendall(text)
            return conn.recv(100)

        early = call_in(client, lambda: socket.create_connection(("198.51.100.7", 443), timeout=3))
        assert early.recv(100) == b"real server\n"
        # DNS learns the address is a watched service's while that connection runs.
        def learn() -> None:
            sets = NftWatchedSets(family="bridge")
            sets.add(["198.51.100.7"], 300)
            sets.flush()

        call_in(appliance, learn)
        assert [e.address for e in call_in(appliance, lambda: live_watched_elements("bridge"))] == ["198.51.100.7"]
        # The running connection is left alone; a new one is the proxy's, with its destination.
        assert talk(early, b"still here\n") == b"still here\n"
        early.close()
        late = call_in(client, lambda: socket.create_connection(("198.51.100.7", 443), timeout=3))
        assert late.recv(100) == b"proxy saw 198.51.100.7:443\n"
        assert talk(late, b"and the rest of it\n") == b"and the rest of it\n"  # every packet follows
        late.close()
        # A watched prefix from the configuration behaves the same without DNS.
        prefixed = call_in(client, lambda: socket.create_connection(("198.51.100.200", 80), timeout=3))
        assert prefixed.recv(100) == b"proxy saw 198.51.100.200:80\n"
        prefixed.close()
    finally:
        proxy.close()
        server.close()
    counters = call_in(appliance, read_counters)
    assert counters["proxy_redirected"][0] == 2
    assert counters["forwarded_connections"][0] >= 1  # the early one, bridged


def test_refusals_are_immediate_logged_and_counted(applied: tuple[str, str, str, Path], refusal_probe: Any) -> None:
    from schoolgate.gateway.nflog import NflogSocket

    client, appliance, _router, _config = applied
    reader = call_in(appliance, lambda: NflogSocket(12))
    reader.settimeout(3)

    outcomes = [
        call_in(client, lambda: refusal_probe.tcp("198.51.100.7", 853)),
        call_in(client, lambda: refusal_probe.tcp("192.0.2.53", 443)),
        call_in(client, lambda: refusal_probe.quic("198.51.100.150")),
    ]
    try:
        seen = []
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            seen += reader.receive()
    finally:
        reader.close()
    for outcome, seconds in outcomes:
        assert outcome in ("ConnectionRefusedError", "OSError"), outcome
        assert seconds < 1.0, outcomes  # rejected, not dropped: no timeout for the browser
    assert [(a.kind, a.client_ip, a.dest_ip, a.dest_port, a.protocol, a.mac) for a in seen] == [
        ("dot", "10.97.0.11", "198.51.100.7", 853, "tcp", "02:97:00:00:00:11"),
        ("doh", "10.97.0.11", "192.0.2.53", 443, "tcp", "02:97:00:00:00:11"),
        ("quic", "10.97.0.11", "198.51.100.150", 443, "udp", "02:97:00:00:00:11"),
    ]
    counters = call_in(appliance, read_counters)
    assert (counters["refused_dot"][0], counters["refused_doh"][0], counters["refused_quic"][0]) == (1, 1, 1)


def test_dns_to_another_server_is_logged_as_a_bypass(applied: tuple[str, str, str, Path]) -> None:
    from schoolgate.gateway.nflog import NflogSocket

    client, appliance, _router, _config = applied
    reader = call_in(appliance, lambda: NflogSocket(12))
    reader.settimeout(3)
    for server in ("10.97.0.1", "198.51.100.7"):  # the router (handed out by DHCP), then another
        subprocess.run(["ip", "netns", "exec", client, "dig", "+time=1", "+tries=1", f"@{server}", "example.org"],
                       capture_output=True, check=False)
    try:
        seen = reader.receive()
    finally:
        reader.close()
    assert [(a.kind, a.dest_ip, a.dest_port) for a in seen] == [("dns-bypass", "198.51.100.7", 53)]


def test_ordinary_traffic_crosses_the_bridge_untouched(applied: tuple[str, str, str, Path]) -> None:
    client, appliance, router, _config = applied
    server = serve_in(
        router, socket.SOCK_STREAM, ("10.97.0.1", 8000), tcp_server(lambda c: f"{c.getpeername()[0]}\n".encode())
    )
    try:
        conn = call_in(client, lambda: socket.create_connection(("10.97.0.1", 8000), timeout=3))
        assert conn.recv(100) == b"10.97.0.11\n"  # the router sees the device's own address
        conn.close()
    finally:
        server.close()
    ping = subprocess.run(["ip", "netns", "exec", client, "ping", "-c", "1", "-W", "2", "198.51.100.7"],
                          capture_output=True, text=True, check=False)
    assert ping.returncode == 0, ping.stdout
    # The appliance's own IP stack never saw it: no conntrack entry for the device's flow.
    tracked = subprocess.run(["ip", "netns", "exec", appliance, "cat", "/proc/net/nf_conntrack"],
                             capture_output=True, text=True, check=False).stdout
    assert "dport=8000" not in tracked


def test_switching_mode_replaces_the_tables_and_down_removes_them(applied: tuple[str, str, str, Path],
                                                                   tmp_path: Path) -> None:
    _client, appliance, _router, config = applied
    def learn() -> None:
        sets = NftWatchedSets(family="bridge")
        sets.add(["198.51.100.9"], 300)
        sets.flush()

    call_in(appliance, learn)
    (tmp_path / "gw").mkdir()
    gateway = bridge_config(tmp_path / "gw", mode="gateway")
    schoolgate(appliance, "net", "apply", "--rules-only", "--config", str(gateway))
    assert call_in(appliance, loaded_families) == ["inet"]
    # What DNS had learnt moved with the mode: the gateway's inet set has it now.
    assert [e.address for e in call_in(appliance, lambda: live_watched_elements("inet"))] == ["198.51.100.9"]
    schoolgate(appliance, "net", "apply", "--rules-only", "--config", str(config))
    assert sorted(call_in(appliance, loaded_families)) == ["bridge", "inet"]
    schoolgate(appliance, "net", "down", "--config", str(config))
    assert call_in(appliance, loaded_families) == []


def test_dns_only_mode_handles_only_the_appliances_own_ports(bridge_trio: tuple[str, str, str],
                                                             tmp_path: Path) -> None:
    client, appliance, _router = bridge_trio
    config = bridge_config(tmp_path)
    text = config.read_text().replace('mode = "bridge"', 'mode = "dns-only"')
    config.write_text(text.replace('wan_interface = "wan0"\nbridge_interface = "br0"\n', ""))
    # dns-only: the appliance is a plain host; give its port a link to the client for the test.
    applied = schoolgate(appliance, "net", "apply", "--config", str(config))
    assert "address 10.97.0.2/24 on lan0" in applied.stdout and "dns-only mode" in applied.stdout
    assert call_in(appliance, loaded_families) == ["inet"]
    ruleset = subprocess.run(["ip", "netns", "exec", appliance, "nft", "list", "table", "inet", "schoolgate"],
                             capture_output=True, text=True, check=True).stdout
    assert "ip daddr 10.97.0.2" in ruleset and "watched" not in ruleset and "masquerade" not in ruleset
    proxy = serve_in(appliance, socket.SOCK_STREAM, ("10.97.0.2", 8081), tcp_server(original_destination))
    try:
        conn = call_in(client, lambda: socket.create_connection(("10.97.0.2", 443), timeout=3))
        assert conn.recv(100) == b"proxy saw 10.97.0.2:443\n"  # the block address reaches the proxy
        conn.close()
    finally:
        proxy.close()
