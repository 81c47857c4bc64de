"""From the parsed policy file to a `CompiledPolicy`, checking every field on the way.

The compiler never opens files: the loader hands it the file's text, the parsed TOML, and a
function that yields the lines of a list file. Every mistake becomes a `ConfigError` that
names the file, the line and the field, in words a technician can act on, e.g.

    policy.toml:42: rules[3].when: unknown window "lunchtime" (known: lunch, morning_break, ...)

Rules are numbered from 1 in messages: rules[3] is the third [[rules]] block in the file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schoolgate.policy.catalogue import BUILTIN, CATALOGUE, ILLEGAL, BuiltinCategory, canary_for
from schoolgate.policy.domains import MAX_LISTS, ListIndex
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.lists import (
    FORMATS,
    ListStats,
    adguard_names,
    parse_adguard_services,
    parse_list,
    split_addresses,
    valid_name,
)
from schoolgate.policy.liststore import ListStore, StoreBuilder
from schoolgate.policy.model import (
    CIRCUMVENTION_BAN_MODES,
    BanPolicy,
    Category,
    Document,
    DomainList,
    DynamicClauses,
    IPNetwork,
    ListSource,
    Network,
    Rule,
    SafeSearch,
    School,
    Service,
)
from schoolgate.policy.timeline import WEEKDAY_NAMES, Calendar, DayKind, Span, Term, Window, make_span, parse_clock
from schoolgate.policy.types import DEVICE_CONDITIONS, Role, Verdict
from schoolgate.tomlpos import ConfigError, locate

Path = tuple[str | int, ...]
ListReader = Callable[[str], Iterable[str]]  # list file (as written in the policy) -> its lines

ROLE_NAMES = tuple(r.value for r in Role)
MAX_WINDOWS = 60
MAX_CATEGORIES = 60

_TOP = (
    "school", "document", "calendar", "windows", "networks", "categories", "services", "lists", "rules", "default",
    "dynamic", "bans",
)
_DOCUMENT = ("title", "approved", "review", "review_by")
_SCHOOL = ("id", "name", "federation", "timezone", "block_ipv4", "block_ipv6", "unknown_network_role",
           "safeguarding_readers")
#: Who may be named as reading safeguarding detail (console roles; the DSL always does).
SAFEGUARDING_READERS = ("dsl", "headteacher")
_CALENDAR = ("terms", "closures")
_TERM = ("name", "start", "end")
_CLOSURE = ("date", "to", "reason", "kind")
_CLOSURE_KINDS = ("closure", "inset")
_WINDOW = ("from", "to", "times", "days", "calendar", "description")
_NETWORK = ("name", "cidrs", "role")
_CATEGORY = ("name", "locked", "flags", "description")
_SERVICE = ("name", "category", "domains", "hosts", "safe_search", "safe_search_hosts", "locked", "operator")
_LIST = (
    "name", "file", "url", "format", "category", "categories", "services", "sha256", "max_size_mb", "timeout_s"
)
_RULE = (
    "id",
    "clause",
    "reason",
    "action",
    "roles",
    "services",
    "categories",
    "lists",
    "when",
    "unless",
    "year_groups",
    "devices",
    "locked",
    "safe_search",
)
_DEFAULT = ("action", "clause", "reason")
_DYNAMIC = ("exception_clause", "site_block_clause", "ban_clause", "circumvention_clause")
_BANS = ("on_circumvention", "automatic_roles", "days", "supervisor")
_ACTIONS = {"allow": Verdict.ALLOW, "block": Verdict.BLOCK, "safe_search": Verdict.SAFE_SEARCH}
_DAY_SETS = {
    "mon-fri": (0, 1, 2, 3, 4),
    "weekdays": (0, 1, 2, 3, 4),
    "sat-sun": (5, 6),
    "weekend": (5, 6),
    "all": (0, 1, 2, 3, 4, 5, 6),
    "mon-sun": (0, 1, 2, 3, 4, 5, 6),
}


def field_name(path: Path) -> str:
    """("rules", 2, "when") -> "rules[3].when" (numbered from 1, as a person counts)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part + 1}]"
        else:
            out += ("." if out else "") + part
    return out


def _known(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return ", ".join(ordered) if ordered else "none defined"


class _Source:
    """The file being compiled: knows how to point at a field when something is wrong."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text

    def error(self, path: Path, message: str, *, element: int | None = None) -> ConfigError:
        """`element`: the index of the offending value in a list field; it moves the line to
        that value but is left out of the field name, since the message quotes the value."""
        where = (*path, element) if element is not None else path
        line = locate(self.text, where) if where else None
        return ConfigError(self.path, line, field_name(path), message)

    def table(self, value: Any, path: Path, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(path, f"must be a table ({what})")
        for key in value:
            if key not in allowed:
                raise self.error((*path, key), f'unknown field "{key}" in {what} (known: {", ".join(allowed)})')
        return value

    def required(self, table: Mapping[str, Any], path: Path, key: str, hint: str) -> Any:
        if key not in table:
            raise self.error(path, f'missing required field "{key}": {hint}')
        return table[key]

    def string(self, value: Any, path: Path, *, empty_ok: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(path, f"must be text in quotes, got {_show(value)}")
        if not empty_ok and not value.strip():
            raise self.error(path, "must not be empty")
        return value

    def boolean(self, value: Any, path: Path) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, f"must be true or false, got {_show(value)}")
        return value

    def strings(self, value: Any, path: Path) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(path, f'must be a list of names in quotes, e.g. ["a", "b"]; got {_show(value)}')
        return list(value)

    def day(self, value: Any, path: Path) -> date:
        if isinstance(value, date) and not hasattr(value, "hour"):
            return value
        if isinstance(value, str):
            try:
                return date.fromisoformat(value.strip())
            except ValueError:
                pass
        raise self.error(path, f"{_show(value)} is not a date; write it as YYYY-MM-DD, e.g. 2026-09-03")


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _role(src: _Source, value: Any, path: Path, element: int | None = None) -> Role:
    name = src.string(value, path)
    try:
        return Role(name)
    except ValueError:
        raise src.error(path, f'unknown role "{name}" (known: {", ".join(ROLE_NAMES)})', element=element) from None


def _domain(src: _Source, value: Any, path: Path, element: int | None = None) -> str:
    name = src.string(value, path).strip().lower().rstrip(".")
    if not valid_name(name) or "." not in name:
        message = f'"{value}" is not a domain name (write it like "facebook.com", no http:// or /)'
        raise src.error(path, message, element=element)
    return name


# -- sections -----------------------------------------------------------------------------------


def _school(src: _Source, raw: Any) -> School:
    table = src.table(raw, ("school",), _SCHOOL, "[school]")
    school_id = src.string(
        src.required(table, ("school",), "id", 'a short name, e.g. id = "kingswood"'), ("school", "id")
    )
    name = src.string(src.required(table, ("school",), "name", 'e.g. name = "Kingswood Primary"'), ("school", "name"))
    tz_name = src.string(
        src.required(table, ("school",), "timezone", 'e.g. timezone = "Europe/London"'), ("school", "timezone")
    )
    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise src.error(
            ("school", "timezone"), f'unknown time zone "{tz_name}" (UK schools use "Europe/London")'
        ) from None
    ipv4 = src.string(
        src.required(table, ("school",), "block_ipv4", "the address blocked names resolve to"), ("school", "block_ipv4")
    )
    try:
        if ipaddress.ip_address(ipv4).version != 4:
            raise ValueError
    except ValueError:
        raise src.error(("school", "block_ipv4"), f'"{ipv4}" is not an IPv4 address, e.g. "10.20.0.1"') from None
    ipv6: str | None = None
    if "block_ipv6" in table:
        ipv6 = src.string(table["block_ipv6"], ("school", "block_ipv6"))
        try:
            if ipaddress.ip_address(ipv6).version != 6:
                raise ValueError
        except ValueError:
            raise src.error(("school", "block_ipv6"), f'"{ipv6}" is not an IPv6 address, e.g. "fd20::1"') from None
    unknown = Role.GUEST
    if "unknown_network_role" in table:
        unknown = _role(src, table["unknown_network_role"], ("school", "unknown_network_role"))
    federation = src.string(table.get("federation", ""), ("school", "federation"), empty_ok=True)
    readers: tuple[str, ...] = ("dsl",)
    if "safeguarding_readers" in table:
        path: Path = ("school", "safeguarding_readers")
        named = src.strings(table["safeguarding_readers"], path)
        unknown_readers = [r for r in named if r not in SAFEGUARDING_READERS]
        if unknown_readers:
            raise src.error(path, f'unknown reader "{unknown_readers[0]}" (one of: {", ".join(SAFEGUARDING_READERS)})')
        if "dsl" not in named:
            raise src.error(path, 'must include "dsl": the DSL always reads safeguarding detail')
        readers = tuple(sorted(set(named)))
    return School(school_id, name, tz_name, zone, ipv4, ipv6, unknown, federation, readers)


def _document(src: _Source, raw: Any) -> Document:
    table = src.table(raw, ("document",), _DOCUMENT, "[document]")
    path: Path = ("document",)
    title = src.string(
        src.required(table, path, "title", 'the written policy\'s name, e.g. title = "Social Media Policy"'),
        (*path, "title"),
    )
    review_by = src.day(
        src.required(table, path, "review_by", "the date the school must review the policy by, e.g. 2027-03-31"),
        (*path, "review_by"),
    )
    return Document(
        title=title,
        review_by=review_by,
        approved=src.string(table.get("approved", ""), (*path, "approved"), empty_ok=True),
        review=src.string(table.get("review", ""), (*path, "review"), empty_ok=True),
    )


def _calendar(src: _Source, raw: Any) -> Calendar:
    table = src.table(raw, ("calendar",), _CALENDAR, "[calendar]")
    terms_raw = src.required(
        table, ("calendar",), "terms", "the term dates, e.g. terms = [{ name = ..., start = ..., end = ... }]"
    )
    if not isinstance(terms_raw, list) or not terms_raw:
        raise src.error(("calendar", "terms"), "must be a list of terms, each { name, start, end }")
    terms: list[Term] = []
    for i, entry in enumerate(terms_raw):
        path: Path = ("calendar", "terms", i)
        item = src.table(entry, path, _TERM, "a term")
        start = src.day(src.required(item, path, "start", "the first day of the term"), (*path, "start"))
        end = src.day(src.required(item, path, "end", "the last day of the term"), (*path, "end"))
        name = src.string(item.get("name", f"term {i + 1}"), (*path, "name"))
        if end < start:
            raise src.error((*path, "end"), f"the term ends ({end}) before it starts ({start})")
        terms.append(Term(name, start, end))
    closures: dict[date, str] = {}
    inset: set[date] = set()
    closures_raw = table.get("closures", [])
    if not isinstance(closures_raw, list):
        raise src.error(("calendar", "closures"), "must be a list of closure days, each { date, reason }")
    for i, entry in enumerate(closures_raw):
        path = ("calendar", "closures", i)
        if isinstance(entry, (date, str)):
            closures[src.day(entry, path)] = "closure day"
            continue
        item = src.table(entry, path, _CLOSURE, "a closure day")
        first = src.day(src.required(item, path, "date", "the day the school is closed"), (*path, "date"))
        last = src.day(item["to"], (*path, "to")) if "to" in item else first
        if last < first:
            raise src.error((*path, "to"), f"the closure ends ({last}) before it starts ({first})")
        kind = src.string(item.get("kind", "closure"), (*path, "kind"))
        if kind not in _CLOSURE_KINDS:
            raise src.error(
                (*path, "kind"),
                f'unknown kind "{kind}" (known: closure = nobody in, inset = staff training day, pupils off)',
            )
        reason = src.string(item.get("reason", "INSET day" if kind == "inset" else "closure day"), (*path, "reason"))
        day = first
        while day <= last:
            closures[day] = reason
            if kind == "inset":
                inset.add(day)
            day = date.fromordinal(day.toordinal() + 1)
    return Calendar(tuple(terms), closures, frozenset(inset))


def _weekdays(src: _Source, value: Any, path: Path) -> frozenset[int]:
    if isinstance(value, str) and value.strip().lower() in _DAY_SETS:
        return frozenset(_DAY_SETS[value.strip().lower()])
    names = src.strings(value, path)
    out: set[int] = set()
    for name in names:
        key = name.strip().lower()[:3]
        if key not in WEEKDAY_NAMES or len(name.strip()) < 3:
            raise src.error(
                path, f'unknown day "{name}" (use mon, tue, wed, thu, fri, sat, sun, or "mon-fri", "weekend", "all")'
            )
        out.add(WEEKDAY_NAMES.index(key))
    if not out:
        raise src.error(path, "needs at least one day")
    return frozenset(out)


def _span(src: _Source, start: Any, end: Any, path_start: Path, path_end: Path) -> Span:
    begin = _clock(src, start, path_start)
    finish = _clock(src, end, path_end)
    try:
        return make_span(begin, finish)
    except ValueError as err:
        raise src.error(path_end, str(err)) from None


def _clock(src: _Source, value: Any, path: Path) -> int:
    text = src.string(value, path)
    try:
        return parse_clock(text)
    except ValueError as err:
        raise src.error(path, str(err)) from None


def _windows(src: _Source, raw: Any) -> tuple[Window, ...]:
    if not isinstance(raw, dict):
        raise src.error(("windows",), "must be a set of named windows, e.g. [windows.lunch]")
    windows: list[Window] = []
    for name, entry in raw.items():
        path: Path = ("windows", name)
        item = src.table(entry, path, _WINDOW, f"window {name}")
        spans: list[Span] = []
        if "times" in item:
            if "from" in item or "to" in item:
                raise src.error((*path, "times"), 'use either "times" or "from"/"to", not both')
            for text in src.strings(item["times"], (*path, "times")):
                start, sep, end = text.partition("-")
                if not sep:
                    raise src.error((*path, "times"), f'"{text}" should look like "10:30-10:45"')
                spans.append(_span(src, start, end, (*path, "times"), (*path, "times")))
            if not spans:
                raise src.error((*path, "times"), "needs at least one time span")
        else:
            start = src.required(item, path, "from", 'when the window opens, e.g. from = "12:00"')
            end = src.required(item, path, "to", 'when the window closes, e.g. to = "13:00"')
            spans.append(_span(src, start, end, (*path, "from"), (*path, "to")))
        kind = DayKind.SCHOOL_DAYS
        if "calendar" in item:
            value = src.string(item["calendar"], (*path, "calendar"))
            try:
                kind = DayKind(value)
            except ValueError:
                choices = ", ".join(k.value for k in DayKind)
                raise src.error((*path, "calendar"), f'unknown calendar "{value}" (known: {choices})') from None
        default_days = "mon-fri" if kind in (DayKind.SCHOOL_DAYS, DayKind.STAFF_DAYS) else "all"
        days = _weekdays(src, item.get("days", default_days), (*path, "days"))
        windows.append(Window(name, tuple(spans), days, kind))
    if len(windows) > MAX_WINDOWS:
        raise src.error(("windows",), f"too many windows ({len(windows)}; at most {MAX_WINDOWS})")
    return tuple(windows)


def _networks(src: _Source, raw: Any) -> tuple[Network, ...]:
    if not isinstance(raw, list):
        raise src.error(("networks",), "must be a list of [[networks]] blocks")
    out: list[Network] = []
    for i, entry in enumerate(raw):
        path: Path = ("networks", i)
        item = src.table(entry, path, _NETWORK, "a network")
        name = src.string(item.get("name", f"network {i + 1}"), (*path, "name"))
        cidrs = src.strings(src.required(item, path, "cidrs", 'e.g. cidrs = ["10.20.16.0/20"]'), (*path, "cidrs"))
        role = _role(src, src.required(item, path, "role", 'the default role, e.g. role = "pupil"'), (*path, "role"))
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for n, cidr in enumerate(cidrs):
            try:
                nets.append(ipaddress.ip_network(cidr.strip(), strict=True))
            except ValueError as err:
                raise src.error(
                    (*path, "cidrs"), element=n, message=f'"{cidr}" is not a network in CIDR form ({err})'
                ) from None
        out.append(Network(name, tuple(nets), role))
    return tuple(out)


def _categories(src: _Source, raw: Any) -> tuple[Category, ...]:
    """The catalogue's built-in categories (reworded where the policy says so), then the
    policy's own, in the order written."""
    if not isinstance(raw, dict):
        raise src.error(("categories",), "must be a set of named categories, e.g. [categories.social_media]")
    out: list[Category] = []
    for builtin in CATALOGUE:
        item = src.table(raw.get(builtin.id, {}), ("categories", builtin.id), _CATEGORY, f"category {builtin.id}")
        out.append(_category(src, builtin.id, item, len(out), builtin))
    for cid, entry in raw.items():
        if cid in BUILTIN:
            continue
        path: Path = ("categories", cid)
        item = src.table(entry, path, _CATEGORY, f"category {cid}")
        out.append(_category(src, cid, item, len(out), None))
    if len(out) > MAX_CATEGORIES:
        raise src.error(("categories",), f"too many categories (at most {MAX_CATEGORIES})")
    return tuple(out)


def _category(src: _Source, cid: str, item: Mapping[str, Any], bit: int, builtin: BuiltinCategory | None) -> Category:
    path: Path = ("categories", cid)
    flags = frozenset(src.strings(item.get("flags", []), (*path, "flags")))
    locked = builtin.locked if builtin is not None else False
    if "locked" in item:
        wanted = src.boolean(item["locked"], (*path, "locked"))
        if builtin is not None and builtin.locked and not wanted:
            # Illegal content and ways round the filter are hard blocks whatever the file says
            # (DfE filtering standards; seed 001 §9).
            raise src.error((*path, "locked"), f'the "{cid}" category is always locked; it cannot be unlocked')
        if builtin is not None and builtin.always_allowed and wanted:
            raise src.error((*path, "locked"), f'the "{cid}" category is never blocked, so it cannot be locked')
        locked = locked or wanted
    if builtin is not None:
        flags |= builtin.flags
    return Category(
        id=cid,
        bit=bit,
        name=src.string(item.get("name", builtin.name if builtin else cid), (*path, "name")),
        locked=locked,
        flags=flags,
        description=src.string(
            item.get("description", builtin.rationale if builtin else ""), (*path, "description"), empty_ok=True
        ),
        canary=canary_for(cid) if valid_name(canary_for(cid)) else None,
        builtin=builtin is not None,
        always_allowed=builtin is not None and builtin.always_allowed,
        uksic=builtin is not None and builtin.uksic,
    )


def _safe_search(src: _Source, value: Any, path: Path) -> SafeSearch:
    if isinstance(value, str):
        return SafeSearch(_domain(src, value, path))
    if isinstance(value, dict):
        item = src.table(value, path, ("strict", "moderate"), "safe_search")
        strict = _domain(src, src.required(item, path, "strict", "the strict safe-search host"), (*path, "strict"))
        moderate = _domain(src, item["moderate"], (*path, "moderate")) if "moderate" in item else None
        return SafeSearch(strict, moderate)
    raise src.error(path, 'must be a host, e.g. "forcesafesearch.google.com", or { strict = ..., moderate = ... }')


def _services(src: _Source, raw: Any, categories: Mapping[str, Category]) -> tuple[Service, ...]:
    if not isinstance(raw, dict):
        raise src.error(("services",), "must be a set of named services, e.g. [services.facebook]")
    out: list[Service] = []
    owner: dict[tuple[str, bool], str] = {}
    for index, (sid, entry) in enumerate(raw.items()):
        path: Path = ("services", sid)
        item = src.table(entry, path, _SERVICE, f"service {sid}")
        category: str | None = None
        if "category" in item:
            category = src.string(item["category"], (*path, "category"))
            if category not in categories:
                raise src.error((*path, "category"), f'unknown category "{category}" (known: {_known(categories)})')
        domains: list[str] = []
        hosts: list[str] = []
        for key, exact, bucket in (("domains", False, domains), ("hosts", True, hosts)):
            for n, value in enumerate(src.strings(item.get(key, []), (*path, key))):
                name = _domain(src, value, (*path, key), element=n)
                previous = owner.get((name, exact))
                if previous is not None and previous != sid:
                    raise src.error(
                        (*path, key), element=n, message=f'"{name}" is already listed under service "{previous}"'
                    )
                owner[(name, exact)] = sid
                bucket.append(name)
        if not domains and not hosts:
            raise src.error(path, f'service "{sid}" needs "domains" (with subdomains) or "hosts" (exact names)')
        safe = _safe_search(src, item["safe_search"], (*path, "safe_search")) if "safe_search" in item else None
        safe_hosts: frozenset[str] | None = None
        if "safe_search_hosts" in item:
            if safe is None:
                raise src.error((*path, "safe_search_hosts"), 'only makes sense together with "safe_search"')
            safe_hosts = frozenset(
                _domain(src, v, (*path, "safe_search_hosts"))
                for v in src.strings(item["safe_search_hosts"], (*path, "safe_search_hosts"))
            )
        out.append(
            Service(
                id=sid,
                index=index,
                name=src.string(item.get("name", sid), (*path, "name")),
                category=category,
                domains=tuple(domains),
                hosts=tuple(hosts),
                safe_search=safe,
                safe_search_hosts=safe_hosts,
                locked=_service_lock(src, item, path, categories.get(category) if category else None),
                operator=src.string(item.get("operator", ""), (*path, "operator"), empty_ok=True),
            )
        )
    return tuple(out)


def _service_lock(src: _Source, item: Mapping[str, Any], path: Path, category: Category | None) -> bool:
    locked = src.boolean(item.get("locked", False), (*path, "locked"))
    if locked and category is not None and category.always_allowed:
        raise src.error((*path, "locked"), f'"{category.id}" sites are never blocked, so they cannot be locked')
    return locked


_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}").fullmatch
_SHA256 = re.compile(r"[0-9a-f]{64}").fullmatch
_MAX_DOWNLOAD_MB = 4096


def _list_source(src: _Source, lid: str, item: Mapping[str, Any], categories: Mapping[str, Category]) -> ListSource:
    """The [lists.ID] table as a ListSource: where the list comes from and how to read it."""
    path: Path = ("lists", lid)
    if "file" in item and "url" in item:
        raise src.error((*path, "url"), 'give either file = "..." (a local file) or url = "..." (a subscription)')
    if "file" not in item and "url" not in item:
        raise src.error(
            path, 'missing "file" (a local list, e.g. file = "lists/malware.txt") or "url" (a subscription)'
        )
    fmt = src.string(src.required(item, path, "format", f"one of {', '.join(FORMATS)}"), (*path, "format"))
    if fmt not in FORMATS:
        raise src.error((*path, "format"), f'unknown list format "{fmt}" (known: {", ".join(FORMATS)})')
    file: str | None = None
    url: str | None = None
    if "file" in item:
        file = src.string(item["file"], (*path, "file"))
        if fmt == "squidguard":
            raise src.error(
                (*path, "format"),
                'a squidguard set is installed with url = "..." or `schoolgate lists import`, not read as a file',
            )
        for key in ("sha256", "max_size_mb", "timeout_s"):
            if key in item:
                raise src.error((*path, key), 'only for a subscription (url = "...")')
    else:
        url = src.string(item["url"], (*path, "url")).strip()
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.username or parts.password:
            raise src.error((*path, "url"), f'"{url}" is not a web address like "https://example.org/list.txt"')
    category: str | None = None
    if "category" in item:
        if fmt == "squidguard":
            raise src.error((*path, "category"), 'a squidguard set maps its folders with categories = { ... }')
        category = src.string(item["category"], (*path, "category"))
        if category not in categories:
            raise src.error((*path, "category"), f'unknown category "{category}" (known: {_known(categories)})')
    mapping: list[tuple[str, tuple[str, ...]]] = []
    if "categories" in item:
        if fmt != "squidguard":
            raise src.error((*path, "categories"), 'only for format = "squidguard"; other lists take category = "..."')
        table = item["categories"]
        if not isinstance(table, dict) or not table:
            raise src.error(
                (*path, "categories"), 'must map the set\'s folders, e.g. categories = { adult = "pornography" }'
            )
        for name, value in table.items():
            where: Path = (*path, "categories", name)
            if not _SOURCE_NAME(name):
                raise src.error(where, f'"{name}" is not a folder name of a squidguard set')
            mapped = src.strings(value, where)
            if not mapped:
                raise src.error(where, "maps onto no category; leave the folder out to leave it unused")
            for n, target in enumerate(mapped):
                if target not in categories:
                    message = f'unknown category "{target}" (known: {_known(categories)})'
                    raise src.error(where, message, element=n if isinstance(value, list) else None)
            mapping.append((name, tuple(dict.fromkeys(mapped))))
    elif fmt == "squidguard":
        raise src.error(
            path, 'a squidguard set needs categories = { folder = "category", ... } (unmapped folders are not used)'
        )
    wanted: tuple[str, ...] | None = None
    if "services" in item:
        if fmt != "adguard-services":
            raise src.error((*path, "services"), 'only for format = "adguard-services"')
        wanted = tuple(src.strings(item["services"], (*path, "services")))
    sha256: str | None = None
    if "sha256" in item:
        sha256 = src.string(item["sha256"], (*path, "sha256")).strip().lower()
        if not _SHA256(sha256):
            raise src.error((*path, "sha256"), "must be the 64 hexadecimal digits of the file's SHA-256")
    max_mb = _whole(src, item, (*path, "max_size_mb"), default=256, low=1, high=_MAX_DOWNLOAD_MB)
    timeout_s = _whole(src, item, (*path, "timeout_s"), default=300, low=5, high=3600)
    return ListSource(
        id=lid,
        format=fmt,
        file=file,
        url=url,
        category=category,
        categories=tuple(mapping),
        services=wanted,
        sha256=sha256,
        max_bytes=max_mb << 20,
        timeout_s=timeout_s,
    )


def _whole(src: _Source, item: Mapping[str, Any], path: Path, *, default: int, low: int, high: int) -> int:
    key = str(path[-1])
    if key not in item:
        return default
    value = item[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise src.error(path, f"must be a whole number from {low} to {high}, got {_show(value)}")
    return value


Installed = Callable[[ListSource], ListStore | None]  # a subscription -> its version in force, if any


def _lists(
    src: _Source,
    raw: Any,
    categories: Mapping[str, Category],
    reader: ListReader | None,
    *,
    installed: Installed | None,
    seed: int,
    warnings: list[str],
) -> tuple[tuple[DomainList, ...], tuple[ListIndex, ...]]:
    """The [lists] section: local files compiled into one list store here, subscriptions
    taken from the versions installed (the caller maps them)."""
    if not isinstance(raw, dict):
        raise src.error(("lists",), "must be a set of named lists, e.g. [lists.malware]")
    if len(raw) > MAX_LISTS:
        raise src.error(("lists",), f"too many lists ({len(raw)}; at most {MAX_LISTS}); merge some files")
    sources: list[tuple[str, Mapping[str, Any], ListSource]] = []
    for lid, entry in raw.items():
        item = src.table(entry, ("lists", lid), _LIST, f"list {lid}")
        sources.append((lid, item, _list_source(src, lid, item, categories)))
    local_ids = [lid for lid, _, source in sources if source.file is not None]
    local = StoreBuilder(seed, local_ids)
    out: list[DomainList] = []
    indexes: list[ListIndex] = []
    local_bits: list[tuple[int, int]] = []
    for bit, (lid, table, source) in enumerate(sources):
        path: Path = ("lists", lid)
        name = src.string(table.get("name", lid), (*path, "name"))
        category_bits = 1 << categories[source.category].bit if source.category else 0
        if source.file is None:
            entry, index = _subscription(
                source, bit, name, categories=categories, installed=installed, warnings=warnings
            )
            out.append(entry)
            if index is not None:
                indexes.append(index)
            continue
        stats = _read_local(src, path, source, reader=reader, builder=local, number=len(local_bits))
        local_bits.append((category_bits, 1 << bit))
        out.append(
            DomainList(
                id=lid, bit=bit, name=name, file=source.file, format=source.format, category=source.category,
                count=stats.accepted, summary=stats.summary(), source=source,
            )
        )
    if local_ids:
        indexes.insert(0, ListIndex(ListStore(local.build({"version": "local"})), tuple(local_bits)))
    return tuple(out), tuple(indexes)


def _read_local(
    src: _Source, path: Path, source: ListSource, *, reader: ListReader | None, builder: StoreBuilder, number: int
) -> ListStats:
    """Parse one local list file into the policy's local store, as source `number`."""
    file = source.file
    assert file is not None
    fmt = source.format
    if reader is None:
        raise src.error((*path, "file"), "list files cannot be read here")
    stats = ListStats()
    exact: list[str] = []
    networks: list[IPNetwork] = []
    try:
        lines = reader(file)
        if fmt == "adguard-services":
            try:
                services = parse_adguard_services("".join(lines))
            except ValueError as err:
                raise src.error((*path, "file"), f'"{file}": {err}') from None
            chosen = list(source.services) if source.services is not None else list(services)
            for sid in chosen:
                if sid not in services:
                    raise src.error((*path, "services"), f'"{sid}" is not in {file} (it has: {_known(services)})')
            builder.add_names(adguard_names(services, chosen, stats, exact), number)
        else:
            builder.add_names(split_addresses(parse_list(fmt, lines, stats, exact), networks, stats), number)
    except FileNotFoundError:
        raise src.error((*path, "file"), f'list file "{file}" not found') from None
    except UnicodeDecodeError:
        raise src.error((*path, "file"), f'list file "{file}" is not UTF-8 text') from None
    except OSError as err:
        raise src.error((*path, "file"), f'cannot read list file "{file}": {err.strerror or err}') from None
    builder.add_names(exact, number, exact=True)
    for network in networks:
        builder.add_network(network, number)
    if stats.accepted == 0:
        raise src.error((*path, "file"), f'list file "{file}" holds no domain names in {fmt} format')
    return stats


def _subscription(
    source: ListSource,
    bit: int,
    name: str,
    *,
    categories: Mapping[str, Category],
    installed: Installed | None,
    warnings: list[str],
) -> tuple[DomainList, ListIndex | None]:
    """A subscription's installed version, as the policy's categories see it."""
    store = installed(source) if installed is not None else None
    empty = DomainList(
        id=source.id, bit=bit, name=name, file="", format=source.format, category=source.category, count=0,
        summary="no version installed yet", source=source,
    )
    if store is None:
        warnings.append(
            f"list {source.id}: no version of {source.url} is installed yet; until the first "
            "`schoolgate lists update` its categories are filled only by local lists and the catalogue"
        )
        return empty, None
    bits: list[tuple[int, int]] = []
    for folder in store.sources:
        mapped = source.categories_of(folder)
        category_bits = sum(1 << categories[c].bit for c in mapped)
        used = bool(mapped) or (source.format != "squidguard" and not folder)
        bits.append((category_bits, 1 << bit if used else 0))
    if source.format == "squidguard":
        present = set(store.info.get("all_sources", store.sources))
        compiled = set(store.sources)
        for folder, _ in source.categories:
            if folder not in present:
                warnings.append(f"list {source.id}: the installed version has no folder {folder!r}")
            elif folder not in compiled:
                warnings.append(
                    f"list {source.id}: folder {folder!r} was not mapped when the installed version was "
                    "compiled; run `schoolgate lists update` to use it"
                )
    version = str(store.info.get("version", "")) or None
    summary = str(store.info.get("summary", "")) or f"{store.key_count} names"
    entry = DomainList(
        id=source.id, bit=bit, name=name, file="", format=source.format, category=source.category,
        count=store.key_count + store.url_count + store.address_count, summary=summary, source=source,
        version=version,
    )
    return entry, ListIndex(store, tuple(bits))


def _mask(src: _Source, value: Any, path: Path, known: Mapping[str, int], what: str) -> tuple[int, tuple[str, ...]]:
    mask = 0
    names = src.strings(value, path)
    for n, name in enumerate(names):
        if name not in known:
            raise src.error(path, element=n, message=f'unknown {what} "{name}" (known: {_known(known)})')
        mask |= 1 << known[name]
    return mask, tuple(names)


def _rule(
    src: _Source,
    entry: Any,
    i: int,
    *,
    windows: Mapping[str, int],
    services: Mapping[str, Service],
    categories: Mapping[str, Category],
    lists: Mapping[str, DomainList],
) -> Rule:
    path: Path = ("rules", i)
    item = src.table(entry, path, _RULE, "a rule")
    rule_id = src.string(
        src.required(item, path, "id", 'a short unique name, e.g. id = "pupils-social-media"'), (*path, "id")
    )
    clause = src.string(
        src.required(item, path, "clause", 'the written policy clause, e.g. clause = "Social Media Policy §9"'),
        (*path, "clause"),
    )
    reason = src.string(
        src.required(item, path, "reason", 'plain words, e.g. reason = "pupils may not use social media"'),
        (*path, "reason"),
    )
    action_name = src.string(src.required(item, path, "action", "allow, block or safe_search"), (*path, "action"))
    if action_name not in _ACTIONS:
        raise src.error((*path, "action"), f'unknown action "{action_name}" (known: {", ".join(_ACTIONS)})')
    action = _ACTIONS[action_name]
    roles = frozenset(Role)
    if "roles" in item:
        names = src.strings(item["roles"], (*path, "roles"))
        if not names:
            raise src.error((*path, "roles"), "an empty list matches nobody; leave the field out to match every role")
        roles = frozenset(_role(src, name, (*path, "roles"), element=n) for n, name in enumerate(names))
    service_ids: set[int] = set()
    for n, name in enumerate(src.strings(item.get("services", []), (*path, "services"))):
        if name not in services:
            raise src.error(
                (*path, "services"), element=n, message=f'unknown service "{name}" (known: {_known(services)})'
            )
        service_ids.add(services[name].index)
    category_mask, category_names = _mask(
        src, item.get("categories", []), (*path, "categories"), {k: c.bit for k, c in categories.items()}, "category"
    )
    list_mask, list_names = _mask(
        src, item.get("lists", []), (*path, "lists"), {k: d.bit for k, d in lists.items()}, "list"
    )
    _check_precedence(
        src, path, action,
        categories=categories,
        category_names=category_names,
        services=[services[name] for name in src.strings(item.get("services", []), (*path, "services"))],
        lists=[lists[name] for name in list_names],
    )
    when, when_names = _mask(src, item.get("when", []), (*path, "when"), windows, "window")
    unless, unless_names = _mask(src, item.get("unless", []), (*path, "unless"), windows, "window")
    year_groups: frozenset[int] | None = None
    if "year_groups" in item:
        value = item["year_groups"]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 13 for v in value)
        ):
            raise src.error((*path, "year_groups"), "must be a list of year numbers 0-13 (Reception = 0), e.g. [5, 6]")
        year_groups = frozenset(value)
    devices: frozenset[str] | None = None
    if "devices" in item:
        names = src.strings(item["devices"], (*path, "devices"))
        if not names:
            raise src.error(
                (*path, "devices"), "an empty list matches no device; leave the field out to match every device"
            )
        for n, name in enumerate(names):
            if name not in DEVICE_CONDITIONS:
                raise src.error(
                    (*path, "devices"),
                    element=n,
                    message=f'unknown device condition "{name}" (known: {", ".join(DEVICE_CONDITIONS)}; '
                    "the device register records whether a device is school-owned or personal)",
                )
        devices = frozenset(names)
    locked = src.boolean(item.get("locked", False), (*path, "locked"))
    if locked and action is not Verdict.BLOCK:
        raise src.error((*path, "locked"), "only a block can be locked (a lock stops exceptions overriding it)")
    level = "strict"
    if "safe_search" in item:
        if action is not Verdict.SAFE_SEARCH:
            raise src.error((*path, "safe_search"), 'only for action = "safe_search"')
        level = src.string(item["safe_search"], (*path, "safe_search"))
        if level not in ("strict", "moderate"):
            raise src.error((*path, "safe_search"), f'unknown level "{level}" (known: strict, moderate)')
    if action is Verdict.SAFE_SEARCH:
        if list_mask or not (service_ids or category_mask):
            raise src.error(
                (*path, "action"), "safe_search needs services or categories whose services have a safe_search host"
            )
        targeted = [s for s in services.values() if s.index in service_ids]
        targeted += [s for s in services.values() if s.category in category_names and s not in targeted]
        lacking = [s.id for s in targeted if s.safe_search is None]
        if lacking:
            raise src.error(
                (*path, "action"),
                f'safe_search: service "{lacking[0]}" has no safe_search host in its [services] entry',
            )
    return Rule(
        id=rule_id,
        position=i + 1,
        clause=clause,
        reason=reason,
        action=action,
        roles=roles,
        services=frozenset(service_ids),
        categories=category_mask,
        lists=list_mask,
        when=when,
        unless=unless,
        year_groups=year_groups,
        devices=devices,
        locked=locked,
        safe_search_level=level,
        line=locate(src.text, path),
        when_names=when_names,
        unless_names=unless_names,
    )


def _check_precedence(
    src: _Source,
    path: Path,
    action: Verdict,
    *,
    categories: Mapping[str, Category],
    category_names: Iterable[str],
    services: Iterable[Service],
    lists: Iterable[DomainList],
) -> None:
    """Refuse rules that could never take effect: blocking a category that is always open
    (`support`) or allowing one that is always blocked (`illegal`)."""
    named = [(("categories",), categories[name]) for name in category_names]
    named += [(("services",), categories[s.category]) for s in services if s.category]
    named += [(("lists",), categories[d.category]) for d in lists if d.category]
    for field, category in named:
        if action is Verdict.BLOCK and category.always_allowed:
            raise src.error(
                (*path, *field),
                f'"{category.id}" sites are never blocked (a child looking for help must always reach it); '
                "remove it from this rule",
            )
        if action is not Verdict.BLOCK and category.id == ILLEGAL:
            raise src.error(
                (*path, *field), f'"{category.id}" content is always blocked; no rule can {action.value} it'
            )


def list_sources(path: str, text: str, data: Mapping[str, Any]) -> tuple[ListSource, ...]:
    """Only the [lists] of a policy file, checked (with [categories], which they name): what
    `schoolgate lists update` needs to know without compiling the rest."""
    src = _Source(path, text)
    categories = {c.id: c for c in _categories(src, data.get("categories", {}))}
    raw = data.get("lists", {})
    if not isinstance(raw, dict):
        raise src.error(("lists",), "must be a set of named lists, e.g. [lists.malware]")
    return tuple(
        _list_source(src, lid, src.table(entry, ("lists", lid), _LIST, f"list {lid}"), categories)
        for lid, entry in raw.items()
    )


def compile_policy(
    path: str,
    text: str,
    data: Mapping[str, Any],
    read_list: ListReader | None = None,
    *,
    installed: Installed | None = None,
    seed: int | None = None,
) -> CompiledPolicy:
    """Check and compile a parsed policy file. `path` is only used in error messages."""
    src = _Source(path, text)
    for key in data:
        if key not in _TOP:
            raise src.error((key,), f'unknown section "{key}" (known: {", ".join(_TOP)})')
    school = _school(
        src, src.required(data, (), "school", "add a [school] section with id, name, timezone, block_ipv4")
    )
    document = _document(src, data["document"]) if "document" in data else None
    calendar = _calendar(src, src.required(data, (), "calendar", "add a [calendar] section with the term dates"))
    windows = _windows(src, data.get("windows", {}))
    networks = _networks(src, data.get("networks", []))
    categories = _categories(src, data.get("categories", {}))
    category_by_id = {c.id: c for c in categories}
    services = _services(src, data.get("services", {}), category_by_id)
    warnings: list[str] = []
    if seed is None:
        # Deterministic for tests; the loader passes a random seed (a seed known outside the
        # appliance would let someone choose a name that collides with a listed one).
        seed = int.from_bytes(hashlib.sha256(b"schoolgate-lists" + text.encode("utf-8")).digest()[:8], "little")
    lists, list_indexes = _lists(
        src, data.get("lists", {}), category_by_id, read_list, installed=installed, seed=seed, warnings=warnings
    )
    rules_raw = src.required(data, (), "rules", "add [[rules]] blocks; the first rule that matches decides")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise src.error(("rules",), "must be one or more [[rules]] blocks")
    window_bits = {w.name: bit for bit, w in enumerate(windows)}
    service_by_id = {s.id: s for s in services}
    list_by_id = {d.id: d for d in lists}
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(rules_raw):
        rule = _rule(
            src, entry, i, windows=window_bits, services=service_by_id, categories=category_by_id, lists=list_by_id
        )
        if rule.id in seen:
            raise src.error((*("rules", i), "id"), f'duplicate rule id "{rule.id}" (also rules[{seen[rule.id]}])')
        seen[rule.id] = i + 1
        rules.append(rule)
    default = _default(src, data.get("default", {}), len(rules))
    dynamic = _dynamic(src, data.get("dynamic", {}))
    bans = _bans(src, data.get("bans", {}))
    if document is None:
        warnings.append(
            "no [document] section: say which written policy this file encodes and when it is due for review "
            "(title, review_by), so the appliance can warn when the review is due"
        )
    fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    return CompiledPolicy(
        source=path,
        school=school,
        calendar=calendar,
        windows=windows,
        networks=networks,
        categories=categories,
        services=services,
        lists=lists,
        rules=tuple(rules),
        default_rule=default,
        list_indexes=list_indexes,
        dynamic=dynamic,
        document=document,
        fingerprint=fingerprint,
        warnings=tuple(warnings),
        bans=bans,
    )


def _default(src: _Source, raw: Any, count: int) -> Rule:
    item = src.table(raw, ("default",), _DEFAULT, "[default]")
    action_name = src.string(item.get("action", "allow"), ("default", "action"))
    if action_name not in ("allow", "block"):
        raise src.error(("default", "action"), f'unknown action "{action_name}" (known: allow, block)')
    return Rule(
        id="default",
        position=count + 1,
        clause=src.string(item.get("clause", "Online Safety Policy (filtering)"), ("default", "clause")),
        reason=src.string(
            item.get("reason", "no rule limits this site" if action_name == "allow" else "not on the allowed list"),
            ("default", "reason"),
        ),
        action=_ACTIONS[action_name],
        roles=frozenset(Role),
        services=frozenset(),
        categories=0,
        lists=0,
        when=0,
        unless=0,
        line=locate(src.text, ("default",)),
    )


def _dynamic(src: _Source, raw: Any) -> DynamicClauses:
    item = src.table(raw, ("dynamic",), _DYNAMIC, "[dynamic]")
    base = DynamicClauses()
    return DynamicClauses(
        exception=src.string(item.get("exception_clause", base.exception), ("dynamic", "exception_clause")),
        site_block=src.string(item.get("site_block_clause", base.site_block), ("dynamic", "site_block_clause")),
        ban=src.string(item.get("ban_clause", base.ban), ("dynamic", "ban_clause")),
        circumvention=src.string(
            item.get("circumvention_clause", base.circumvention), ("dynamic", "circumvention_clause")
        ),
    )


def _bans(src: _Source, raw: Any) -> BanPolicy:
    item = src.table(raw, ("bans",), _BANS, "[bans]")
    base = BanPolicy()
    mode = src.string(item.get("on_circumvention", base.on_circumvention), ("bans", "on_circumvention"))
    if mode not in CIRCUMVENTION_BAN_MODES:
        raise src.error(
            ("bans", "on_circumvention"), f'unknown choice "{mode}" (known: {", ".join(CIRCUMVENTION_BAN_MODES)})'
        )
    roles = base.automatic_roles
    if "automatic_roles" in item:
        raw_roles = item["automatic_roles"]
        if not isinstance(raw_roles, list):
            raise src.error(("bans", "automatic_roles"), 'must be a list of roles, e.g. ["pupil"]')
        roles = frozenset(
            _role(src, value, ("bans", "automatic_roles"), element=n) for n, value in enumerate(raw_roles)
        )
    supervisor = src.string(item.get("supervisor", base.supervisor), ("bans", "supervisor"))
    return BanPolicy(
        on_circumvention=mode,
        automatic_roles=roles,
        days=_whole(src, item, ("bans", "days"), default=base.days, low=0, high=366),
        supervisor=supervisor,
    )
