"""What each deployment mode does and does not protect, in plain words.

One source for every place that tells a school about its mode: `schoolgate doctor`, the
console's network page and dashboard notice, and the yearly review pack. A gap names what
the appliance cannot do in that mode and what the school's own firewall (or hardware) must
do instead, so a technician can act on it and a headteacher can see it was considered.
"""

from __future__ import annotations

from dataclasses import dataclass

from schoolgate.config import NetworkMode


@dataclass(frozen=True)
class Gap:
    """Something this mode leaves to the school's own equipment."""

    key: str  # stable id, e.g. "dns-bypass"
    what: str  # what is not done, said plainly
    instead: str  # what the school must do instead


@dataclass(frozen=True)
class ModeFacts:
    mode: NetworkMode
    title: str
    summary: str
    works: tuple[str, ...]
    gaps: tuple[Gap, ...] = ()


_COMMON_WORKS = (
    "Blocking by name for every device that asks the appliance's DNS, by the school's policy and timetable",
    "Logging every blocked attempt with device, address, person where known, time and site",
    "The console: access requests, reports, alerts for the DSL and the daily digest",
)

_GATEWAY_ONLY = (
    "DNS sent to any other server is answered by the appliance (and logged as an attempt to get round it)",
    "DNS-over-TLS, DNS-over-HTTPS to known resolvers and QUIC to watched services are refused",
    "Connections to watched services (social media) are checked by the proxy, even by address",
)

MODES: dict[NetworkMode, ModeFacts] = {
    NetworkMode.GATEWAY: ModeFacts(
        mode=NetworkMode.GATEWAY,
        title="Gateway",
        summary="The appliance is every device's router: the school's DHCP gives it as gateway and DNS.",
        works=(*_COMMON_WORKS, *_GATEWAY_ONLY),
    ),
    NetworkMode.BRIDGE: ModeFacts(
        mode=NetworkMode.BRIDGE,
        title="Bridge",
        summary=(
            "The appliance sits in the cable between the school's router and its switch. Nothing is "
            "re-addressed and DHCP is unchanged; DNS and watched connections are taken off the wire."
        ),
        works=(*_COMMON_WORKS, *_GATEWAY_ONLY),
        gaps=(
            Gap(
                "power",
                "If the appliance is switched off or fails, the cable through it is broken and the school is offline.",
                "Fit a network bypass switch (fail-open, with a heartbeat) around the appliance's two ports, "
                "or keep a patch lead by the cabinet to join router and switch directly.",
            ),
            Gap(
                "lan-dns",
                "DNS answered by a server on the school's side of the bridge (for example a Windows domain "
                "controller) never crosses the bridge, so those queries are neither filtered nor logged per device.",
                "Let DHCP hand out the router (or the appliance) as DNS, or make the domain controller "
                "forward to the appliance and give pupils' devices the appliance as DNS.",
            ),
        ),
    ),
    NetworkMode.DNS_ONLY: ModeFacts(
        mode=NetworkMode.DNS_ONLY,
        title="DNS only",
        summary=(
            "The appliance is only the school's DNS server (the address the school's DHCP hands out); "
            "the school's router stays the gateway, so no other traffic passes the appliance."
        ),
        works=_COMMON_WORKS,
        gaps=(
            Gap(
                "dns-bypass",
                "A device set to use another DNS server (for example 8.8.8.8) is not filtered or logged.",
                "On the school's firewall, allow DNS (UDP and TCP port 53) out only from the appliance's address.",
            ),
            Gap(
                "encrypted-dns",
                "DNS-over-TLS and DNS-over-HTTPS are not refused, so a browser or app can resolve names "
                "without the appliance.",
                "On the firewall, block TCP and UDP port 853 out, and HTTPS to the well-known DoH resolvers "
                "(1.1.1.1, 8.8.8.8, 9.9.9.9 and the others `schoolgate net show` lists), or use its "
                "application control to block DNS-over-HTTPS.",
            ),
            Gap(
                "by-address",
                "A site reached by its address, or through a name the device remembered, is not stopped: "
                "the proxy that checks watched services' connections needs the gateway.",
                "On the firewall, block the watched services' published address ranges for pupils' networks, "
                "or filter HTTPS by server name (SNI) there.",
            ),
            Gap(
                "quic",
                "QUIC (HTTP/3 over UDP 443) is not refused.",
                "On the firewall, block UDP ports 80 and 443 out, so browsers use TCP.",
            ),
        ),
    ),
}


def facts(mode: str | NetworkMode) -> ModeFacts:
    return MODES[NetworkMode(mode)]
