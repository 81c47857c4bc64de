"""Bounded background traffic from the lab's devices, and what the appliance recorded of it.

The appliance tests kill daemons while the school is busy: pupils look up and load blocked
pages, try another resolver, staff browse. Every attempt the appliance answered is counted,
so that what is missing from the events table afterwards can be counted too. Each stream
is bounded in count (`MAX_PER_STREAM`) and stops when asked.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dnslib import DNSRecord
from sqlalchemy import select

from schoolgate.lab.client import LabClient
from schoolgate.lab.netns import call_in
from schoolgate.lab.topology import GATEWAY_LAN_IP, device
from schoolgate.store.models import AccessEvent

MAX_PER_STREAM = 500
PUPIL = device("pupil")
# Destinations for the attempts to use another resolver: each one distinct, because net watch
# keeps one event per client, destination and port every 5 s.
OTHER_RESOLVERS = [f"192.0.2.{n}" for n in range(1, 255)] + [f"198.51.100.{n}" for n in range(1, 255)]
# The source ports of those attempts. The ruleset logs a flow's first packet only (its nat
# chain sees nothing else), and conntrack keeps an answered UDP flow for 30 s: one test's
# attempt that reused, by the kernel's random pick, the port an earlier test's attempt to the
# same address had used, rode the old flow unlogged and counted as lost. These ports lie
# below the kernel's ephemeral range (nothing else picks them) and go round in far more than
# 30 s at the streams' rate (12,768 ports, at most a few dozen attempts a second).
_GATEWAY_SOURCE_PORTS = itertools.cycle(range(20000, 32768))
_GATEWAY_SOURCE_PORTS_LOCK = threading.Lock()


def next_gateway_source_port() -> int:
    with _GATEWAY_SOURCE_PORTS_LOCK:
        return next(_GATEWAY_SOURCE_PORTS)


@dataclass
class Stream:
    """One device's bounded loop of attempts; `done` counts the ones the appliance answered."""

    name: str
    attempt: Callable[[int], bool]
    tried: int = 0
    done: list[int] = field(default_factory=list)
    started_at: dict[int, float] = field(default_factory=dict)  # when each attempt began
    started: float = 0.0
    ended: float = 0.0

    def run(self, stop: threading.Event, limit: int) -> None:
        self.started = time.monotonic()
        for index in range(limit):
            if stop.is_set():
                break
            self.tried += 1
            self.started_at[index] = time.monotonic()
            if self.attempt(index):
                self.done.append(index)
        self.ended = time.monotonic()

    @property
    def rate(self) -> float:
        return len(self.done) / max(0.001, self.ended - self.started)


class Traffic:
    """Pupil and staff devices busy at once, bounded in count (per stream) and time."""

    def __init__(self, lab: LabClient, tag: str) -> None:
        self.lab = lab
        self.tag = tag
        self.streams = [
            Stream("dns", self._pupil_lookup),
            Stream("proxy", self._pupil_page),
            Stream("gateway", self._pupil_other_resolver),
            Stream("staff", self._staff_lookup),
        ]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=s.run, args=(self._stop, min(MAX_PER_STREAM, len(OTHER_RESOLVERS))), daemon=True)
            for s in self.streams
        ]

    def host(self, stream: str, index: int) -> str:
        return f"{self.tag}-{stream[0]}{index}.facebook.com"

    def _pupil_lookup(self, index: int) -> bool:
        done = self.lab.run("pupil", ["dig", "+time=1", "+tries=1", "+short", self.host("dns", index)], timeout=5)
        return done.returncode == 0 and GATEWAY_LAN_IP in done.stdout.split()

    def _pupil_page(self, index: int) -> bool:
        url = f"http://{self.host('proxy', index)}/"
        done = self.lab.run("pupil", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", url],
                            timeout=6)
        return done.stdout.strip() == "403"

    def _pupil_other_resolver(self, index: int) -> bool:
        # Refused or redirected by the ruleset and logged to NFLOG by the kernel whatever the
        # daemons do: every attempt made is one the appliance should record.
        source = f"{PUPIL.ip}#{next_gateway_source_port()}"
        self.lab.run("pupil", ["dig", "-b", source, "+time=1", "+tries=1", "+short", f"@{OTHER_RESOLVERS[index]}",
                               "lab.example"], timeout=5)
        return True

    def _staff_lookup(self, index: int) -> bool:
        done = self.lab.run("staff", ["dig", "+time=1", "+tries=1", "+short", "www.bbc.co.uk"], timeout=5)
        return done.returncode == 0 and bool(done.stdout.strip())

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def stream(self, name: str) -> Stream:
        return next(s for s in self.streams if s.name == name)


def dns_answers(lab: LabClient, serial: int) -> bool:
    query = DNSRecord.question(f"probe{serial}.facebook.com").pack()

    def ask() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.15)
            sock.sendto(query, (GATEWAY_LAN_IP, 53))
            try:
                return bool(DNSRecord.parse(sock.recv(4096)).header.rcode == 0)
            except OSError:
                return False

    return call_in(lab.ns("pupil"), ask)


def recorded(lab: LabClient, traffic: Traffic, first_id: int) -> dict[str, set[str]]:
    """Which of the traffic's attempts the events table holds, per stream."""
    with lab.session() as session:
        rows = session.execute(
            select(AccessEvent.source, AccessEvent.host, AccessEvent.rule_id)
            .where(AccessEvent.id > first_id, AccessEvent.client_ip == PUPIL.ip)
        ).all()
    found: dict[str, set[str]] = {"dns": set(), "proxy": set(), "gateway": set()}
    prefix = f"{traffic.tag}-"
    for source, host, rule_id in rows:
        if source == "dns" and host.startswith(prefix + "d"):
            found["dns"].add(host)
        elif source == "proxy" and host.startswith(prefix + "p"):
            found["proxy"].add(host)
        elif source == "gateway" and rule_id == "gateway.redirect.dns" and host in OTHER_RESOLVERS:
            found["gateway"].add(host)
    return found


def settled(lab: LabClient, traffic: Traffic, first_id: int) -> dict[str, set[str]]:
    """The recorded attempts, once the writers have flushed (the count stops growing)."""
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 15
    while True:
        found = recorded(lab, traffic, first_id)
        total = sum(len(v) for v in found.values())
        if total != last:
            last, stable_since = total, time.monotonic()
        elif time.monotonic() - stable_since > 1.5 or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def began(traffic: Traffic, stream: str, item: str) -> float:
    """When the attempt behind an expected host (or resolver address) began."""
    index = OTHER_RESOLVERS.index(item) if stream == "gateway" else int(item.split(".", 1)[0].split("-")[1][1:])
    return traffic.stream(stream).started_at[index]


def expected(traffic: Traffic, stream: str) -> set[str]:
    done = traffic.stream(stream).done
    if stream == "gateway":
        return {OTHER_RESOLVERS[i] for i in done}
    return {traffic.host(stream, i) for i in done}
