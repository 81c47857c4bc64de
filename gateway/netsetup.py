"""The gateway's links, addresses, sysctls and pinned neighbours, through pyroute2.

Every step first looks at what is there and changes only what differs, so running
`schoolgate net apply` at every boot (and again by hand) is safe.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")


class NetSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class InterfacePlan:
    lan_interface: str
    lan_addresses: tuple[str, ...]  # "10.77.0.1/24", "fd77::1/64"
    wan_interface: str = ""
    ipv6: bool = False
    pinned_neighbours: tuple[tuple[str, str], ...] = field(default=())  # (ip, mac)


def lan_addresses(appliance: Sequence[str], lan_cidrs: Sequence[str]) -> tuple[str, ...]:
    """The appliance's addresses with the prefix length of the LAN they sit in."""
    networks = [ipaddress.ip_network(c, strict=False) for c in lan_cidrs]
    result = []
    for text in appliance:
        if not text:
            continue
        address = ipaddress.ip_address(text)
        inside = [n for n in networks if n.version == address.version and address in n]
        prefix = inside[0].prefixlen if inside else address.max_prefixlen
        result.append(f"{address}/{prefix}")
    return tuple(result)


def desired_sysctls(plan: InterfacePlan) -> dict[str, str]:
    """Forwarding on; no ICMP redirects that would teach clients to bypass the gateway."""
    lan = plan.lan_interface.replace(".", "/")
    wanted = {
        "net/ipv4/ip_forward": "1",
        f"net/ipv4/conf/{lan}/send_redirects": "0",
        "net/ipv4/conf/all/send_redirects": "0",
        # `redirect` answers on the LAN address: no route_localnet is needed.
    }
    if plan.ipv6:
        wanted["net/ipv6/conf/all/forwarding"] = "1"
    return wanted


def apply_sysctls(values: dict[str, str], root: Path = PROC_SYS) -> list[str]:
    changed = []
    for key, value in values.items():
        path = root / key
        try:
            current = path.read_text().strip()
        except FileNotFoundError as err:
            raise NetSetupError(f"sysctl {key.replace('/', '.')} does not exist here") from err
        if current != value:
            path.write_text(value + "\n")
            changed.append(f"{key.replace('/', '.')} = {value}")
    return changed


def _index(ipr: object, name: str) -> int:
    found = ipr.link_lookup(ifname=name)  # type: ignore[attr-defined]
    if not found:
        raise NetSetupError(f"interface {name!r} does not exist")
    return int(found[0])


def apply_interfaces(plan: InterfacePlan) -> list[str]:
    """Bring the LAN (and WAN) up, add missing LAN addresses, pin registered neighbours."""
    from pyroute2 import IPRoute

    changes: list[str] = []
    with IPRoute() as ipr:
        lan = _index(ipr, plan.lan_interface)
        links = [lan] + ([_index(ipr, plan.wan_interface)] if plan.wan_interface else [])
        for index in links:
            (link,) = ipr.get_links(index)
            if not link["flags"] & 1:  # IFF_UP
                ipr.link("set", index=index, state="up")
                changes.append(f"link {link.get_attr('IFLA_IFNAME')} up")
        present = {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=lan)
        }
        for cidr in plan.lan_addresses:
            interface = ipaddress.ip_interface(cidr)
            if str(interface) in present:
                continue
            ipr.addr("add", index=lan, address=str(interface.ip), prefixlen=interface.network.prefixlen)
            changes.append(f"address {interface} on {plan.lan_interface}")
        changes.extend(_pin_neighbours(ipr, lan, plan.pinned_neighbours))
    return changes


def _pin_neighbours(ipr: object, index: int, pairs: Iterable[tuple[str, str]]) -> list[str]:
    """Registered devices with a fixed address get a permanent neighbour entry.

    Identity is looked up from the neighbour table (IP -> MAC). A permanent entry means a
    device that borrows a staff laptop's address gets no replies from the gateway, so it
    cannot take on that laptop's role.
    """
    nud_permanent = 0x80
    changes = []
    for ip, mac in pairs:
        family = 10 if ":" in ip else 2
        ipr.neigh(  # type: ignore[attr-defined]
            "replace", dst=ip, lladdr=mac.lower(), ifindex=index, state=nud_permanent, family=family
        )
        changes.append(f"neighbour {ip} -> {mac.lower()} (permanent)")
    return changes
