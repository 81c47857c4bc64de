"""What the lab is made of: namespaces, addresses and the devices in the school's register.

Addresses are private or documentation ranges and exist only inside the lab's namespaces.
The LAN follows the example policy's networks (deploy/policy.example.toml), so the lab runs
that policy unchanged: 10.41.0.1 is the gateway and block address, 10.41.10.0/24 staff,
10.41.20.0/22 pupils, 10.41.30.0/24 guest Wi-Fi. The "internet" is 203.0.113.0/24.

Each deployment mode has its own topology (see `Topology`):

- gateway: the appliance is the devices' router (10.41.0.1) and DNS server;
- bridge: the school's router keeps 10.41.0.1 (the devices' gateway and DNS server, as its
  DHCP would say); the appliance (10.41.0.2) is a bridge in the cable between the router and
  a switch the devices hang off;
- dns-only: the router keeps 10.41.0.1 and stays the gateway; the appliance (10.41.0.2) is
  one more host on the switch and the devices' DNS server. One more device, a phone on a
  routed Wi-Fi network (10.42.0.0/24) behind the router, is seen by the appliance only by
  its address: its MAC never reaches the appliance, as behind a school's routed VLAN.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schoolgate.lab.internet import GATEWAY_WAN_IP, INTERNET_IP, RESOLVER_IP

LAN_CIDR = "10.41.0.0/16"
GATEWAY_LAN_IP = "10.41.0.1"
ROUTER_LAN_IP = GATEWAY_LAN_IP  # bridge, dns-only: the school's router keeps the gateway address
APPLIANCE_LAN_IP = "10.41.0.2"  # bridge, dns-only: the appliance's own address on the LAN
ROUTED_CIDR = "10.42.0.0/24"  # dns-only: the routed Wi-Fi network behind the router
ROUTED_ROUTER_IP = "10.42.0.1"
ROUTED_PREFIXLEN = 24
LAN_PREFIXLEN = 16
WAN_PREFIXLEN = 24
LAN_BRIDGE = "br-lan"
WAN_INTERFACE = "wan0"
DNS_PORT = 5353
PROXY_PORT = 8081
NFLOG_GROUP = 7
UPSTREAM_DNS = f"{RESOLVER_IP}:53"

__all__ = [
    "DEVICES",
    "GATEWAY_LAN_IP",
    "GATEWAY_WAN_IP",
    "INTERNET_IP",
    "LabDevice",
    "LabNames",
]


@dataclass(frozen=True)
class LabDevice:
    """A device on the school LAN, and how the device register knows it."""

    key: str  # short name: the namespace is <prefix>-<key>
    ip: str
    mac: str
    device_id: str
    device_name: str
    role: str | None  # device role in the register; None: the owner's role
    person_id: str | None
    person_name: str | None
    person_role: str | None
    year_group: int | None = None
    groups: str = ""
    trusts_school_ca: bool = False
    banned: bool = False  # a ban (seed 001 §9): supervised use only
    registered: bool = True
    routed: bool = False  # on the routed Wi-Fi network behind the router (dns-only topology only)


DEVICES: tuple[LabDevice, ...] = (
    LabDevice("pupil", "10.41.20.11", "02:41:00:00:20:11", "lab-pupil-ipad", "Year 5 iPad 11",
              None, "lab-p-001", "Ada Pupil", "pupil", year_group=5, groups="5A"),
    LabDevice("pupilca", "10.41.20.12", "02:41:00:00:20:12", "lab-pupil-laptop", "Year 6 laptop 12",
              None, "lab-p-002", "Ben Pupil", "pupil", year_group=6, groups="6B", trusts_school_ca=True),
    LabDevice("staff", "10.41.10.21", "02:41:00:00:10:21", "lab-staff-laptop", "Staff laptop 21",
              None, "lab-s-001", "Cara Teacher", "staff", groups="teachers"),
    # Not in the register: the policy gives it the guest network's role.
    LabDevice("guest", "10.41.30.31", "02:41:00:00:30:31", "lab-guest-phone", "Visitor phone",
              None, None, None, None, registered=False),
    LabDevice("sup", "10.41.20.41", "02:41:00:00:20:41", "lab-sup-ipad", "Year 6 iPad 41",
              None, "lab-p-003", "Dan Pupil", "pupil", year_group=6, groups="6B", trusts_school_ca=True,
              banned=True),
)

# Only in the dns-only topology: a member of staff's own phone on the routed Wi-Fi network.
# Not in the register; the Wi-Fi controller's RADIUS accounting (or a DHCP lease) says who it is.
ROUTED_DEVICES: tuple[LabDevice, ...] = (
    LabDevice("phone", "10.42.0.21", "02:42:00:00:00:21", "lab-staff-phone", "Cara's phone",
              None, None, None, None, registered=False, routed=True),
)
TOPOLOGIES = ("gateway", "bridge", "dns-only")


@dataclass(frozen=True)
class Topology:
    """How one deployment mode's lab is wired, and the addresses its devices are given."""

    name: str  # gateway, bridge, dns-only (the appliance's [network] mode)
    appliance_ip: str  # the appliance's address on the LAN: DNS, proxy, console, block page
    device_gateway: str  # the devices' default route
    device_dns: str  # the DNS server the devices are given (what the school's DHCP would say)
    has_router: bool  # the school's own router is a namespace of its own
    has_switch: bool  # the devices hang off a switch namespace (not the appliance's bridge)
    devices: tuple[LabDevice, ...]


def topology(name: str) -> Topology:
    if name == "gateway":
        return Topology(name, GATEWAY_LAN_IP, GATEWAY_LAN_IP, GATEWAY_LAN_IP, False, False, DEVICES)
    if name == "bridge":
        return Topology(name, APPLIANCE_LAN_IP, ROUTER_LAN_IP, ROUTER_LAN_IP, True, True, DEVICES)
    if name == "dns-only":
        return Topology(name, APPLIANCE_LAN_IP, ROUTER_LAN_IP, APPLIANCE_LAN_IP, True, True,
                        DEVICES + ROUTED_DEVICES)
    raise ValueError(f"no lab topology {name!r} (have: {', '.join(TOPOLOGIES)})")


def device(key: str) -> LabDevice:
    for item in DEVICES + ROUTED_DEVICES:
        if item.key == key:
            return item
    raise KeyError(f"no lab device {key!r} (have: {', '.join(d.key for d in DEVICES + ROUTED_DEVICES)})")


_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,5}$")


_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def private_prefix(stem: str, serial: int, pid: int) -> str:
    """A lab prefix for one test run's `serial`-th lab: the stem, then the serial and the PID in
    base 36, cut to the six characters a prefix may hold. Two test runs on one box (two
    checkouts tested at once) then almost never pick the same namespace names."""
    room = 6 - len(stem)
    if room < 2:
        raise ValueError(f"lab prefix stem {stem!r}: at most 4 characters")
    number = pid * 26 + serial % 26
    digits = ""
    for _ in range(room):
        number, digit = divmod(number, 36)
        digits += _BASE36[digit]
    return stem + digits


@dataclass(frozen=True)
class LabNames:
    """Namespace names for one lab; a test runs a private lab with its own prefix."""

    prefix: str = "sg"

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"lab prefix {self.prefix!r}: 1-6 lower-case letters/digits, starting with a letter")

    @property
    def gateway(self) -> str:
        return f"{self.prefix}-gw"

    @property
    def internet(self) -> str:
        return f"{self.prefix}-net"

    @property
    def router(self) -> str:
        """bridge, dns-only: the school's own router."""
        return f"{self.prefix}-rtr"

    @property
    def switch(self) -> str:
        """bridge, dns-only: the school's switch, which the devices hang off."""
        return f"{self.prefix}-sw"

    def device(self, key: str) -> str:
        return f"{self.prefix}-{key}"

    def all(self, wiring: Topology | None = None) -> list[str]:
        """The namespaces of one topology; without one, every name a lab of this prefix may use."""
        if wiring is None:
            extra = [self.router, self.switch]
            devices = DEVICES + ROUTED_DEVICES
        else:
            extra = [*([self.router] if wiring.has_router else []), *([self.switch] if wiring.has_switch else [])]
            devices = wiring.devices
        return [self.gateway, self.internet, *extra, *(self.device(d.key) for d in devices)]
