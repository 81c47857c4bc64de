"""RADIUS accounting into the real identity daemon: packets per second and CPU per packet.

    .venv/bin/python -P bench/radius_accounting.py [--packets 5000] [--window 64]

Starts `schoolgate identity serve` on a loopback port with a fresh SQLite database, sends
Accounting-Requests like a Wi-Fi controller's (Starts for new sessions, then Interim-Updates
for the same sessions) with up to WINDOW unanswered at a time, and waits for every
Accounting-Response. Reports the rate and the daemon's CPU per packet (from /proc), next to a
reference measured in the same run: decoding, checking and answering the same packets in
this process with pyrad and no database (what the protocol alone costs).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from schoolgate.identity.radius import RadiusClient, decode, dictionary, reply

SECRET = b"bench-controller-secret"


def packets(count: int, sessions: int) -> list[bytes]:
    from pyrad.packet import AcctPacket

    made = []
    for i in range(count):
        packet = AcctPacket(code=4, id=i % 256, secret=SECRET, dict=dictionary())
        packet["Acct-Status-Type"] = "Start" if i < sessions else "Interim-Update"
        packet["Acct-Session-Id"] = f"s{i % sessions}"
        packet["User-Name"] = f"user{i % sessions}@school.example"
        packet["Calling-Station-Id"] = f"02-00-00-{i % sessions >> 16 & 255:02X}-{i % sessions >> 8 & 255:02X}-" \
            f"{i % sessions & 255:02X}"
        packet["Framed-IP-Address"] = str(ipaddress.IPv4Address(0x0A2A0000 + i % sessions))
        packet["NAS-Identifier"] = "bench-wlc"
        made.append(bytes(packet.RequestPacket()))
    return made


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reference(data: list[bytes]) -> tuple[float, float]:
    clients = [RadiusClient(ipaddress.ip_network("127.0.0.0/8"), SECRET)]
    now = datetime.now(UTC)
    wall, cpu = time.perf_counter(), time.process_time()
    for item in data:
        packet, _record = decode(item, "127.0.0.1", clients, now)
        reply(packet)
    return time.perf_counter() - wall, time.process_time() - cpu


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=5000)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    data = packets(args.packets, max(1, args.packets // 4))
    ref_wall, ref_cpu = reference(data)
    print(f"reference (pyrad decode, check, answer; no database): {len(data) / ref_wall:,.0f} packets/s, "
          f"{ref_cpu / len(data) * 1e6:.0f} µs CPU/packet")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        (Path(tmp) / "secret").write_bytes(SECRET + b"\n")
        config = Path(tmp) / "schoolgate.toml"
        config.write_text(f'policy = "policy.toml"\ndata_dir = "{tmp}"\n[site]\nid = "bench"\n'
                          f'[identity]\nradius_listen = "127.0.0.1:{port}"\nradius_clients = ["127.0.0.1"]\n'
                          f'radius_secret_file = "{tmp}/secret"\n')
        subprocess.run([sys.executable, "-P", "-m", "schoolgate", "db", "upgrade", "--config", str(config)],
                       check=True, capture_output=True)
        daemon = subprocess.Popen([sys.executable, "-P", "-m", "schoolgate", "identity", "serve", "--config",
                                   str(config)], stderr=subprocess.DEVNULL)
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(10)
            sock.sendto(data[0], ("127.0.0.1", port))  # wait until it answers: it is up
            deadline = time.monotonic() + 30
            while True:
                try:
                    sock.recv(4096)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "the identity daemon did not answer"
                    sock.sendto(data[0], ("127.0.0.1", port))
            before = cpu_seconds(daemon.pid)
            wall = time.perf_counter()
            sent = answered = 0
            while answered < len(data):
                while sent < len(data) and sent - answered < args.window:
                    sock.sendto(data[sent], ("127.0.0.1", port))
                    sent += 1
                sock.recv(4096)
                answered += 1
            wall = time.perf_counter() - wall
            used = cpu_seconds(daemon.pid) - before
        finally:
            daemon.terminate()
            daemon.wait(20)
    print(f"identity daemon (recorded in SQLite, then answered): {len(data) / wall:,.0f} packets/s, "
          f"{used / len(data) * 1e6:.0f} µs CPU/packet, {args.window} in flight")


if __name__ == "__main__":
    main()
