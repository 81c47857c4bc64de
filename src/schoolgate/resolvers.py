"""The well-known public DNS resolvers: their addresses and their encrypted-DNS names.

One table for two uses. The gateway refuses HTTPS to these addresses (a browser or app set
to use DNS over HTTPS by address never asks schoolgate's DNS). The alert rules tell a device
that upgrades to the encrypted DNS of the very resolver it already sends plain DNS to (what
Chrome, Android's Private DNS and Windows do by themselves for a configured resolver) from
one that reaches for another provider's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class PublicResolver:
    name: str  # as a DSL would recognise it: "Google Public DNS"
    addresses: tuple[str, ...]  # plain DNS, DoT and (most) DoH on the same anycast addresses
    names: tuple[str, ...]  # DoH and DoT host names; each covers its subdomains

    def has_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == name or host.endswith("." + name) for name in self.names)


PUBLIC_RESOLVERS: tuple[PublicResolver, ...] = (
    PublicResolver(
        "Cloudflare DNS (1.1.1.1)",
        ("1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3",
         "2606:4700:4700::1111", "2606:4700:4700::1001"),
        ("cloudflare-dns.com", "one.one.one.one", "1dot1dot1dot1.cloudflare-dns.com"),
    ),
    PublicResolver(
        "Google Public DNS",
        ("8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844"),
        ("dns.google", "dns.google.com", "dns64.dns.google"),
    ),
    PublicResolver(
        "Quad9",
        ("9.9.9.9", "149.112.112.112", "9.9.9.11", "149.112.112.11", "2620:fe::fe", "2620:fe::9"),
        ("dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net"),
    ),
    PublicResolver(
        "AdGuard DNS",
        ("94.140.14.14", "94.140.15.15", "2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff"),
        ("dns.adguard.com", "dns.adguard-dns.com"),
    ),
    PublicResolver(
        "OpenDNS",
        ("208.67.222.222", "208.67.220.220", "2620:119:35::35", "2620:119:53::53"),
        ("doh.opendns.com", "dns.opendns.com", "doh.familyshield.opendns.com"),
    ),
    PublicResolver(
        "CleanBrowsing",
        ("185.228.168.168", "185.228.169.168"),
        ("doh.cleanbrowsing.org",),
    ),
    PublicResolver(
        "Control D",
        ("76.76.2.0", "76.76.10.0"),
        ("freedns.controld.com", "dns.controld.com"),
    ),
)


def known_doh_addresses() -> tuple[str, ...]:
    """Every public resolver's address: HTTPS to them is DNS over HTTPS."""
    return tuple(address for resolver in PUBLIC_RESOLVERS for address in resolver.addresses)


def _canonical(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.strip("[]")))
    except ValueError:
        return address.lower()


_BY_ADDRESS = {_canonical(a): r for r in PUBLIC_RESOLVERS for a in r.addresses}


def resolver_at(address: str) -> PublicResolver | None:
    """The public resolver that answers at `address`, if it is one."""
    return _BY_ADDRESS.get(_canonical(address))


def resolver_named(host: str) -> PublicResolver | None:
    """The public resolver whose encrypted-DNS name `host` is, if any."""
    return next((r for r in PUBLIC_RESOLVERS if r.has_name(host)), None)
