"""What the self-test asks, and what the policy says the answer must be. Pure: no I/O.

For each vantage (a role's network) and the instant of the run:

- a DNS question for each category's canary (a reserved name the policy always files under
  the category; before a category has one, a domain of a catalogue service in it), answered
  with the block address where the policy blocks it, and not where it allows it;
- the DoH canary (`use-application-dns.net`) and iCloud Private Relay's names: NXDOMAIN, or
  browsers and iPhones turn on encrypted DNS and leave the school's filter behind;
- each safe-search service's host: the engine's safe host, where the policy asks for it;
- the appliance's own name: its address;
- HTTPS to the block address naming a blocked site: the proxy kills the connection (or shows
  the block page to a device that trusts the school CA), and plain HTTP shows the block page;
- HTTPS to a blocked service's real address, when the configured watched prefixes cover it;
- HTTPS to each allowed site: it passes untouched (its own certificate, a response).

The expected verdicts come from `decide`, with the same policy (and overlay) and the same
client the daemons build, so the self-test checks the daemons against the policy, never
against a copy of its rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from schoolgate.policy import Client, CompiledPolicy, Target, Verdict, decide
from schoolgate.selftest.vantage import Vantage

DOH_CANARY = "use-application-dns.net"  # Firefox turns DoH off when this does not resolve
PRIVATE_RELAY = ("mask.icloud.com", "mask-h2.icloud.com")  # iCloud Private Relay stays off


class Want(StrEnum):
    BLOCK = "block"  # DNS: the block address
    ALLOW = "allow"  # DNS: anything but the block address
    REWRITE = "rewrite"  # DNS: a CNAME to the safe host
    NXDOMAIN = "nxdomain"
    ADDRESS = "address"  # DNS: this address
    KILLED = "killed"  # TLS: no handshake with the real site (killed, or the block page)
    BLOCK_PAGE = "block_page"  # HTTP: the school's block page
    UNTOUCHED = "untouched"  # TLS: the site's own certificate and a response


class Kind(StrEnum):
    DNS = "dns"
    TLS = "tls"
    HTTP = "http"


#: `address` of a TLS expectation: resolve the name through the appliance from the vantage.
THROUGH_APPLIANCE = ""
#: `address` of a TLS expectation: the service's real address, from the upstream resolvers.
UPSTREAM = "upstream"


@dataclass(frozen=True)
class Expectation:
    kind: Kind
    check: str  # category, doh-canary, private-relay, safe-search, appliance-name, https-block...
    subject: str  # what, for people: the category, the service, the site
    vantage: Vantage
    name: str  # the DNS name, the TLS server name or the HTTP Host
    want: Want
    value: str = ""  # the block address, the safe host, the expected address
    address: str = THROUGH_APPLIANCE  # TLS/HTTP: where to connect
    filtering: bool = True  # a wrong answer means filtering is not working for this network
    rule: str = ""  # the rule that decides it, for the report


@dataclass(frozen=True)
class Settings:
    """What the plan needs from the appliance's configuration."""

    appliance_ipv4: str
    appliance_names: tuple[str, ...]
    allowed_sites: tuple[str, ...]
    watched_prefixes: tuple[str, ...] = ()


def category_names(policy: CompiledPolicy) -> list[tuple[str, str, str]]:
    """(category id, display name, a name filed under it) for every category that has one."""
    found = []
    for category in policy.categories:
        name = getattr(category, "canary", None)
        if not name:
            name = next(
                (s.domains[0] if s.domains else s.hosts[0] for s in policy.services
                 if s.category == category.id and (s.domains or s.hosts)),
                None,
            )
        if name:
            found.append((category.id, category.name, name))
    return found


@dataclass(frozen=True, slots=True)
class Decided:
    verdict: Verdict
    rule: str  # "rule-id (clause)"
    rewrite: str | None


def _decide(policy: CompiledPolicy, client: Client, host: str, now: datetime) -> Decided:
    decision = decide(policy, client, Target(host=host), now)
    clause = f" ({decision.clause})" if decision.clause else ""
    return Decided(decision.verdict, f"{decision.rule_id}{clause}", decision.rewrite_to)


def _dns(vantage: Vantage, check: str, subject: str, name: str, decided: Decided, *, block: str) -> Expectation:
    rule = decided.rule
    if decided.verdict is Verdict.BLOCK:
        return Expectation(Kind.DNS, check, subject, vantage, name, Want.BLOCK, block, rule=rule)
    if decided.verdict is Verdict.SAFE_SEARCH and decided.rewrite:
        return Expectation(Kind.DNS, check, subject, vantage, name, Want.REWRITE, decided.rewrite, rule=rule)
    # Over-blocking is a fault, but it does not let anything through.
    return Expectation(Kind.DNS, check, subject, vantage, name, Want.ALLOW, block, filtering=False, rule=rule)


def plan(
    policy: CompiledPolicy,
    vantages: Sequence[Vantage],
    client_for: Callable[[Vantage], Client],
    settings: Settings,
    now: datetime,
) -> list[Expectation]:
    """Every expectation for every vantage, at `now`."""
    block = policy.school.block_ipv4
    categories = category_names(policy)
    expectations: list[Expectation] = []
    for vantage in vantages:
        client = client_for(vantage)
        blocked_names: list[tuple[str, str, str]] = []  # (subject, name, rule)
        for _category_id, label, name in categories:
            decided = _decide(policy, client, name, now)
            expectations.append(_dns(vantage, "category", label, name, decided, block=block))
            if decided.verdict is Verdict.BLOCK:
                blocked_names.append((label, name, decided.rule))
        for name in (DOH_CANARY, *PRIVATE_RELAY):
            check = "doh-canary" if name == DOH_CANARY else "private-relay"
            expectations.append(Expectation(Kind.DNS, check, name, vantage, name, Want.NXDOMAIN,
                                            rule="the appliance answers it itself"))
        for service in policy.services:
            if service.safe_search is None:
                continue
            hosts = sorted(service.safe_search_hosts) if service.safe_search_hosts else [*service.hosts,
                                                                                         *service.domains]
            if not hosts:
                continue
            decided = _decide(policy, client, hosts[0], now)
            expectations.append(_dns(vantage, "safe-search", service.name, hosts[0], decided, block=block))
        for name in settings.appliance_names[:1]:
            expectations.append(Expectation(Kind.DNS, "appliance-name", name, vantage, name, Want.ADDRESS,
                                            settings.appliance_ipv4, filtering=False,
                                            rule="the appliance answers its own name"))
        expectations.extend(_web(policy, vantage, client, blocked_names, settings=settings, now=now))
    return expectations


def _web(policy: CompiledPolicy, vantage: Vantage, client: Client, blocked: list[tuple[str, str, str]], *,
         settings: Settings, now: datetime) -> list[Expectation]:
    block = policy.school.block_ipv4
    found: list[Expectation] = []
    # A device that got the block address connects there, naming the site: the proxy answers.
    # A real catalogue service (a name a device would really ask for) is preferred to a canary.
    services = [
        (s.name, s.domains[0], decided.rule)
        for s in policy.services if s.domains
        for decided in [_decide(policy, client, s.domains[0], now)] if decided.verdict is Verdict.BLOCK
    ]
    chosen = services[0] if services else (blocked[0] if blocked else None)
    if chosen is not None:
        subject, name, rule = chosen
        found.append(Expectation(Kind.TLS, "https-block", subject, vantage, name, Want.KILLED, block,
                                 address=block, rule=rule))
        found.append(Expectation(Kind.HTTP, "http-block-page", subject, vantage, name, Want.BLOCK_PAGE, block,
                                 address=block, rule=rule))
    # A device that ignores the DNS answer and dials the service's own address: the watched
    # prefixes steer it into the proxy, which judges the name it sends.
    if settings.watched_prefixes:
        for subject, name, rule in services[:5]:
            found.append(Expectation(Kind.TLS, "https-blocked-address", subject, vantage, name, Want.KILLED, block,
                                     address=UPSTREAM, rule=rule))
    for site in settings.allowed_sites:
        decided = _decide(policy, client, site, now)
        if decided.verdict is Verdict.BLOCK:
            continue  # not allowed for this role now: nothing to prove here
        found.append(Expectation(Kind.TLS, "https-allowed", site, vantage, site, Want.UNTOUCHED,
                                 address=THROUGH_APPLIANCE, filtering=False, rule=decided.rule))
    return found
