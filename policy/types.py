"""The vocabulary every part of schoolgate shares: who is asking, for what, and the answer.

These are plain frozen values. Nothing here touches the network, the clock or the database,
so the DNS daemon, the proxy and the console can all hand them around freely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """A person's or device's standing under the written policy."""

    PUPIL = "pupil"
    STAFF = "staff"
    AUTHORISED = "authorised"  # seed 001 §9: "except for those with authorised access"
    GUEST = "guest"
    SUPERVISED = "supervised"  # seed 001 §9: banned for circumvention, close supervision only

    @property
    def strictness(self) -> int:
        """Higher is stricter; an unknown device gets the strictest role its network allows."""
        return _STRICTNESS[self]


_STRICTNESS = {
    Role.AUTHORISED: 0,
    Role.STAFF: 1,
    Role.PUPIL: 2,
    Role.GUEST: 3,
    Role.SUPERVISED: 4,
}


class Ownership(StrEnum):
    """Whose a device is, as the device register records it (seed 001 §4: "school-owned mobile
    devices"). A device the register does not know, or whose owner is not recorded, has none."""

    SCHOOL_OWNED = "school_owned"
    PERSONAL = "personal"


# The `devices` condition of a rule names these; "unknown" is a device with no recorded ownership.
DEVICE_CONDITIONS = (Ownership.SCHOOL_OWNED.value, Ownership.PERSONAL.value, "unknown")


def device_condition(ownership: Ownership | None) -> str:
    """The name a rule's `devices` condition uses for a client's device."""
    return ownership.value if ownership is not None else "unknown"


class Verdict(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"  # DNS answers the block address; the proxy shows the block page or kills TLS
    SAFE_SEARCH = "safe_search"  # allowed, but the name is rewritten to the engine's safe host


@dataclass(frozen=True, slots=True)
class Client:
    """Who is asking. Built by schoolgate.identity from the source address."""

    ip: str
    mac: str | None = None
    device_id: str | None = None  # the device register's key (asset tag, hostname or MAC)
    device_name: str | None = None
    person_id: str | None = None
    person_name: str | None = None
    role: Role | None = None  # None: fall back to the strictest role of the client's network
    year_group: int | None = None  # pupils: Reception = 0, Year 1..6
    groups: frozenset[str] = frozenset()  # classes or staff teams, e.g. {"6B"}
    trusts_school_ca: bool = False
    ownership: Ownership | None = None  # the register's record; None: unregistered or not recorded
    # Which source tied the address to this device or person (neighbour, dhcp, radius...):
    # recorded with every event, never used by the policy.
    identity_source: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """What is asked for: a hostname, and the URL when the proxy can see it."""

    host: str
    url: str | None = None


class ExceptionScope(StrEnum):
    PERSON = "person"
    DEVICE = "device"
    ROLE = "role"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class PolicyException:
    """A time-limited allowance, normally created by an approved access request (appendix A)."""

    id: int
    scope: ExceptionScope
    subject: str  # person id, device id, role name or group name, according to scope
    domain: str | None  # the domain and its subdomains; or
    url_prefix: str | None  # a URL prefix (the proxy can honour it; DNS allows the host)
    starts: datetime
    expires: datetime
    reason: str = ""
    request_id: int | None = None


@dataclass(frozen=True, slots=True)
class Ban:
    """Seed 001 §9: a ban from school computing equipment other than with close supervision."""

    id: int
    device_id: str | None
    person_id: str | None
    mac: str | None
    starts: datetime
    until: datetime | None  # None: until it is lifted
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SiteBlock:
    """A block added by a technician, e.g. after an inappropriate-content report (appendix B)."""

    id: int
    domain: str | None
    url_prefix: str | None
    roles: frozenset[Role]  # empty: every role
    reason: str = ""
    report_id: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer, with enough context to explain it to a headteacher."""

    verdict: Verdict
    rule_id: str
    clause: str  # the written policy clause the rule implements, e.g. "Social Media Policy §6, §9"
    reason: str  # plain words: "pupils may not use social media at school"
    role: Role
    service: str | None = None  # catalogue id, e.g. "facebook"
    service_name: str | None = None  # display name, e.g. "Facebook"
    category: str | None = None  # e.g. "social_media", "circumvention"
    matched: str | None = None  # the listed domain that matched, e.g. "facebook.com"
    locked: bool = False  # hard block: no exception or approval overrides it
    exception_id: int | None = None  # set when an exception allowed this
    rewrite_to: str | None = None  # SAFE_SEARCH: the host to answer with as a CNAME
    valid_until: datetime | None = None  # next instant the verdict could change; None: not foreseeable
    flags: frozenset[str] = field(default_factory=frozenset)  # e.g. {"circumvention"}
    list_id: str | None = None  # the policy's domain list that matched, when no catalogue service did
    # The verdict depends on the page: a block or exception for pages under a URL prefix was
    # judged without the URL. DNS steers such a host to the proxy, which intercepts it for a
    # device that trusts the school CA so that each page is judged with its URL.
    url_scoped: bool = False
    # A banned client's role but for the ban (its `role` is then supervised): who the child is,
    # so that a banned pupil, registered or not, still gets the children's block page.
    own_role: Role | None = None

    @property
    def blocked(self) -> bool:
        return self.verdict is Verdict.BLOCK

    def about(self, matched: str) -> Decision:
        """The same decision, for another listed domain of the same match (the engine
        remembers one decision per kind of match and names the domain afterwards).

        This is on the path of every name a list holds that the engine has not seen, so it is
        written out slot by slot through the slots' own setters: `dataclasses.replace` costs
        about 5 µs (it rebuilds and revalidates every field), a loop of `setattr` by name about
        1.7 µs, and this about 0.8 µs. A field added to Decision must be added here too
        (tests/policy/test_lists.py fails until it is)."""
        copied: Decision = _new_decision(Decision)
        _put_verdict(copied, self.verdict)
        _put_rule_id(copied, self.rule_id)
        _put_clause(copied, self.clause)
        _put_reason(copied, self.reason)
        _put_role(copied, self.role)
        _put_service(copied, self.service)
        _put_service_name(copied, self.service_name)
        _put_category(copied, self.category)
        _put_matched(copied, matched)
        _put_locked(copied, self.locked)
        _put_exception_id(copied, self.exception_id)
        _put_rewrite_to(copied, self.rewrite_to)
        _put_valid_until(copied, self.valid_until)
        _put_flags(copied, self.flags)
        _put_list_id(copied, self.list_id)
        _put_url_scoped(copied, self.url_scoped)
        _put_own_role(copied, self.own_role)
        return copied


_new_decision = object.__new__


def _slot_setter(name: str) -> Callable[[Decision, Any], None]:
    """The setter of one of Decision's slots: a frozen value is filled in once, through it,
    before anyone sees it."""
    setter: Callable[[Decision, Any], None] = vars(Decision)[name].__set__
    return setter


_put_verdict = _slot_setter("verdict")
_put_rule_id = _slot_setter("rule_id")
_put_clause = _slot_setter("clause")
_put_reason = _slot_setter("reason")
_put_role = _slot_setter("role")
_put_service = _slot_setter("service")
_put_service_name = _slot_setter("service_name")
_put_category = _slot_setter("category")
_put_matched = _slot_setter("matched")
_put_locked = _slot_setter("locked")
_put_exception_id = _slot_setter("exception_id")
_put_rewrite_to = _slot_setter("rewrite_to")
_put_valid_until = _slot_setter("valid_until")
_put_flags = _slot_setter("flags")
_put_list_id = _slot_setter("list_id")
_put_url_scoped = _slot_setter("url_scoped")
_put_own_role = _slot_setter("own_role")
