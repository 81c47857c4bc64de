"""The compiled pieces of a policy: what the compiler produces and the engine reads.

Everything here is immutable once compiled; indices and bit masks replace names so that a
decision compares integers, not strings.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import date, tzinfo
from typing import NamedTuple

from schoolgate.policy.types import Role, Verdict

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class School:
    id: str
    name: str
    timezone: str
    zone: tzinfo
    block_ipv4: str
    block_ipv6: str | None
    unknown_network_role: Role
    federation: str = ""
    # Who reads search terms that match the safeguarding list, in the console's activity: the
    # DSL always; the headteacher too where the school's safeguarding policy says so.
    safeguarding_readers: tuple[str, ...] = ("dsl",)


@dataclass(frozen=True, slots=True)
class Category:
    """A content category: the catalogue's built-ins (schoolgate.policy.catalogue) and the
    policy's own. `description` is the published rationale the console and block page show."""

    id: str
    bit: int
    name: str
    locked: bool = False
    flags: frozenset[str] = frozenset()
    description: str = ""
    canary: str | None = None  # a reserved name the policy always files under this category
    builtin: bool = False  # from the catalogue (the policy may only reword it)
    always_allowed: bool = False  # `support`: no rule, list, ban or block closes it
    uksic: bool = False  # one of the UK Safer Internet Centre's appropriate-filtering categories


@dataclass(frozen=True, slots=True)
class SafeSearch:
    """Hosts that answer only safe results; `moderate` falls back to `strict` if unset."""

    strict: str
    moderate: str | None = None

    def target(self, level: str) -> str:
        return self.moderate if level == "moderate" and self.moderate else self.strict


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    index: int
    name: str
    category: str | None
    domains: tuple[str, ...]  # each covers its subdomains
    hosts: tuple[str, ...]  # exact hosts only
    safe_search: SafeSearch | None = None
    safe_search_hosts: frozenset[str] | None = None  # None: every host of the service
    locked: bool = False
    # Who runs it: services of one operator share addresses (Meta serves WhatsApp from
    # Facebook's edges), so the proxy does not take one's name at the other's address for
    # domain fronting. Empty: the service's own id (it shares with no other).
    operator: str = ""

    @property
    def operator_id(self) -> str:
        return self.operator or self.id


@dataclass(frozen=True, slots=True)
class ListSource:
    """Where a list comes from and how to read it: a local file, or a subscription (`url`)
    whose versions `schoolgate lists update` downloads and compiles into the list store."""

    id: str
    format: str
    file: str | None = None  # relative to the policy file
    url: str | None = None
    category: str | None = None  # every entry's category (all formats but squidguard)
    # squidguard: source category (folder name) -> the policy's categories
    categories: tuple[tuple[str, tuple[str, ...]], ...] = ()
    services: tuple[str, ...] | None = None  # adguard-services: the services to take (None: all)
    sha256: str | None = None  # a pinned download: anything else is refused
    max_bytes: int = 256 << 20  # the largest download accepted
    timeout_s: int = 300  # the longest a download may take

    @property
    def subscription(self) -> bool:
        return self.url is not None

    def categories_of(self, source_category: str) -> tuple[str, ...]:
        """The policy categories a source category maps onto (empty: not used)."""
        if self.format != "squidguard":
            return (self.category,) if self.category else ()
        for name, mapped in self.categories:
            if name == source_category:
                return mapped
        return ()


@dataclass(frozen=True, slots=True)
class DomainList:
    id: str
    bit: int
    name: str
    file: str
    format: str
    category: str | None
    count: int
    summary: str
    source: ListSource | None = None
    version: str | None = None  # subscriptions: the installed version in force (None: none yet)


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    networks: tuple[IPNetwork, ...]
    role: Role


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    position: int  # 1-based place in the file; the first matching rule wins
    clause: str
    reason: str
    action: Verdict
    roles: frozenset[Role]
    services: frozenset[int]
    categories: int  # bit mask of category bits
    lists: int  # bit mask of list bits
    when: int  # bit mask of windows; 0: at any time
    unless: int
    year_groups: frozenset[int] | None = None
    devices: frozenset[str] | None = None  # device conditions (school_owned, personal, unknown); None: any
    locked: bool = False
    safe_search_level: str = "strict"
    line: int | None = None
    when_names: tuple[str, ...] = ()
    unless_names: tuple[str, ...] = ()

    @property
    def any_target(self) -> bool:
        return not (self.services or self.categories or self.lists)


class HostMatch(NamedTuple):
    """What a host is, as far as the policy's catalogue and lists know. Its fields but the
    listed domain are the kind of match under which the engine remembers decisions
    (CompiledPolicy.number_for)."""

    service: int  # -1: no catalogue service
    service_domain: str | None
    lists: int  # bit mask of lists holding the host
    list_domain: str | None
    categories: int  # bit mask: the service's category, the lists' categories, support, canaries
    safe_search_host: bool  # the host is one a safe-search rewrite applies to
    category_domain: str | None = None  # the support entry or canary that gave a built-in category
    url_entries: bool = False  # a list holds host/path prefixes under this host (judged by URL)


NO_MATCH = HostMatch(-1, None, 0, None, 0, False)


CIRCUMVENTION_BAN_MODES = ("offer", "automatic")


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """Seed 001 §9: what a confirmed attempt to get round the filter leads to (`[bans]`).

    `automatic`: a circumvention case whose evidence is certain bans the device (and the person,
    where known) at once, for the `automatic_roles`; the DSL is told and may lift it. `offer`:
    the DSL is offered the ban on the case. `days` = 0: a ban lasts until it is lifted."""

    on_circumvention: str = "offer"
    automatic_roles: frozenset[Role] = frozenset({Role.PUPIL})
    days: int = 14
    supervisor: str = "the class teacher"

    @property
    def automatic(self) -> bool:
        return self.on_circumvention == "automatic"


@dataclass(frozen=True, slots=True)
class Document:
    """The school's written policy that this file encodes: what it is, and when it is due for
    review (the appliance warns when that date passes; the DfE standard asks for a yearly review)."""

    title: str
    review_by: date
    approved: str = ""  # who approved it and when, as the document says
    review: str = ""  # what the document says about its review, e.g. "Next review: March 2027 (§7)"


# What the database-driven parts and the daemons' own refusals cite when a policy file does not
# say: no school's clause, but plain words that say so. A seed policy names its own clauses.
NO_CLAUSE = "not in the school's policy"


@dataclass(frozen=True, slots=True)
class DynamicClauses:
    """Which written clauses the database-driven parts implement, for explanations, and what the
    daemons cite when they refuse a connection themselves (no rule of the file decided it)."""

    exception: str = f"{NO_CLAUSE}: a blocked-site access request approved in the console"
    site_block: str = f"{NO_CLAUSE}: a site blocked by an ICT technician in the console"
    ban: str = f"{NO_CLAUSE}: a ban from school equipment other than under supervision"
    # The proxy refusing a connection that hides its site, the gateway refusing encrypted DNS.
    circumvention: str = f"{NO_CLAUSE}: ways round the filter are refused (DfE filtering and monitoring standard)"
