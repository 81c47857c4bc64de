"""Names the resolver answers itself, before any policy: canaries, relays, discovery, our own names.

- `use-application-dns.net`: NXDOMAIN tells Firefox to leave DNS-over-HTTPS off, so its queries
  stay on the school's resolver.
- `mask.icloud.com`, `mask-h2.icloud.com`: NXDOMAIN turns iCloud Private Relay off on the network.
- `resolver.arpa` (RFC 9462): no data, so devices do not discover and switch to an encrypted
  resolver.
- The appliance's own names answer with its own addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from schoolgate.dns.chain import Result, Stage
from schoolgate.dns.wire import (
    NOERROR,
    NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    TYPE_SOA,
    U32,
    Query,
    encode_name,
    reply,
    rr,
)

NXDOMAIN_NAMES = {
    "use-application-dns.net": "dns.special.doh-canary",
    "mask.icloud.com": "dns.special.private-relay",
    "mask-h2.icloud.com": "dns.special.private-relay",
}
NODATA_ZONES = {"resolver.arpa": "dns.special.resolver-discovery"}
OWN_NAME_RULE = "dns.special.appliance-name"
NEGATIVE_TTL = 300
OWN_TTL = 300


def _soa(zone: str) -> bytes:
    """An SOA for the zone we answer for, so clients cache the negative answer (RFC 2308)."""
    rdata = (
        encode_name(zone) + encode_name("hostmaster." + zone)
        + U32.pack(1) + U32.pack(3600) + U32.pack(600) + U32.pack(86400) + U32.pack(NEGATIVE_TTL)
    )
    return rr(TYPE_SOA, NEGATIVE_TTL, rdata, owner=encode_name(zone))


class SpecialNamesStage(Stage):
    name = "special-names"

    def __init__(self, own_names: Iterable[str] = (), ipv4: str = "", ipv6: str = "") -> None:
        super().__init__()
        self.own_names = {n.lower().rstrip(".") for n in own_names if n.strip(".")}
        self.ipv4 = ipaddress.IPv4Address(ipv4).packed if ipv4 else None
        self.ipv6 = ipaddress.IPv6Address(ipv6).packed if ipv6 else None
        self._soas = {zone: _soa(zone) for zone in [*NXDOMAIN_NAMES, *NODATA_ZONES]}

    def resolve(self, query: Query) -> Result:
        qname = query.qname
        rule = NXDOMAIN_NAMES.get(qname)
        if rule is not None:
            return self._answered(query, rule, reply(query, NXDOMAIN, authority=self._soas[qname], nscount=1, aa=True))
        if qname in self.own_names:
            return self._answered(query, OWN_NAME_RULE, self._own(query))
        if "resolver.arpa" in qname:
            for zone, rule in NODATA_ZONES.items():
                if qname == zone or qname.endswith("." + zone):
                    soa = self._soas[zone]
                    return self._answered(query, rule, reply(query, NOERROR, authority=soa, nscount=1, aa=True))
        return self.pass_on(query)

    def _own(self, query: Query) -> bytes:
        address = self.ipv4 if query.qtype == TYPE_A else self.ipv6 if query.qtype == TYPE_AAAA else None
        if address is None:
            return reply(query, NOERROR, aa=True)
        return reply(query, NOERROR, rr(query.qtype, OWN_TTL, address), 1, aa=True)

    @staticmethod
    def _answered(query: Query, rule: str, answer: bytes) -> bytes:
        query.answered_by = "special"
        query.special_rule = rule
        return answer
