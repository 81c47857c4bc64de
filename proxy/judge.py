"""What the proxy does with one connection or request: the policy's verdict, plus the address check.

Pure: it is given the policy's decide function, the client, the name (TLS SNI or HTTP Host),
the address the client dialled and the address book; it returns a Judgement. The addons
turn that into mitmproxy actions; the tests call it directly.

The rules, in order:
1. No name at all (a ClientHello without SNI): refused. Browsers always send SNI; a client
   that hides the name from a watched address is getting round the filter. If the address is
   known to be watched the event is flagged `circumvention` (`no_sni`).
2. The name's own decision, if it blocks.
3. Fronting: the name is allowed, but the dialled address belongs to a watched service whose
   decision for this client blocks. Blocked with that service's decision, flagged
   `circumvention` (`fronting`). The one exemption: a name of the same operator as a service
   behind the address (one operator's services share addresses: Meta serves WhatsApp from
   Facebook's edges). Any other catalogued service's name is judged like any other name.
4. Otherwise the name's decision (allowed).
A support name (the catalogue's `support` category) is never blocked by 3 or by a list's
address entry, unless that block is locked (illegal content, circumvention): a child looking
for help on a CDN address that also serves a blocked service must still reach it.

Where the proxy is told the destination by name (regular mode: the CONNECT target, or the
absolute-form URL of a plain request), that name is where mitmproxy connects, whatever the SNI
or Host header say; it is judged as well and a block there blocks the connection (fronting).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from schoolgate.policy.engine import SUPPORT_RULE_ID
from schoolgate.policy.model import DynamicClauses
from schoolgate.policy.types import Client, Decision, Target, Verdict
from schoolgate.proxy.addresses import AddressBook

Decide = Callable[[Client, Target, datetime], Decision]
OperatorOf = Callable[[str], str]  # a catalogue service id -> who runs it (the policy's `operator`)


def own_operator(service: str) -> str:
    """Without the policy's operators, each service is its own."""
    return service

FLAG_CIRCUMVENTION = "circumvention"
FLAG_FRONTING = "fronting"
FLAG_NO_SNI = "no_sni"

NO_SNI_RULE = "proxy.no-sni"
# What a refusal cites when the daemon passes no clause of its own: the policy's
# `[dynamic] circumvention_clause` is the school's (the proxy passes it in).
NO_SNI_CLAUSE = DynamicClauses().circumvention
NO_SNI_REASON = "The connection hid which site it was for, so it was refused."
FRONTING_REASON = "The connection named one site but was sent to {service}, which is blocked."


class Action(StrEnum):
    PASS = "pass"  # noqa: S105 (not a password)  # TLS: passthrough without decryption; HTTP: forward
    KILL = "kill"  # close the connection; no decryption, no server connection
    BLOCK_PAGE = "block_page"  # HTTP 403 with the school's block page (TLS: intercepted first)
    INSPECT = "inspect"  # allowed, but decrypted to record search terms (devices that trust the CA)


class Judgement(NamedTuple):
    """A connection's or request's verdict: an immutable value, as a decision is. A named tuple,
    not a frozen dataclass: one is made for every connection judged (every new name killed at
    the front door, every passthrough), and a frozen dataclass's constructor, an attribute set
    through object.__setattr__ per field, cost more than twice as many instructions."""

    decision: Decision
    target: Target  # what the client asked for (the SNI or Host, and the URL if visible)
    action: Action
    fronted_host: str | None = None  # the watched name the dialled address belongs to

    @property
    def blocked(self) -> bool:
        return self.decision.verdict is Verdict.BLOCK


def _within(name: str, domain: str) -> bool:
    """`name` is `domain` or one of its subdomains (never the other way: an SNI of "com" is
    not Facebook's, though "www.facebook.com" ends with it)."""
    return name == domain or name.endswith("." + domain)


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def decide_name(
    decide: Decide,
    client: Client,
    target: Target,
    *,
    dialled_ip: str | None,
    book: AddressBook,
    now: datetime,
    dialled_name: str | None = None,
    operator_of: OperatorOf = own_operator,
    refusal_clause: str = NO_SNI_CLAUSE,
) -> tuple[Decision, str | None]:
    """The decision for `target` sent to `dialled_ip` or `dialled_name` (rules 1-4 above) and
    the fronted name. `refusal_clause` is what a refusal of the proxy's own (no SNI) cites: the
    school's policy's `[dynamic] circumvention_clause`."""
    host = target.host
    if not host:
        names = book.hosts_for(dialled_ip) if dialled_ip else []
        watched = bool(names) or (dialled_ip is not None and book.is_watched(dialled_ip))
        # Ask the policy about the services behind the address (or the bare address) so the
        # event carries the client's effective role and, where known, the blocked service.
        decisions = [decide(client, Target(host=name), now) for name in names]
        blocked = [d for d in decisions if d.blocked]
        base = (blocked or decisions or [decide(client, Target(host=dialled_ip or "unknown"), now)])[0]
        watched_host = names[decisions.index(base)] if base in decisions else None
        flags = {FLAG_NO_SNI, FLAG_CIRCUMVENTION} if watched else {FLAG_NO_SNI}
        refused = replace(
            base,
            verdict=Verdict.BLOCK,
            rule_id=base.rule_id if base.blocked else NO_SNI_RULE,
            clause=base.clause if base.blocked else refusal_clause,
            reason=NO_SNI_REASON,
            rewrite_to=None,
            exception_id=None,
            flags=base.flags | frozenset(flags),
        )
        return refused, watched_host
    decision = decide(client, target, now)
    if decision.blocked:
        return decision, None
    # A support site (Childline, Samaritans...) is always open: only illegal content outranks
    # it. What the address says (a list's address entry, a blocked service sharing a CDN's
    # address) blocks a support name only when that block is locked (illegal content, or a
    # way round the filter such as a VPN server named by address).
    support = decision.rule_id == SUPPORT_RULE_ID
    destination = normalise_name(dialled_name)
    if destination and destination != host:
        behind = decide(client, Target(host=destination), now)
        if behind.blocked and (behind.locked or not support):
            return _fronted(behind, destination), destination
    if dialled_ip is None:
        return decision, None
    listed = _listed_address(decide, client, dialled_ip, host, now)
    if listed is not None and (listed.locked or not support):
        return listed, None
    behind_names = book.hosts_for(dialled_ip)
    if not behind_names or any(_within(host, name) for name in behind_names):
        return decision, None
    services_behind = [(name, decide(client, Target(host=name), now)) for name in behind_names]
    if decision.service is not None and not _is_ip_literal(host):
        # One operator's services share addresses: its own names there are not fronting.
        operator = operator_of(decision.service)
        if any(d.service is not None and operator_of(d.service) == operator for _, d in services_behind):
            return decision, None
    for name, found in services_behind:
        if found.blocked and (found.locked or not support):
            return _fronted(found, name), name
    return decision, None


def _listed_address(decide: Decide, client: Client, dialled_ip: str, host: str, now: datetime) -> Decision | None:
    """The block for a dialled address that a list names (a list's IP entries, which the
    gateway steers here), whatever name the client sent. Only a list's own entry counts: a
    rule that blocks every address (a ban) must not override the name's decision."""
    address = normalise_name(dialled_ip)
    if address == host:
        return None  # the name was the address: already judged
    behind = decide(client, Target(host=address), now)
    if behind.blocked and behind.list_id is not None and behind.matched == address:
        return behind
    return None


def _fronted(behind: Decision, name: str) -> Decision:
    return replace(
        behind,
        reason=FRONTING_REASON.format(service=behind.service_name or name),
        flags=behind.flags | {FLAG_CIRCUMVENTION, FLAG_FRONTING},
    )


def normalise_name(name: str | None) -> str:
    """A name as the policy matches it: lower case, no trailing dot, no IPv6 brackets."""
    return (name or "").strip().lower().rstrip(".").strip("[]")


def judge_tls(
    decide: Decide,
    client: Client,
    sni: str | None,
    *,
    dialled_ip: str | None,
    book: AddressBook,
    now: datetime,
    inspect: Callable[[str], bool] | None = None,
    dialled_name: str | None = None,
    operator_of: OperatorOf = own_operator,
    refusal_clause: str = NO_SNI_CLAUSE,
) -> Judgement:
    """A TLS ClientHello: pass it through, kill it, or intercept it to show the block page."""
    target = Target(host=normalise_name(sni))
    decision, fronted = decide_name(
        decide, client, target, dialled_ip=dialled_ip, dialled_name=dialled_name, book=book, now=now,
        operator_of=operator_of,
        refusal_clause=refusal_clause,
    )
    if decision.blocked:
        action = Action.BLOCK_PAGE if client.trusts_school_ca and target.host else Action.KILL
    elif client.trusts_school_ca and decision.url_scoped:
        # A block or exception for pages under a URL prefix: each page is judged with its URL.
        action = Action.INSPECT
    elif client.trusts_school_ca and inspect is not None and inspect(target.host):
        action = Action.INSPECT
    else:
        action = Action.PASS
    return Judgement(decision, target, action, fronted)


def judge_http(
    decide: Decide,
    client: Client,
    request: Target,
    *,
    dialled_ip: str | None,
    book: AddressBook,
    now: datetime,
    dialled_name: str | None = None,
    operator_of: OperatorOf = own_operator,
    refusal_clause: str = NO_SNI_CLAUSE,
) -> Judgement:
    """A plain HTTP request (Host and URL): forward it, or answer with the block page."""
    target = Target(host=normalise_name(request.host), url=request.url)
    decision, fronted = decide_name(
        decide, client, target, dialled_ip=dialled_ip, dialled_name=dialled_name, book=book, now=now,
        operator_of=operator_of,
        refusal_clause=refusal_clause,
    )
    return Judgement(decision, target, Action.BLOCK_PAGE if decision.blocked else Action.PASS, fronted)
