"""The decision: who, what, when -> allow, block or safe search, with the rule that said so.

`decide()` is pure: the policy, the client, the target and the instant are all passed in.
A `CompiledPolicy` is built once per policy version (see compiler.py); the dynamic parts
(exceptions, bans, technicians' site blocks) are laid over it with `with_overlay()`, which
costs a few small dictionaries and leaves the compiled lists and caches shared.

Speed comes from remembering: a host's catalogue/list match is cached per host, and a whole
static `Decision` is remembered per (role, year group, device, kind of match, timeline
segment), because choosing the rule and building a frozen dataclass cost more than the rest of
a decision. The kind of match leaves out which listed domain matched: the millions of names of
a subscription fall into a few kinds (the lists and categories holding them), so a name the
engine has never seen still finds its decision remembered, and only the domain is named on a
copy of it. Caches are bounded.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from urllib.parse import urlsplit

from schoolgate.policy.catalogue import ILLEGAL, SUPPORT, SUPPORT_DOMAINS
from schoolgate.policy.domains import ListIndex, ListSet, normalise_host, suffixes
from schoolgate.policy.model import (
    NO_CLAUSE,
    NO_MATCH,
    BanPolicy,
    Category,
    Document,
    DomainList,
    DynamicClauses,
    HostMatch,
    Network,
    Rule,
    School,
    Service,
)
from schoolgate.policy.timeline import Calendar, Timeline, Window
from schoolgate.policy.types import (
    Ban,
    Client,
    Decision,
    ExceptionScope,
    PolicyException,
    Role,
    SiteBlock,
    Target,
    Verdict,
    device_condition,
)

# Sized for a school's working set of names (a busy day asks for tens of thousands), not for
# every name a scan of a block list could bring: each entry costs a few hundred bytes, and a
# daemon's memory goal is 64 MB with a million-name list loaded.
_HOST_CACHE_LIMIT = 32_768
_DECISION_CACHE_LIMIT = 32_768
_INSTANT_CACHE_LIMIT = 4096
_ROLE_CACHE_LIMIT = 20_000
_MINUTE_CACHE_LIMIT = 50_000
DEFAULT_BAN_POLICY = BanPolicy()
_new_match = tuple.__new__
_UNMATCHED: tuple[int, HostMatch] = (0, NO_MATCH)  # the host cache's entry for a name nothing holds


# The two verdicts no rule writes: illegal content is always a locked block, and support is
# always open (only illegal outranks it). Their clauses are the statutory duties, not a school's,
# and say so.
ILLEGAL_RULE_ID = "illegal-content"
SUPPORT_RULE_ID = "support-always-open"
_ILLEGAL_CLAUSE = (
    f"{NO_CLAUSE}: the law, Keeping Children Safe in Education and the DfE filtering standards: illegal content"
)
_SUPPORT_CLAUSE = f"{NO_CLAUSE}: Keeping Children Safe in Education: children can always reach help"


def _fixed_rule(rule_id: str, clause: str, reason: str, action: Verdict, categories: int) -> Rule:
    return Rule(
        id=rule_id,
        position=0,
        clause=clause,
        reason=reason,
        action=action,
        roles=frozenset(Role),
        services=frozenset(),
        categories=categories,
        lists=0,
        when=0,
        unless=0,
        locked=action is Verdict.BLOCK,
    )


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The host as an IP address, if it is one (no top-level domain is all digits)."""
    if not (host[-1:].isdigit() or ":" in host):
        return None
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def url_key(url: str) -> tuple[str, str] | None:
    """(host, host+path+query) of a URL with scheme, default port and case of the host
    removed, so an exception for https://site/page also matches http://SITE/page."""
    try:
        parts = urlsplit(url.strip() if "://" in url else "http://" + url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    host = normalise_host(host)
    netloc = host if port in (None, 80, 443) else f"{host}:{port}"
    rest = parts.path or "/"
    if parts.query:
        rest += "?" + parts.query
    return host, netloc + rest


@dataclass(frozen=True)
class Overlay:
    """Exceptions, bans and site blocks from the database, indexed for the engine."""

    exceptions_by_domain: Mapping[str, tuple[PolicyException, ...]] = field(default_factory=dict)
    exceptions_by_url_host: Mapping[str, tuple[tuple[str, PolicyException], ...]] = field(default_factory=dict)
    bans_by_device: Mapping[str, tuple[Ban, ...]] = field(default_factory=dict)
    bans_by_person: Mapping[str, tuple[Ban, ...]] = field(default_factory=dict)
    bans_by_mac: Mapping[str, tuple[Ban, ...]] = field(default_factory=dict)
    blocks_by_domain: Mapping[str, tuple[SiteBlock, ...]] = field(default_factory=dict)
    blocks_by_url_host: Mapping[str, tuple[tuple[str, SiteBlock], ...]] = field(default_factory=dict)
    empty: bool = True

    @classmethod
    def build(
        cls,
        exceptions: Iterable[PolicyException] = (),
        bans: Iterable[Ban] = (),
        blocks: Iterable[SiteBlock] = (),
    ) -> Overlay:
        by_domain: dict[str, list[PolicyException]] = {}
        by_url: dict[str, list[tuple[str, PolicyException]]] = {}
        for exc in exceptions:
            if exc.domain:
                by_domain.setdefault(normalise_host(exc.domain), []).append(exc)
            elif exc.url_prefix:
                key = url_key(exc.url_prefix)
                if key:
                    by_url.setdefault(key[0], []).append((key[1], exc))
        ban_device: dict[str, list[Ban]] = {}
        ban_person: dict[str, list[Ban]] = {}
        ban_mac: dict[str, list[Ban]] = {}
        for ban in bans:
            if ban.device_id:
                ban_device.setdefault(ban.device_id, []).append(ban)
            if ban.person_id:
                ban_person.setdefault(ban.person_id, []).append(ban)
            if ban.mac:
                ban_mac.setdefault(ban.mac.lower(), []).append(ban)
        block_domain: dict[str, list[SiteBlock]] = {}
        block_url: dict[str, list[tuple[str, SiteBlock]]] = {}
        for block in blocks:
            if block.domain:
                block_domain.setdefault(normalise_host(block.domain), []).append(block)
            elif block.url_prefix:
                key = url_key(block.url_prefix)
                if key:
                    block_url.setdefault(key[0], []).append((key[1], block))
        return cls(
            exceptions_by_domain={k: tuple(v) for k, v in by_domain.items()},
            exceptions_by_url_host={k: tuple(v) for k, v in by_url.items()},
            bans_by_device={k: tuple(v) for k, v in ban_device.items()},
            bans_by_person={k: tuple(v) for k, v in ban_person.items()},
            bans_by_mac={k: tuple(v) for k, v in ban_mac.items()},
            blocks_by_domain={k: tuple(v) for k, v in block_domain.items()},
            blocks_by_url_host={k: tuple(v) for k, v in block_url.items()},
            empty=not (by_domain or by_url or ban_device or ban_person or ban_mac or block_domain or block_url),
        )


EMPTY_OVERLAY = Overlay()


class CompiledPolicy:
    """One policy version, ready to answer. Shares its caches with its overlaid copies."""

    def __init__(
        self,
        *,
        source: str,
        school: School,
        calendar: Calendar,
        windows: tuple[Window, ...],
        networks: tuple[Network, ...],
        categories: tuple[Category, ...],
        services: tuple[Service, ...],
        lists: tuple[DomainList, ...],
        rules: tuple[Rule, ...],
        default_rule: Rule,
        list_indexes: Sequence[ListIndex],
        dynamic: DynamicClauses,
        document: Document | None = None,
        fingerprint: str = "",
        warnings: tuple[str, ...] = (),
        bans: BanPolicy = DEFAULT_BAN_POLICY,
    ) -> None:
        self.source = source
        self.school = school
        self.calendar = calendar
        self.windows = windows
        self.networks = networks
        self.categories = categories
        self.services = services
        self.lists = lists
        self.rules = rules
        self.default_rule = default_rule
        self.dynamic = dynamic
        self.document = document
        self.fingerprint = fingerprint
        self.warnings = warnings  # not mistakes, but worth a technician's attention (policy check)
        self.bans = bans  # `[bans]`: what a confirmed circumvention attempt leads to
        self.timeline = Timeline(windows, calendar, school.zone)
        self.overlay = EMPTY_OVERLAY
        self.service_by_id = {s.id: s for s in services}
        self.category_by_id = {c.id: c for c in categories}
        self._category_by_bit = {c.bit: c for c in categories}
        self.list_by_id = {d.id: d for d in lists}
        self._suffix_service: dict[str, int] = {}
        self._exact_service: dict[str, int] = {}
        for service in services:
            for domain in service.domains:
                self._suffix_service[domain] = service.index
            for host in service.hosts:
                self._exact_service[host] = service.index
        illegal = self.category_by_id.get(ILLEGAL)
        support = self.category_by_id.get(SUPPORT)
        self._illegal_bits = 1 << illegal.bit if illegal is not None else 0
        self._support_bits = 1 << support.bit if support is not None else 0
        self._illegal_rule = _fixed_rule(
            ILLEGAL_RULE_ID, _ILLEGAL_CLAUSE, "this is illegal content; it is always blocked, for everyone",
            Verdict.BLOCK, self._illegal_bits,
        )
        self._support_rule = _fixed_rule(
            SUPPORT_RULE_ID, _SUPPORT_CLAUSE, "help and support services are always open, to everyone",
            Verdict.ALLOW, self._support_bits,
        )
        self._support_domains = frozenset(name for name, _ in SUPPORT_DOMAINS) if support is not None else frozenset()
        # Canaries: reserved names the policy files under their category whatever the lists hold.
        self._canaries = {c.canary: 1 << c.bit for c in categories if c.canary}
        # Every name the catalogue itself knows (services' domains and hosts, support sites,
        # canaries): one set test rules all of them out for the names only lists hold.
        self._catalogue_names = frozenset(
            (*self._suffix_service, *self._exact_service, *self._support_domains, *self._canaries)
        )
        # Every list's names, URL prefixes and addresses; the lists' own call also says
        # whether a host's suffix may be one of the catalogue's names.
        self.entries = ListSet(list_indexes, self._catalogue_names)
        self._rules_by_role: dict[Role, tuple[Rule, ...]] = {
            role: tuple(r for r in rules if role in r.roles) for role in Role
        }
        self._uses_year_groups = any(r.year_groups is not None for r in rules)
        self._uses_devices = any(r.devices is not None for r in rules)
        self._locked_categories = sum(1 << c.bit for c in categories if c.locked)
        self._flags_by_categories: dict[int, frozenset[str]] = {}
        # Caches, shared with overlaid copies; each is replaced (never cleared in place) when
        # full, so a reader in another thread always sees a consistent dict.
        self._host_cache: dict[str, tuple[int, HostMatch]] = {}
        self._match_numbers = itertools.count(1)
        self._match_ids: dict[tuple[object, ...], int] = {}
        self._decisions: dict[tuple[object, ...], Decision] = {}
        # The remembered decisions with a listed domain named, for the names asked again.
        self._named: dict[tuple[object, ...], Decision] = {}
        self._minutes: dict[int, tuple[int, int, int]] = {}
        self._roles: dict[str, Role] = {}
        # valid_until instants: few distinct ones (the timeline's edges), shared by decisions.
        self._instants: dict[float, datetime] = {}

    # -- overlay ----------------------------------------------------------------------------
    def with_overlay(
        self,
        exceptions: Iterable[PolicyException] = (),
        bans: Iterable[Ban] = (),
        blocks: Iterable[SiteBlock] = (),
    ) -> CompiledPolicy:
        """The same compiled policy with the database's dynamic parts laid over it."""
        layered = copy.copy(self)  # shallow: lists, tables and caches are shared
        layered.overlay = Overlay.build(exceptions, bans, blocks)
        return layered

    # -- facts --------------------------------------------------------------------------------
    @property
    def domain_count(self) -> int:
        return sum(len(s.domains) + len(s.hosts) for s in self.services) + self.entries.count

    def role_for_ip(self, ip: str) -> Role:
        """The strictest role of the networks that contain `ip` (unknown networks: the
        policy's `unknown_network_role`)."""
        known = self._roles.get(ip)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            role = self.school.unknown_network_role
        else:
            roles = [n.role for n in self.networks if any(address in net for net in n.networks)]
            role = max(roles, key=lambda r: r.strictness) if roles else self.school.unknown_network_role
        if len(self._roles) >= _ROLE_CACHE_LIMIT:
            self._roles = {}
        self._roles[ip] = role
        return role

    def match(self, host: str) -> tuple[HostMatch, tuple[str, ...]]:
        """What the catalogue and the lists know about `host` (normalised), and its suffixes."""
        entry = self._host_cache.get(host) or self._match_new(host)
        return entry[1], tuple(suffixes(host))

    def _match_new(self, host: str) -> tuple[int, HostMatch]:
        # The entry keeps no suffix strings (they would triple its size); the overlay, the
        # only other reader of them, walks them again when it has something to check.
        # No top-level domain is all digits, so only a name ending in a digit or holding a
        # colon can be an address literal: the lists' networks answer for one, not their names.
        maybe_literal = host[-1:].isdigit() or ":" in host
        address = _address(host) if maybe_literal else None
        if address is not None:
            list_bits, list_categories = self.entries.lookup_address(address)
            list_domain = host if list_bits else None
            url_entries = False
            catalogued = tuple(name for name in suffixes(host) if name in self._catalogue_names)
        else:
            list_bits, list_categories, list_domain, url_entries, catalogued = self.entries.classify(host)
        if not maybe_literal and not catalogued:  # (classify ran: no literal)
            # The commonest first question for a name: one only the lists can hold (no service,
            # support site, canary or address literal: the lists' own call said no suffix is a
            # catalogue name). The general path below gives the same entry; this one skips what
            # cannot apply (tests/policy/test_cold_path.py).
            if list_bits or url_entries:
                list_kind = (-1, None, list_bits, list_categories, False, None, url_entries)
                fields = (-1, None, list_bits, list_domain, list_categories, False, None, url_entries)
                hm = _new_match(HostMatch, fields)
                entry = (self._match_ids.get(list_kind) or self._number(list_kind), hm)
            else:
                entry = _UNMATCHED
            if len(self._host_cache) >= _HOST_CACHE_LIMIT:
                self._host_cache = {}
            self._host_cache[host] = entry
            return entry
        # Only the suffixes that may be catalogue names are looked up (longest first, as the
        # suffixes walk): every name the lookups below can find is one of the catalogue's.
        service = -1
        service_domain: str | None = None
        builtin_bits = 0
        builtin_domain = None
        if catalogued:
            service = self._exact_service.get(host, -1)
            if service >= 0:
                service_domain = host
            else:
                lookup = self._suffix_service.get
                for name in catalogued:
                    found = lookup(name)
                    if found is not None:
                        service, service_domain = found, name
                        break
            builtin_bits = self._canaries.get(host, 0)
            builtin_domain = host if builtin_bits else None
            if self._support_domains:
                for name in catalogued:
                    if name in self._support_domains:
                        builtin_bits |= self._support_bits
                        builtin_domain = builtin_domain or name
                        break
        if service < 0 and not list_bits and not builtin_bits and not url_entries:
            entry = _UNMATCHED
        else:
            categories = builtin_bits
            safe_search_host = False
            if service >= 0:
                listed = self.services[service]
                if listed.category:
                    categories |= 1 << self.category_by_id[listed.category].bit
                if listed.safe_search is not None:
                    safe_search_host = listed.safe_search_hosts is None or host in listed.safe_search_hosts
            categories |= list_categories
            # HostMatch's fields in order, built without its Python-level __new__ (a frame per new name).
            hm = _new_match(HostMatch, (
                service, service_domain, list_bits, list_domain, categories, safe_search_host, builtin_domain,
                url_entries,
            ))
            kind = (service, service_domain, list_bits, categories, safe_search_host, builtin_domain, url_entries)
            entry = (self._match_ids.get(kind) or self._number(kind), hm)
        if len(self._host_cache) >= _HOST_CACHE_LIMIT:
            self._host_cache = {}
        self._host_cache[host] = entry
        return entry

    def number_for(self, hm: HostMatch) -> int:
        """Decisions are remembered under a small integer per kind of match: the match but
        for the listed domain, so that all of facebook.com's subdomains share one, and so do
        all the names a subscription files under the same lists and categories. Numbers are
        never reused: a decision computed just before a cache reset can never be filed under
        another kind."""
        return self._number(hm[:3] + hm[4:])

    def _number(self, kind: tuple[object, ...]) -> int:
        """`kind`: a HostMatch's fields but the listed domain, as `number_for` cuts them."""
        number = self._match_ids.get(kind)
        if number is None:
            number = next(self._match_numbers)
            if len(self._match_ids) >= _HOST_CACHE_LIMIT:
                self._match_ids = {}
            self._match_ids[kind] = number
        return number

    def match_url(self, host: str, hm: HostMatch, url: str) -> HostMatch:
        """`hm` with the lists' `host/path` entries that cover `url` added (the proxy sees
        URLs; DNS cannot, so these entries never block a name there)."""
        key = url_key(url)
        if key is None:
            return hm
        path = key[1][key[1].find("/") :] if "/" in key[1] else "/"
        lists, categories = self.entries.lookup_url(suffixes(host), path)
        if not lists:
            return hm
        return hm._replace(
            lists=hm.lists | lists, categories=hm.categories | categories, list_domain=hm.list_domain or host
        )

    # -- the static decision ------------------------------------------------------------------
    def segment(self, ts: float) -> tuple[int, int, int]:
        """(segment number, index within its UTC day, active windows) at `ts`.

        Window edges fall on whole minutes (local times are HH:MM and UTC offsets are whole
        minutes), so the answer is the same for every instant of a UTC minute and is cached
        per minute: a dict lookup instead of a bisect.
        """
        minute = int(ts // 60)
        cached = self._minutes.get(minute)
        if cached is None:
            utc_day, index, active = self.timeline.locate(minute * 60.0)
            cached = ((utc_day << 12) | index, index, active)
            if len(self._minutes) >= _MINUTE_CACHE_LIMIT:
                self._minutes = {}
            self._minutes[minute] = cached
        return cached

    def static_decision(
        self, role: Role, year_group: int | None, hm: HostMatch, ts: float, device: str = "unknown"
    ) -> Decision:
        """The decision of the rules alone (no overlay) for an already matched host. `device`
        is the client's device condition (types.device_condition)."""
        number = 0 if hm is NO_MATCH else self.number_for(hm)
        return self._static(role, year_group, number, hm, ts, device=device)

    def _static(
        self, role: Role, year_group: int | None, number: int, hm: HostMatch, ts: float, *, device: str,
        named: bool = True,
    ) -> Decision:
        # segment(ts), its minute cache read here: this runs for every decision.
        segment, index, active = self._minutes.get(int(ts // 60)) or self.segment(ts)
        key = (
            role,
            year_group if self._uses_year_groups else None,
            device if self._uses_devices else None,
            number,
            segment,
        )
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._evaluate(
                role, year_group, hm, device=device, utc_day=segment >> 12, index=index, active=active
            )
            if len(self._decisions) >= _DECISION_CACHE_LIMIT:
                self._decisions = {}
            self._decisions[key] = decision
        listed = hm.list_domain
        if not named or listed is None or hm.service >= 0 or decision.matched == listed:
            return decision  # a catalogue service's decision names its own domain
        named_key = (key, listed)
        about = self._named.get(named_key)
        if about is None:
            about = decision.about(listed)
            if len(self._named) >= _DECISION_CACHE_LIMIT:
                self._named = {}
            self._named[named_key] = about
        return about

    def _evaluate(
        self, role: Role, year_group: int | None, hm: HostMatch, *, device: str, utc_day: int, index: int, active: int
    ) -> Decision:
        if hm.categories & self._illegal_bits:
            return self._build(self._illegal_rule, role, hm, None)
        if hm.categories & self._support_bits:
            return self._build(self._support_rule, role, hm, None)
        relevant = 0
        chosen = self.default_rule
        for rule in self._rules_by_role[role]:
            if rule.year_groups is not None and year_group not in rule.year_groups:
                continue
            if rule.devices is not None and device not in rule.devices:
                continue
            if not rule.any_target and not (
                (hm.service >= 0 and hm.service in rule.services)
                or rule.lists & hm.lists
                or rule.categories & hm.categories
            ):
                continue
            # This rule's windows decide whether it applies, so their edges bound the answer.
            relevant |= rule.when | rule.unless
            if rule.when and not active & rule.when:
                continue
            if active & rule.unless:
                continue
            chosen = rule
            break
        until = self.timeline.next_change(utc_day, index, relevant)
        return self._build(chosen, role, hm, None if until is None else self._instant(until))

    def _instant(self, ts: float) -> datetime:
        instant = self._instants.get(ts)
        if instant is None:
            if len(self._instants) >= _INSTANT_CACHE_LIMIT:
                self._instants = {}
            instant = self._instants[ts] = datetime.fromtimestamp(ts, UTC)
        return instant

    def flags_for(self, categories: int) -> frozenset[str]:
        known = self._flags_by_categories.get(categories)
        if known is None:
            flags: set[str] = set()
            for bit, category in self._category_by_bit.items():
                if categories >> bit & 1:
                    flags |= category.flags
            known = self._flags_by_categories[categories] = frozenset(flags)
        return known

    def _category_of(
        self, rule: Rule, hm: HostMatch, service: Service | None, list_entry: DomainList | None
    ) -> str | None:
        """The category the decision is about: the one that made the rule match, else the
        service's or the list's, else the first the host is in (built-ins come first)."""
        bits = rule.categories & hm.categories
        if not bits:
            if service is not None and service.category:
                return service.category
            if list_entry is not None and list_entry.category:
                return list_entry.category
            bits = hm.categories
        if not bits:
            return None
        return self._category_by_bit[(bits & -bits).bit_length() - 1].id

    def _build(self, rule: Rule, role: Role, hm: HostMatch, valid_until: datetime | None) -> Decision:
        service = self.services[hm.service] if hm.service >= 0 else None
        list_entry: DomainList | None = None
        if service is None and hm.lists:
            low = hm.lists & -hm.lists
            preferred = rule.lists & hm.lists
            if preferred:
                low = preferred & -preferred
            list_entry = self.lists[low.bit_length() - 1]
        category = self._category_of(rule, hm, service, list_entry)
        verdict = rule.action
        rewrite_to: str | None = None
        if verdict is Verdict.SAFE_SEARCH:
            if service is not None and service.safe_search is not None and hm.safe_search_host:
                rewrite_to = service.safe_search.target(rule.safe_search_level)
            else:
                verdict = Verdict.ALLOW  # the service's other hosts (e.g. its video servers)
        locked = verdict is Verdict.BLOCK and (
            rule.locked or bool(hm.categories & self._locked_categories) or bool(service and service.locked)
        )
        return Decision(
            verdict=verdict,
            rule_id=rule.id,
            clause=rule.clause,
            reason=rule.reason,
            role=role,
            service=service.id if service else None,
            service_name=service.name if service else (list_entry.name if list_entry else None),
            category=category,
            matched=hm.service_domain if service else (hm.list_domain or hm.category_domain),
            locked=locked,
            rewrite_to=rewrite_to,
            valid_until=valid_until,
            # A support site keeps none of the flags of categories it also appears in: it is
            # open, and an alert about reaching help would be a false claim about a child.
            flags=self.flags_for(self._support_bits if rule is self._support_rule else hm.categories),
            list_id=list_entry.id if list_entry else None,
            url_scoped=hm.url_entries and verdict is not Verdict.BLOCK,
        )


# -- the overlay, applied after the static decision -------------------------------------------


def _earlier(current: datetime | None, candidate: datetime) -> datetime:
    return candidate if current is None or candidate < current else current


def _active_ban(overlay: Overlay, client: Client, now: datetime) -> tuple[Ban | None, datetime | None]:
    """The ban in force for this client, and the next instant a ban starts or ends."""
    candidates: list[Ban] = []
    if client.device_id:
        candidates.extend(overlay.bans_by_device.get(client.device_id, ()))
    if client.person_id:
        candidates.extend(overlay.bans_by_person.get(client.person_id, ()))
    if client.mac:
        candidates.extend(overlay.bans_by_mac.get(client.mac.lower(), ()))
    active: Ban | None = None
    edge: datetime | None = None
    for ban in candidates:
        if ban.starts <= now and (ban.until is None or now < ban.until):
            if active is None or (active.until is not None and (ban.until is None or ban.until > active.until)):
                active = ban
        elif now < ban.starts:
            edge = _earlier(edge, ban.starts)
    if active is not None and active.until is not None:
        edge = _earlier(edge, active.until)
    return active, edge


def _exception_applies(exc: PolicyException, client: Client, role: Role) -> bool:
    if exc.scope is ExceptionScope.PERSON:
        return client.person_id is not None and client.person_id == exc.subject
    if exc.scope is ExceptionScope.DEVICE:
        if client.device_id is not None and client.device_id == exc.subject:
            return True
        return client.mac is not None and client.mac.lower() == exc.subject.lower()
    if exc.scope is ExceptionScope.ROLE:
        return role.value == exc.subject
    return exc.subject in client.groups


def _site_block(
    overlay: Overlay, names: Sequence[str], host: str, url: tuple[str, str] | None, *, client: Client, role: Role
) -> tuple[SiteBlock | None, bool]:
    """The technician's block that applies, and whether the answer depends on the page.

    A block of pages under a URL prefix is enforced at the prefix where the URL is visible.
    Without it (DNS; TLS the proxy does not open), a device that trusts the school CA is let
    through to the proxy, which then sees each page; any other device loses the whole site,
    never less than what was blocked."""
    for name in names:
        for block in overlay.blocks_by_domain.get(name, ()):
            if not block.roles or role in block.roles:
                return block, False
    url_scoped = False
    for prefix, block in overlay.blocks_by_url_host.get(url[0] if url is not None else host, ()):
        if block.roles and role not in block.roles:
            continue
        if url is None:
            url_scoped = True
            if not client.trusts_school_ca:
                return block, True
        elif url[1].startswith(prefix):
            return block, False
    return None, url_scoped


def _exceptions(
    overlay: Overlay, names: Sequence[str], host: str, url: tuple[str, str] | None, *, client: Client, role: Role
) -> tuple[list[PolicyException], bool]:
    """Exceptions for this client that cover the target, whatever their dates, and whether one
    of them is for pages under a URL prefix judged without the URL."""
    found: list[PolicyException] = []
    url_scoped = False
    for name in names:
        for exc in overlay.exceptions_by_domain.get(name, ()):
            if _exception_applies(exc, client, role):
                found.append(exc)
    for prefix, exc in overlay.exceptions_by_url_host.get(host, ()):
        # Without a URL (DNS, or TLS the proxy does not open) the whole host is allowed: the
        # proxy holds the line at the prefix where it can see the URL (a device that trusts the
        # school CA, which it then intercepts); elsewhere the whole site opens, as the triage
        # and decision pages say before the headteacher signs.
        if (url is None or url[1].startswith(prefix)) and _exception_applies(exc, client, role):
            found.append(exc)
            url_scoped = url_scoped or url is None
    return found, url_scoped


def _apply_overlay(
    policy: CompiledPolicy,
    base: Decision,
    *,
    client: Client,
    target: Target,
    host: str,
    names: Sequence[str],
    now: datetime,
    ban_edge: datetime | None,
    banned: Ban | None,
    own_role: Role | None = None,
) -> Decision:
    """Site blocks, then exceptions, over the rules' decision.

    A banned client (seed 001 §9) is supervised, full stop: its role is the supervised role,
    the site blocks for the role it would have had (`own_role`) still apply to it, and no
    person, device or group exception lifts a block (only one for the supervised role itself
    does). Support sites stay open to it, as to everyone.
    """
    overlay = policy.overlay
    decision = base
    valid_until = base.valid_until
    if ban_edge is not None:
        valid_until = _earlier(valid_until, ban_edge)
    url = url_key(target.url) if target.url else None
    url_scoped = False
    if base.rule_id != SUPPORT_RULE_ID and (decision.verdict is not Verdict.BLOCK or not decision.locked):
        block, url_scoped = _site_block(overlay, names, host, url, client=client, role=base.role)
        if block is None and own_role is not None:
            block, url_scoped = _site_block(overlay, names, host, url, client=client, role=own_role)
        if block is not None:
            decision = replace(
                decision,
                verdict=Verdict.BLOCK,
                rule_id=f"site-block-{block.id}",
                clause=policy.dynamic.site_block,
                reason=block.reason or "an ICT technician has blocked this site",
                rewrite_to=None,
                locked=False,
            )
    if decision.verdict is Verdict.BLOCK and not decision.locked:
        chosen: PolicyException | None = None
        excepted, exceptions_scoped = _exceptions(overlay, names, host, url, client=client, role=base.role)
        url_scoped = url_scoped or exceptions_scoped
        for exc in excepted:
            if banned is not None and exc.scope is not ExceptionScope.ROLE:
                continue  # a ban is not lifted by an exception for the person, device or group
            if exc.starts <= now < exc.expires:
                if chosen is None or exc.expires > chosen.expires:
                    chosen = exc
            elif now < exc.starts:
                valid_until = _earlier(valid_until, exc.starts)
        if chosen is not None:
            valid_until = _earlier(valid_until, chosen.expires)
            decision = replace(
                decision,
                verdict=Verdict.ALLOW,
                rule_id=f"exception-{chosen.id}",
                clause=policy.dynamic.exception,
                reason=chosen.reason or "an approved access request allows this for a limited time",
                exception_id=chosen.id,
            )
    flags = decision.flags | {"banned"} if banned is not None else decision.flags
    if decision is base and valid_until == base.valid_until and flags is base.flags and not url_scoped:
        return base
    return replace(decision, valid_until=valid_until, flags=flags, url_scoped=url_scoped or base.url_scoped,
                   own_role=own_role)


def decide(policy: CompiledPolicy, client: Client, target: Target, now: datetime, *, named: bool = True) -> Decision:
    """The verdict for `client` asking for `target` at `now` (an aware datetime).

    `named=False`: a name a list holds gets the decision its kind of match shares with every
    other such name, whose `matched` is the listed domain it was first made for, not
    necessarily this host's. Every other field is the same. For a caller that never reads
    `matched` (the DNS fast path: its answer, Extended DNS Error and event leave it out), this
    saves naming a copy of the decision for each new name (a Decision per name, and the
    collector's time for it)."""
    if now.tzinfo is None:
        raise ValueError("decide() needs an aware datetime (with a time zone)")
    ts = now.timestamp()
    role = client.role
    if role is None:
        role = policy._roles.get(client.ip) or policy.role_for_ip(client.ip)
    overlay = policy.overlay
    banned: Ban | None = None
    ban_edge: datetime | None = None
    own_role: Role | None = None
    if not overlay.empty and (overlay.bans_by_device or overlay.bans_by_person or overlay.bans_by_mac):
        banned, ban_edge = _active_ban(overlay, client, now)
        if banned is not None:
            own_role, role = role, Role.SUPERVISED
    host = target.host
    if not host.islower() or host.endswith("."):
        host = normalise_host(host)
    number, hm = policy._host_cache.get(host) or policy._match_new(host)
    if target.url is not None and policy.entries.url_count:
        with_url = policy.match_url(host, hm, target.url)
        if with_url is not hm:
            number, hm = policy.number_for(with_url), with_url
    ownership = client.ownership
    base = policy._static(
        role, client.year_group, number, hm, ts, device="unknown" if ownership is None else device_condition(ownership),
        named=named,
    )
    if overlay.empty:
        return base
    return _apply_overlay(
        policy, base, client=client, target=target, host=host, names=suffixes(host), now=now, ban_edge=ban_edge,
        banned=banned, own_role=own_role,
    )
