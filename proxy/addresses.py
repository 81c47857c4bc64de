"""Which watched service an IP address belongs to, so the dialled address is judged too.

Domain fronting puts an innocent name in the TLS SNI and sends it to a blocked service's
address (the real, blocked Host travels inside the encryption). Judging the SNI alone lets
it through; judging the address catches it. The proxy therefore keeps an address book:
address -> the watched hostname it was seen answering for. It has two sources:

1. Resolution. The proxy resolves the watched services' main names (the policy catalogue's
   domains and `proxy.watched_names`) itself, every `proxy.address_refresh_s`, through the
   same upstream resolvers the DNS daemon uses (`proxy.resolvers`, default `dns.upstreams`),
   A and AAAA. It does not ask the appliance's own DNS: that answers blocked names with the
   block address. Each learnt address is kept for `dns.watched_set_timeout_s` (the lifetime
   the DNS daemon gives the same address in the nftables set), renewed while it is still
   being answered, so the two views of "watched" age alike. CDNs rotate answers; repeated
   resolution accumulates the pool, which is what a pupil's device sees too.
2. Published ranges. `proxy.prefix_hosts` names a service's own ranges ("157.240.0.0/16
   facebook.com"); these never expire. `network.watched_prefixes` (steered to the proxy by
   nftables but not named) only marks addresses as watched, which matters for a ClientHello
   without SNI.

An address keeps every watched name it was learnt for (a few at most): one operator's services
share addresses (Meta's edges serve Facebook, Instagram and WhatsApp). The judge calls it
fronting when the SNI names no catalogued service at all and any service behind the address
is blocked for the client (see schoolgate.proxy.judge).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


MAX_HOSTS_PER_ADDRESS = 8


# Cached: every passed-through connection asks the book about the address it dialled, parsing
# an address is a sizeable part of that in Python, and a school's devices dial the same few
# addresses all day. Bounded, so a flood of distinct addresses only evicts (a bad address
# raises ValueError each time: errors are not cached).
@functools.lru_cache(maxsize=4096)
def _canonical(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return str(ip)


def parse_prefix_host(text: str) -> tuple[IPNetwork, str]:
    """'157.240.0.0/16 facebook.com' (or with '=') -> (network, host)."""
    parts = text.replace("=", " ").split()
    if len(parts) != 2:
        raise ValueError(f"{text!r}: expected 'PREFIX HOST', e.g. '157.240.0.0/16 facebook.com'")
    network = ipaddress.ip_network(parts[0], strict=False)
    return network, parts[1].lower().rstrip(".")


class AddressBook:
    """address -> watched hostname; learnt entries expire, published ranges do not."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = 200_000) -> None:
        self._clock = clock
        self._max = max_entries
        self._hosts: dict[str, dict[str, float]] = {}  # address -> {host: expires (monotonic)}
        self._named: list[tuple[IPNetwork, str]] = []
        self._unnamed: list[IPNetwork] = []
        # address -> the names of the published ranges it is in (they change only with
        # set_prefixes): matching an address against every range was most of a lookup.
        self._named_of: dict[str, tuple[str, ...]] = {}

    def set_prefixes(self, named: Iterable[tuple[IPNetwork, str]], unnamed: Iterable[IPNetwork]) -> None:
        # Longest prefix first, so a more specific range wins.
        self._named = sorted(named, key=lambda item: item[0].prefixlen, reverse=True)
        self._unnamed = list(unnamed)
        self._named_of = {}

    def learn(self, host: str, addresses: Iterable[str], lifetime_s: float) -> int:
        expires = self._clock() + lifetime_s
        host = host.lower().rstrip(".")
        count = 0
        for address in addresses:
            try:
                key = _canonical(address)
            except ValueError:
                continue
            if len(self._hosts) >= self._max and key not in self._hosts:
                self.expire()
                if len(self._hosts) >= self._max:
                    continue
            hosts = self._hosts.setdefault(key, {})
            hosts.pop(host, None)  # re-insert: the dict keeps the most recently learnt last
            hosts[host] = expires
            if len(hosts) > MAX_HOSTS_PER_ADDRESS:
                del hosts[next(iter(hosts))]
            count += 1
        return count

    def expire(self) -> int:
        """Forget what has expired; returns how many addresses were forgotten entirely."""
        now = self._clock()
        gone = 0
        for key in list(self._hosts):
            hosts = self._hosts[key]
            for host in [h for h, until in hosts.items() if until <= now]:
                del hosts[host]
            if not hosts:
                del self._hosts[key]
                gone += 1
        return gone

    def hosts_for(self, address: str) -> list[str]:
        """The watched names this address serves, most recently learnt first ([] if none)."""
        try:
            key = _canonical(address)
        except ValueError:
            return []
        known = self._hosts.get(key)
        if known is None:  # most addresses a school's devices dial (every passthrough asks)
            return list(self._named_hosts(key))
        now = self._clock()
        learnt = [h for h, until in reversed(known.items()) if until > now]
        for host in self._named_hosts(key):
            if host not in learnt:
                learnt.append(host)
        return learnt

    def _named_hosts(self, key: str) -> tuple[str, ...]:
        """The names of the published ranges holding the canonical address `key`, longest
        prefix first."""
        found = self._named_of.get(key)
        if found is None:
            ip = ipaddress.ip_address(key)
            found = tuple(dict.fromkeys(
                host for network, host in self._named if ip.version == network.version and ip in network
            ))
            if len(self._named_of) >= self._max:
                self._named_of = {}  # simplest bound: start over (refilled as addresses are seen)
            self._named_of[key] = found
        return found

    def host_for(self, address: str) -> str | None:
        """The watched name this address most recently served, or None if it is not watched."""
        hosts = self.hosts_for(address)
        return hosts[0] if hosts else None

    def is_watched(self, address: str) -> bool:
        """Known to belong to a watched service (named or not)."""
        if self.host_for(address) is not None:
            return True
        try:
            ip = ipaddress.ip_address(_canonical(address))
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self._unnamed)

    def __len__(self) -> int:
        return len(self._hosts)


class AddressLearner:
    """Resolves the watched names through the upstream resolvers and feeds the address book."""

    def __init__(
        self,
        book: AddressBook,
        resolvers: Sequence[str],
        *,
        lifetime_s: float,
        timeout_s: float = 2.0,
    ) -> None:
        self._book = book
        self._resolvers = [_split_hostport(r) for r in resolvers]
        self._lifetime = lifetime_s
        self._timeout = timeout_s
        self.lookups = 0
        self.failures = 0
        self.learnt = 0

    async def _query(self, name: str, rdtype: str) -> list[str]:
        query = dns.message.make_query(name, rdtype)
        for host, port in self._resolvers:
            try:
                response = await dns.asyncquery.udp(query, host, port=port, timeout=self._timeout)
                if response.flags & dns.flags.TC:
                    response = await dns.asyncquery.tcp(query, host, port=port, timeout=self._timeout)
            except (OSError, TimeoutError, dns.exception.DNSException) as err:
                log.debug("resolving %s %s via %s:%d failed: %s", name, rdtype, host, port, err)
                continue
            if response.rcode() != dns.rcode.NOERROR:
                return []
            wanted = dns.rdatatype.from_text(rdtype)
            return [
                item.address
                for rrset in response.answer
                if rrset.rdtype == wanted
                for item in rrset
            ]
        raise LookupError(f"no resolver answered for {name} {rdtype}")

    async def refresh(self, names: Iterable[str]) -> int:
        """Resolve every name (A and AAAA, a few at a time); returns addresses learnt."""
        semaphore = asyncio.Semaphore(16)
        total = 0

        async def one(name: str) -> None:
            nonlocal total
            async with semaphore:
                for rdtype in ("A", "AAAA"):
                    self.lookups += 1
                    try:
                        addresses = await self._query(name, rdtype)
                    except LookupError:
                        self.failures += 1
                        continue
                    total += self._book.learn(name, addresses, self._lifetime)

        await asyncio.gather(*(one(n) for n in dict.fromkeys(names)))
        self._book.expire()
        self.learnt += total
        return total


def _split_hostport(text: str, default_port: int = 53) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, default_port
