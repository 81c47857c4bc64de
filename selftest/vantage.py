"""Where the self-test asks from: one vantage per role's network.

On an appliance the checks run on the gateway itself, so its own traffic must look like a
device's in each network. The appliance holds one address in each policy network (a probe
address) on a dummy interface, and `schoolgate net apply` adds an nftables `output` chain that
sends DNS and web traffic from those addresses where a device's would go (the DNS daemon, the
proxy), as the LAN's `prerouting` rules do for devices. The DNS daemon and the proxy then see
a client in that network and apply that network's role, with the same code paths as for a
device. Why not an EDNS client-subnet the daemon trusts from itself: it would test the DNS
daemon only, not the proxy (which has no such option), and it would be a second way to claim
an address that a bug could open to the LAN; a real source address needs no trust at all.

The probe addresses are the last usable address of each network unless `[selftest]
probe_addresses` names them. They must be kept out of DHCP: a device given one could not be
reached from the appliance. The LAN interface has `arp_ignore` set so they are never
announced on the LAN.

In the network lab the same checks run from the lab devices' namespaces instead
(schoolgate.lab.selftest): real devices, through the real LAN rules.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from schoolgate.config import AppConfig, SelftestConfig
    from schoolgate.policy import CompiledPolicy

T = TypeVar("T")


class VantageError(ValueError):
    """The probe addresses cannot be worked out; the message names the setting."""


@dataclass(frozen=True, slots=True)
class ProbeAddress:
    """An address of the appliance inside one policy network."""

    network: str  # the policy network's name
    role: str  # the role the policy gives an unknown device there
    address: str


@dataclass(frozen=True)
class Vantage:
    """One place the checks ask from, and the client the appliance will see."""

    name: str  # for people: "Pupil Wi-Fi and class iPads (pupil)"
    role: str  # the role the policy should give this client
    client_ip: str  # the source address the appliance sees
    source: str | None = None  # bind the probes' sockets to it; None: the namespace's own address
    runner: Callable[[Callable[[], Any]], Any] | None = None  # makes the sockets somewhere else

    def run(self, probe: Callable[[], T]) -> T:
        """Run one probe where its sockets must be made (a lab device's namespace, or here)."""
        if self.runner is None:
            return probe()
        result: T = self.runner(probe)
        return result


def _strictest(policy: CompiledPolicy, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, str]:
    """The network name and role the policy gives an unknown device at `address`."""
    inside = [n for n in policy.networks if any(address in net for net in n.networks if net.version == address.version)]
    if not inside:
        raise VantageError(f"selftest.probe_addresses: {address} is in none of the policy's [[networks]]")
    chosen = max(inside, key=lambda n: n.role.strictness)
    return chosen.name, chosen.role.value


def probe_addresses(
    policy: CompiledPolicy, settings: SelftestConfig, *, reserved: tuple[str, ...] = ()
) -> list[ProbeAddress]:
    """The appliance's probe addresses: the configured ones, or one per policy network.

    `reserved` are addresses the appliance already uses (its LAN and block addresses): a
    derived probe address never takes one of them.
    """
    taken = {str(ipaddress.ip_address(a)) for a in reserved if a}
    found: list[ProbeAddress] = []
    if settings.probe_addresses:
        for text in settings.probe_addresses:
            try:
                address = ipaddress.ip_address(text.strip())
            except ValueError as err:
                raise VantageError(f"selftest.probe_addresses: {text!r} is not an IP address") from err
            if address.version != 4:
                raise VantageError(f"selftest.probe_addresses: {text!r}: the self-test asks over IPv4 only")
            if str(address) in taken:
                raise VantageError(f"selftest.probe_addresses: {address} is already the appliance's own address")
            name, role = _strictest(policy, address)
            found.append(ProbeAddress(name, role, str(address)))
        return found
    for network in policy.networks:
        v4 = [net for net in network.networks if net.version == 4 and net.prefixlen <= 30]
        if not v4:
            continue
        address = v4[0].broadcast_address - 1
        if str(address) in taken:
            address -= 1
        name, role = _strictest(policy, address)
        if name != network.name:
            continue  # a network inside a stricter one: the stricter one's own probe covers it
        found.append(ProbeAddress(network.name, role, str(address)))
    return found


def gateway_vantages(policy: CompiledPolicy, config: AppConfig) -> list[Vantage]:
    """One vantage per probe address: sockets bound to it on the appliance itself."""
    reserved = (config.network.appliance_ipv4, policy.school.block_ipv4)
    return [
        Vantage(name=f"{probe.network} ({probe.role})", role=probe.role, client_ip=probe.address, source=probe.address)
        for probe in probe_addresses(policy, config.selftest, reserved=reserved)
    ]
