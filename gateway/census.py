"""The gateway's census: which devices on the LAN it forwards for, and which talk to VPN ports.

In gateway mode every new connection a device makes passes the `guard` chain once. Two dynamic
sets remember, per device (address and MAC), when it last made one and how many, and per device
and port, connections to the ports VPNs use. The kernel keeps them (an element lives a day after
its last update), so nothing in Python sees the traffic; `read_census` lists them, with the
neighbour table, for the coverage watchdog (schoolgate.services.coverage). `schoolgate net watch`
takes a census every minute; `schoolgate net census` takes one now.

Bridge and dns-only modes have no `guard` chain of their own (the school's router forwards), so
their coverage comes from the neighbour table and DHCP leases only.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)

CLIENTS_V4 = "lan_clients4"
CLIENTS_V6 = "lan_clients6"
VPN_V4 = "vpn_clients4"
VPN_V6 = "vpn_clients6"
CENSUS_SETS = (CLIENTS_V4, CLIENTS_V6, VPN_V4, VPN_V6)
REMEMBER_S = 86_400  # an element lives this long after the device's last new connection
# Ports VPN protocols use: OpenVPN, WireGuard, IPsec (IKE and NAT traversal), L2TP, PPTP.
VPN_PORTS: Mapping[int, str] = {1194: "OpenVPN", 51820: "WireGuard", 500: "IPsec", 4500: "IPsec",
                                1701: "L2TP", 1723: "PPTP"}
CENSUS_INTERVAL_S = 60.0


def census_declarations() -> list[str]:
    """The dynamic sets, for the `inet schoolgate` table (gateway mode)."""
    out = []
    for name, kind in ((CLIENTS_V4, "ipv4_addr . ether_addr"), (CLIENTS_V6, "ipv6_addr . ether_addr"),
                       (VPN_V4, "ipv4_addr . ether_addr . inet_proto . inet_service"),
                       (VPN_V6, "ipv6_addr . ether_addr . inet_proto . inet_service")):
        out.append(f"\tset {name} {{\n\t\ttype {kind}; flags dynamic, timeout; timeout {REMEMBER_S}s; "
                   f"size 65535;\n\t}}")
    return out


def census_rules(lan: str) -> list[str]:
    """Rules for the `guard` chain, after established connections have left it: one update per
    new connection, in the kernel."""
    ports = ", ".join(str(p) for p in sorted(VPN_PORTS))
    return [
        f"\t\t{lan} update @{CLIENTS_V4} {{ ip saddr . ether saddr counter }}",
        f"\t\t{lan} update @{CLIENTS_V6} {{ ip6 saddr . ether saddr counter }}",
        f"\t\t{lan} meta l4proto {{ tcp, udp }} th dport {{ {ports} }} "
        f"update @{VPN_V4} {{ ip saddr . ether saddr . meta l4proto . th dport counter }}",
        f"\t\t{lan} meta l4proto {{ tcp, udp }} th dport {{ {ports} }} "
        f"update @{VPN_V6} {{ ip6 saddr . ether saddr . meta l4proto . th dport counter }}",
    ]


@dataclass(frozen=True, slots=True)
class Forwarding:
    ip: str
    mac: str
    connections: int
    last_at: datetime  # when the element was last updated (its timeout restarted)


@dataclass(frozen=True, slots=True)
class VpnUse:
    ip: str
    mac: str
    protocol: str  # tcp, udp
    port: int
    connections: int
    last_at: datetime

    @property
    def label(self) -> str:
        return f"{VPN_PORTS.get(self.port, 'VPN')} ({self.protocol}/{self.port})"


@dataclass(frozen=True)
class Census:
    """What the kernel knows about the LAN's devices at `at`."""

    at: datetime
    forwarding: list[Forwarding]
    vpn: list[VpnUse]
    neighbours: dict[str, str]  # ip -> MAC, in the LAN's networks


def _values(element: Any) -> tuple[list[Any], int, int]:
    """(concatenated values, packets, seconds until it expires) of one nft JSON set element."""
    inner = element.get("elem", element) if isinstance(element, dict) else element
    value = inner.get("val", inner) if isinstance(inner, dict) else inner
    parts = value.get("concat", [value]) if isinstance(value, dict) else [value]
    counter = inner.get("counter", {}) if isinstance(inner, dict) else {}
    expires = int(inner.get("expires", 0)) if isinstance(inner, dict) else 0
    return list(parts), int(counter.get("packets", 0)), expires


def parse_census(sets: Mapping[str, list[dict[str, Any]]], now: datetime,
                 neighbours: Mapping[str, str], lan: Iterable[str] = ()) -> Census:
    """The census from `nft -j list set` output of each census set (pure: tested without root).

    An element's last update is `now - (timeout - expires)`: its timeout restarts at every update.
    """
    networks = [ipaddress.ip_network(c, strict=False) for c in lan]

    def on_lan(ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return not networks or any(address in n for n in networks if n.version == address.version)

    forwarding: list[Forwarding] = []
    vpn: list[VpnUse] = []
    for name, items in sets.items():
        for item in items:
            body = item.get("set")
            if not isinstance(body, dict):
                continue
            timeout = int(body.get("timeout", REMEMBER_S))
            for element in body.get("elem", []):
                try:
                    parts, packets, expires = _values(element)
                    last = now - timedelta(seconds=max(0, timeout - expires))
                    ip, mac = str(parts[0]), str(parts[1]).lower()
                    if name in (CLIENTS_V4, CLIENTS_V6):
                        forwarding.append(Forwarding(ip, mac, packets, last))
                    else:
                        vpn.append(VpnUse(ip, mac, str(parts[2]), int(parts[3]), packets, last))
                except (IndexError, KeyError, TypeError, ValueError):
                    log.warning("census: an element of %s could not be read: %r", name, element)
    return Census(
        at=now,
        forwarding=[f for f in forwarding if on_lan(f.ip)],
        vpn=[v for v in vpn if on_lan(v.ip)],
        neighbours={ip: mac for ip, mac in neighbours.items() if on_lan(ip)},
    )


def read_census(now: datetime, *, lan: Iterable[str] = (),
                neighbours: Callable[[], Mapping[str, str]] | None = None) -> Census:
    """Take a census of the running gateway (needs CAP_NET_ADMIN, as `net watch` has)."""
    from schoolgate.gateway.nft import nft_json
    from schoolgate.gateway.sets import NFT_TABLE

    sets = {name: nft_json("list", "set", "inet", NFT_TABLE, name) for name in CENSUS_SETS}
    if neighbours is None:
        from schoolgate.identity.neighbours import netlink_dump, parse_neighbours

        table = parse_neighbours(netlink_dump())
    else:
        table = dict(neighbours())
    return parse_census(sets, now, table, lan)


def record(config: Any, sessions: Any, census: Census) -> int:
    """Write a census into the coverage table (schoolgate.services.coverage); returns rows touched."""
    from schoolgate.services.coverage import record_census

    with sessions() as session:
        touched = record_census(session, config.site.id, census)
        session.commit()
    return touched


class CensusTaker:
    """Takes a census every `interval` seconds from `net watch`'s loop (gateway mode only)."""

    def __init__(self, config: Any, sessions: Any, clock: Any, *, interval: float = CENSUS_INTERVAL_S) -> None:
        self.config = config
        self.sessions = sessions
        self.clock = clock
        self.interval = interval
        self.enabled = getattr(config.network, "mode", "gateway") == "gateway"
        self._next = 0.0
        self.taken = 0

    def poll(self, monotonic: float) -> None:
        if not self.enabled or monotonic < self._next:
            return
        self._next = monotonic + self.interval
        try:
            census = read_census(self.clock.now(), lan=self._lan())
            record(self.config, self.sessions, census)
            self.taken += 1
        except Exception as err:  # the census must never stop circumvention logging
            log.warning("census not taken: %s", err)

    def _lan(self) -> list[str]:
        return list(self.config.network.lan_cidrs)
