"""What an event says about a device trying to get round the filter, and whether it shows intent.

An alert is a claim about a child, so the line between signal and noise is drawn here, once,
for the alert rules, the console and the per-device counters:

- intent: the `circumvention` category (VPN, web proxy and encrypted-DNS sites), DNS over TLS
  or QUIC (port 853), HTTPS to a known DNS-over-HTTPS resolver's address, a TLS connection
  that names one site and goes to another's address (fronting), or that hides its name from
  a watched address (no SNI);
- not intent: QUIC (HTTP/3) to a watched service, which every browser tries and falls back
  from; DNS sent to another resolver on port 53, which printers, televisions and phones do by
  design (evidence beside intent, an alert of its own only where the technician turns it on);
  names browsers and phones ask by themselves (the appliance's special names); the policy's
  category canaries, which are the self-test's, not a person's.

Pure: an event's fields in, a ``Signal`` out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Protocol

from schoolgate.resolvers import resolver_at, resolver_named


class SignalKind(StrEnum):
    CIRCUMVENTION_SITE = "circumvention_site"
    DOH = "doh"  # HTTPS to a DNS-over-HTTPS resolver's address
    DOT = "dot"  # DNS over TLS or QUIC, port 853
    FRONTING = "fronting"
    NO_SNI = "no_sni"
    FOREIGN_DNS = "foreign_dns"  # port 53 to another resolver, answered by schoolgate
    QUIC = "quic"  # HTTP/3 to a watched service, refused quietly


# Intent kinds whose evidence is a crafted connection: nothing a browser does by itself.
CRAFTED = frozenset({SignalKind.FRONTING, SignalKind.NO_SNI})
ENCRYPTED_DNS = frozenset({SignalKind.DOH, SignalKind.DOT})

# Events' flags (the gateway's, the proxy's, the policy categories').
FLAG_CIRCUMVENTION = "circumvention"
CANARY_SUFFIX = ".schoolgate.invalid"  # the policy's category canaries (self-tests)

LABELS = {
    SignalKind.CIRCUMVENTION_SITE: "Tried to open a VPN, proxy or encrypted-DNS site",
    SignalKind.DOH: "Tried encrypted DNS (DNS over HTTPS) to",
    SignalKind.DOT: "Tried encrypted DNS (DNS over TLS) to",
    SignalKind.FRONTING: "Hid where it was going (domain fronting): named one site, connected to another",
    SignalKind.NO_SNI: "Connected to a watched service without naming the site",
    SignalKind.FOREIGN_DNS: "Sent DNS to another resolver (schoolgate answered instead)",
    SignalKind.QUIC: "HTTP/3 (QUIC) refused; the browser used HTTPS instead",
}
LOOKUP_LABEL = "Looked up a VPN, proxy or encrypted-DNS site"


class EventFields(Protocol):
    """The fields of an access event the classification reads (an AccessEvent row)."""

    source: str
    host: str
    url: str | None
    verdict: str
    rule_id: str
    category: str | None
    flags: str
    service: str | None


@dataclass(frozen=True, slots=True)
class Signal:
    kind: SignalKind
    target: str  # the site, or the address and port
    intent: bool
    connected: bool  # a connection (proxy, gateway), not only a DNS lookup
    address: str | None = None  # the destination address (the gateway's attempts)
    provider: str | None = None  # the public resolver it was sent to, if one

    @property
    def label(self) -> str:
        if self.kind is SignalKind.CIRCUMVENTION_SITE and not self.connected:
            return LOOKUP_LABEL
        return LABELS[self.kind]


@lru_cache(maxsize=256)  # a few dozen combinations in all, asked of every event several times per scan
def flag_set(flags: str | None) -> frozenset[str]:
    return frozenset(f.strip().lower() for f in (flags or "").split(",") if f.strip())


def _port_of(url: str | None) -> str:
    if not url or "://" not in url:
        return ""
    return url.rsplit(":", 1)[-1] if url.count(":") >= 2 else ""


def classify(event: EventFields) -> Signal | None:
    """The circumvention signal in an event, or None when there is none."""
    host = (event.host or "").lower()
    if host.endswith(CANARY_SUFFIX):
        return None
    flags = flag_set(event.flags)
    if event.source == "gateway":
        address = host
        port = _port_of(event.url)
        target = f"{address}:{port}" if port else address
        public = resolver_at(address)
        provider = public.name if public else None
        if "quic" in flags or event.rule_id == "gateway.refuse.quic":
            return Signal(SignalKind.QUIC, target, intent=False, connected=True, address=address)
        if "foreign_resolver" in flags or event.rule_id == "gateway.redirect.dns":
            return Signal(SignalKind.FOREIGN_DNS, address, intent=False, connected=True, address=address,
                          provider=provider)
        if "dot" in flags or "doq" in flags:
            return Signal(SignalKind.DOT, target, intent=True, connected=True, address=address, provider=provider)
        if "doh" in flags:
            return Signal(SignalKind.DOH, target, intent=True, connected=True, address=address, provider=provider)
        return None
    if "fronting" in flags or "domain_fronting" in flags or "sni_fronting" in flags:
        target = f"{host} to {event.service or 'a watched address'}"
        return Signal(SignalKind.FRONTING, target, intent=True, connected=True)
    if "no_sni" in flags and FLAG_CIRCUMVENTION in flags:
        return Signal(SignalKind.NO_SNI, event.service or host or "a watched address", intent=True, connected=True)
    if "special_name" in flags:
        return None
    if event.verdict == "block" and (event.category == "circumvention" or FLAG_CIRCUMVENTION in flags):
        public = resolver_named(host)
        return Signal(SignalKind.CIRCUMVENTION_SITE, host, intent=True, connected=event.source == "proxy",
                      provider=public.name if public else None)
    return None
