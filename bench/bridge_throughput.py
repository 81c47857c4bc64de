"""Bridge mode's cost: throughput and CPU of the schoolgate bridge against a plain Linux bridge.

    .venv/bin/python -P bench/bridge_throughput.py [--seconds 5] [--rounds 3]   (root; installs iperf3)

Builds client -- [bridge lan0|wan0] -- server in private namespaces, then alternates rounds:
the bridge bare (the reference, measured in the same run), and with the ruleset
`schoolgate net apply` loads in bridge mode (the frames of ordinary traffic pass its divert
chain and go on through the kernel). Each round runs iperf3 for bulk TCP (one stream) and for
small UDP packets (64 bytes, as fast as it can send), and reads the CPU the whole machine
spent from /proc/stat. Prints Gbit/s, packets/s, and CPU per GB and per million packets.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from schoolgate.gateway.ruleset import plan_from_config, render_ruleset
from schoolgate.lab.packages import ensure_programs

PREFIX = f"sgbb{os.getpid() % 10000}"
CLIENT, BRIDGE, SERVER = f"{PREFIX}c", f"{PREFIX}b", f"{PREFIX}s"


def sh(*argv: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, input=input_text)


def ns(name: str, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", name, *argv, **kwargs)  # type: ignore[arg-type]


def build() -> None:
    for name in (CLIENT, BRIDGE, SERVER):
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "netns", "add", name)
        ns(name, "ip", "link", "set", "lo", "up")
    sh("ip", "link", "add", "eth0", "netns", CLIENT, "type", "veth", "peer", "name", "lan0", "netns", BRIDGE)
    sh("ip", "link", "add", "wan0", "netns", BRIDGE, "type", "veth", "peer", "name", "eth0", "netns", SERVER)
    ns(BRIDGE, "ip", "link", "add", "br0", "type", "bridge")
    for port in ("lan0", "wan0"):
        ns(BRIDGE, "ip", "link", "set", port, "master", "br0")
        ns(BRIDGE, "ip", "link", "set", port, "up")
    ns(BRIDGE, "ip", "link", "set", "br0", "up")
    ns(BRIDGE, "ip", "addr", "add", "10.96.0.2/24", "dev", "br0")
    ns(BRIDGE, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0", check=False)
    ns(BRIDGE, "sysctl", "-qw", "net.bridge.bridge-nf-call-ip6tables=0", check=False)
    for name, address in ((CLIENT, "10.96.0.11/24"), (SERVER, "10.96.0.1/24")):
        ns(name, "ip", "addr", "add", address, "dev", "eth0")
        ns(name, "ip", "link", "set", "eth0", "up")


def ruleset() -> str:
    mac = ns(BRIDGE, "cat", "/sys/class/net/br0/address").stdout.strip()
    plan = plan_from_config(
        mode="bridge", lan_interface="lan0", wan_interface="wan0", bridge_interface="br0", bridge_mac=mac,
        router_ipv4="10.96.0.1", dns_listen=["10.96.0.2:53"], proxy_listen="10.96.0.2:8081",
        appliance_ipv4="10.96.0.2", appliance_ipv6="", watched_prefixes=["157.240.0.0/16"],
        doh_addresses=[], lan_cidrs=["10.96.0.0/24"],
    )
    return render_ruleset(plan)


def busy_jiffies() -> int:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def measure(seconds: int, udp: bool) -> tuple[float, float, float]:
    """(bits/s, packets/s, busy CPU seconds) of one iperf3 run client -> server."""
    extra = ["-u", "-b", "0", "-l", "64"] if udp else []
    before, started = busy_jiffies(), time.monotonic()
    done = ns(CLIENT, "iperf3", "-c", "10.96.0.1", "-t", str(seconds), "-J", *extra)
    cpu = (busy_jiffies() - before) / os.sysconf("SC_CLK_TCK")
    result = json.loads(done.stdout)["end"]
    received = result["sum"] if udp else result["sum_received"]
    packets = received.get("packets", 0) / max(time.monotonic() - started, 1e-9) if udp else 0.0
    return float(received["bits_per_second"]), packets, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if ensure_programs({"iperf3": "iperf3"}):
        raise SystemExit("cannot run without iperf3")
    build()
    server = subprocess.Popen(["ip", "netns", "exec", SERVER, "iperf3", "-s"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    results: dict[str, list[tuple[float, float, float, float, float, float]]] = {"plain bridge": [],
                                                                               "schoolgate bridge": []}
    try:
        for _round in range(args.rounds):
            for variant, rows in results.items():
                if variant == "schoolgate bridge":
                    ns(BRIDGE, "nft", "-f", "-", input_text=ruleset())
                tcp_bps, _, tcp_cpu = measure(args.seconds, udp=False)
                udp_bps, udp_pps, udp_cpu = measure(args.seconds, udp=True)
                rows.append((tcp_bps, tcp_cpu, udp_bps, udp_pps, udp_cpu, float(args.seconds)))
                ns(BRIDGE, "nft", "delete", "table", "bridge", "schoolgate", check=False)
                ns(BRIDGE, "nft", "delete", "table", "inet", "schoolgate", check=False)
    finally:
        server.terminate()
        server.wait(10)
        for name in (CLIENT, BRIDGE, SERVER):
            sh("ip", "netns", "del", name, check=False)
    for variant, rows in results.items():
        count = len(rows)
        tcp = sum(r[0] for r in rows) / count
        tcp_cpu_per_gb = sum(r[1] / (r[0] * r[5] / 8 / 1e9) for r in rows) / count
        pps = sum(r[3] for r in rows) / count
        udp_cpu_per_mpkt = sum(r[4] / max(r[3] * r[5] / 1e6, 1e-9) for r in rows) / count
        print(f"{variant:18} TCP {tcp / 1e9:6.2f} Gbit/s, {tcp_cpu_per_gb:5.2f} CPU s/GB; "
              f"UDP 64 B {pps:10,.0f} packets/s, {udp_cpu_per_mpkt:5.2f} CPU s per million packets")


if __name__ == "__main__":
    main()
