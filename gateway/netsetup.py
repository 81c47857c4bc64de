"""The appliance's links, addresses, sysctls and pinned neighbours, through pyroute2.

Every step first looks at what is there and changes only what differs, so running
`schoolgate net apply` at every boot (and again by hand) is safe.

- gateway: the LAN interface gets the appliance's address; forwarding is on.
- bridge: the bridge is made (if missing) with the two ports in it, its MAC pinned to the
  LAN port's (the bridge ruleset sends diverted frames to that address, so it must not move
  when a port is re-plugged), the appliance's own address on the bridge and a default route
  via the school's router. No other machine's address changes.
- dns-only: the LAN interface gets the appliance's address and a default route via the router.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PROC_SYS = Path("/proc/sys")
PROBE_LABEL = "lo:sgprobe"


class NetSetupError(RuntimeError):
    pass


@dataclass(frozen=True)
class InterfacePlan:
    lan_interface: str
    lan_addresses: tuple[str, ...]  # "10.77.0.1/24", "fd77::1/64"
    wan_interface: str = ""
    ipv6: bool = False
    pinned_neighbours: tuple[tuple[str, str], ...] = field(default=())  # (ip, mac)
    mode: str = "gateway"
    bridge_interface: str = ""  # bridge mode
    router_ipv4: str = ""  # bridge, dns-only: the default route, if the system has none
    # The self-test's addresses in each role's network (on loopback, labelled PROBE_LABEL).
    probe_addresses: tuple[str, ...] = field(default=())

    @property
    def address_interface(self) -> str:
        """Where the appliance's own addresses live: the bridge in bridge mode."""
        return self.bridge_interface if self.mode == "bridge" else self.lan_interface


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


def desired_sysctls(plan: InterfacePlan, root: Path = PROC_SYS) -> dict[str, str]:
    wanted = _mode_sysctls(plan, root)
    if plan.probe_addresses:
        # Answer ARP only for the addresses of the interface it arrives on: the self-test's
        # probe addresses (on loopback) are never announced on the school's network.
        wanted[f"net/ipv4/conf/{plan.address_interface.replace('.', '/')}/arp_ignore"] = "1"
    return wanted


def _mode_sysctls(plan: InterfacePlan, root: Path) -> dict[str, str]:
    """Gateway: forwarding on; no ICMP redirects that would teach clients to bypass the gateway.

    Bridge: bridged frames are not handed to the IP hooks (br_netfilter, where the kernel has
    it): the bridge ruleset diverts what it needs, and every other frame is bridged without
    paying for conntrack. DNS-only: nothing to change.
    """
    if plan.mode == "bridge":
        keys = ("net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables")
        return {key: "0" for key in keys if (root / key).exists()}
    if plan.mode == "dns-only":
        return {}
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
    """Bring the links up, make the bridge (bridge mode), add missing addresses, pin neighbours."""
    from pyroute2 import IPRoute

    changes: list[str] = []
    with IPRoute() as ipr:
        if plan.mode == "bridge":
            changes.extend(_ensure_bridge(ipr, plan))
        lan = _index(ipr, plan.lan_interface)
        links = [lan] + ([_index(ipr, plan.wan_interface)] if plan.wan_interface else [])
        if plan.mode == "bridge":
            links.append(_index(ipr, plan.bridge_interface))
        for index in links:
            (link,) = ipr.get_links(index)
            if not link["flags"] & 1:  # IFF_UP
                ipr.link("set", index=index, state="up")
                changes.append(f"link {link.get_attr('IFLA_IFNAME')} up")
        home = _index(ipr, plan.address_interface)
        present = {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=home)
        }
        for cidr in plan.lan_addresses:
            interface = ipaddress.ip_interface(cidr)
            if str(interface) in present:
                continue
            ipr.addr("add", index=home, address=str(interface.ip), prefixlen=interface.network.prefixlen)
            changes.append(f"address {interface} on {plan.address_interface}")
        if plan.router_ipv4 and plan.mode in ("bridge", "dns-only"):
            changes.extend(_ensure_default_route(ipr, plan.router_ipv4))
        changes.extend(_pin_neighbours(ipr, home, plan.pinned_neighbours))
        changes.extend(_probe_addresses(ipr, plan.probe_addresses))
    return changes


def _probe_addresses(ipr: object, addresses: tuple[str, ...]) -> list[str]:
    """Loopback holds exactly the self-test's probe addresses (each a /32, labelled as ours).

    On loopback, not a dummy interface: every kernel has one, and an address there is the
    appliance's own without being on any wire. The label tells ours from any other.
    """
    changes: list[str] = []
    index = _index(ipr, "lo")
    present = {
        a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)  # type: ignore[attr-defined]
        if a.get_attr("IFA_LABEL") == PROBE_LABEL
    }
    wanted = {str(ipaddress.ip_address(a)) for a in addresses}
    for address in sorted(wanted - present):
        ipr.addr("add", index=index, address=address, prefixlen=32, label=PROBE_LABEL)  # type: ignore[attr-defined]
        changes.append(f"address {address}/32 on lo (self-test)")
    for address in sorted(present - wanted):
        ipr.addr("del", index=index, address=address, prefixlen=32)  # type: ignore[attr-defined]
        changes.append(f"address {address}/32 removed from lo (self-test)")
    return changes


def _ensure_bridge(ipr: object, plan: InterfacePlan) -> list[str]:
    """The bridge with both ports in it, its MAC pinned to the LAN port's."""
    changes: list[str] = []
    found = ipr.link_lookup(ifname=plan.bridge_interface)  # type: ignore[attr-defined]
    if not found:
        ipr.link("add", ifname=plan.bridge_interface, kind="bridge")  # type: ignore[attr-defined]
        changes.append(f"bridge {plan.bridge_interface} created")
    bridge = _index(ipr, plan.bridge_interface)
    (link,) = ipr.get_links(bridge)  # type: ignore[attr-defined]
    kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if kind != "bridge":
        raise NetSetupError(f"{plan.bridge_interface} exists and is not a bridge ({kind or 'a plain interface'})")
    lan_mac = bridge_mac_for(plan.lan_interface, ipr)
    if str(link.get_attr("IFLA_ADDRESS")).lower() != lan_mac:
        ipr.link("set", index=bridge, address=lan_mac)  # type: ignore[attr-defined]
        changes.append(f"bridge {plan.bridge_interface} address {lan_mac}")
    for port in (plan.lan_interface, plan.wan_interface):
        index = _index(ipr, port)
        (port_link,) = ipr.get_links(index)  # type: ignore[attr-defined]
        if port_link.get_attr("IFLA_MASTER") != bridge:
            ipr.link("set", index=index, master=bridge)  # type: ignore[attr-defined]
            changes.append(f"{port} joined {plan.bridge_interface}")
        # An address on a bridge port no longer works (the bridge takes its frames); keeping
        # it would leave a route that leads nowhere.
        for address in ipr.get_addr(index=index, family=2):  # type: ignore[attr-defined]
            ip, prefix = address.get_attr("IFA_ADDRESS"), address["prefixlen"]
            ipr.addr("del", index=index, address=ip, prefixlen=prefix)  # type: ignore[attr-defined]
            changes.append(f"address {ip}/{prefix} removed from the bridge port {port}")
    return changes


def bridge_mac_for(lan_interface: str, ipr: object | None = None) -> str:
    """The MAC the bridge gets: the LAN port's own (read without root from /sys when possible)."""
    path = Path("/sys/class/net") / lan_interface / "address"
    try:
        return path.read_text().strip().lower()
    except OSError:
        pass
    if ipr is not None:
        (link,) = ipr.get_links(_index(ipr, lan_interface))  # type: ignore[attr-defined]
        return str(link.get_attr("IFLA_ADDRESS")).lower()
    raise NetSetupError(f"interface {lan_interface!r} does not exist")


def _ensure_default_route(ipr: object, router: str) -> list[str]:
    routes = ipr.get_routes(family=2, dst_len=0, table=254)  # type: ignore[attr-defined]
    if any(r.get_attr("RTA_DST") is None for r in routes):
        return []  # the system has a default route already (DHCP, ifupdown): keep it
    ipr.route("add", dst="0.0.0.0/0", gateway=router)  # type: ignore[attr-defined]
    return [f"default route via {router}"]


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
