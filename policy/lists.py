"""Parsers for domain lists: hosts files, one-domain-per-line, adblock-style DNS rules, and
AdGuard's "blocked services" JSON.

Parsers work on lines of text handed to them (the loader opens the files), yield the names
they accept one by one (so a million-line list never exists as a million strings at once),
and count what they skip and why: a technician can see that 12 wildcard rules were left out
instead of wondering why a site is not blocked.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

FORMATS = ("plain", "hosts", "adblock", "adguard-services", "squidguard")

_SINK_ADDRESSES = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "0:0:0:0:0:0:0:0", "255.255.255.255"})
_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)
# Modifiers that do not narrow who a rule applies to; anything else (e.g. $client=, $denyallow=)
# would change the meaning, so such rules are skipped and counted rather than half-honoured.
_HARMLESS_MODIFIERS = ("important", "dnsrewrite=nxdomain", "dnsrewrite=refused", "dnsrewrite=0.0.0.0", "all")
_MAX_EXAMPLES = 5


@dataclass
class ListStats:
    """What a parser did with a list: accepted names, and skipped lines counted by reason."""

    accepted: int = 0
    exact: int = 0
    addresses: int = 0  # of the accepted: IP addresses and networks (blocked by address)
    urls: int = 0  # of the accepted: host/path prefixes (enforced where the proxy sees the path)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[int, str, str]] = field(default_factory=list)  # (line, text, reason)

    def skip(self, line_number: int, text: str, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append((line_number, text[:120], reason))

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.accepted} names"
        kinds = [
            f"{count} {what}"
            for count, what in ((self.exact, "exact hosts"), (self.addresses, "addresses"),
                                (self.urls, "URL prefixes, enforced only where the proxy sees the path"))
            if count
        ]
        if kinds:
            text += f" ({'; '.join(kinds)})"
        if self.skipped:
            reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            text += f"; skipped {reasons}"
        return text


# Lower-case letters, digits, '-' and '_' in non-empty dot-separated labels. One regex in C is
# the cheapest check per line; a million-line list passes through here.
_NAME = re.compile(r"[a-z0-9_][a-z0-9_-]*(?:\.[a-z0-9_-]+)*").fullmatch


def valid_name(name: str) -> bool:
    """A DNS name we can match (at most 253 characters, labels of at most 63)."""
    if len(name) > 253 or _NAME(name) is None:
        return False
    return len(name) <= 63 or all(len(label) <= 63 for label in name.split("."))


def _clean(line: str) -> str:
    cut = line.find("#")
    if cut != -1:
        line = line[:cut]
    return line.strip().lower()


_PLAIN_CHUNK = 8192  # lines checked together on the fast path (a small chunk: less transient memory)
# Every character a clean chunk of names may hold; anything else sends the chunk down the
# line-by-line path, which says exactly what is wrong with which line.
_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_.\n"
_NOT_NAME_SHAPE = (b"..", b"\n.", b".\n", b"\n-")  # empty labels, leading dot or hyphen, trailing dot


def parse_plain(lines: Iterable[str], stats: ListStats) -> Iterator[str]:
    """One domain per line; `#` and `!` start comments; `*.example.org` means example.org.

    A million-line list is the common case, so lines are taken in chunks and a chunk of clean
    names (the usual content of a published list) is checked and split with a few whole-chunk
    string operations in C, and its names are handed on without a Python step per name. A
    chunk with anything unusual in it (a wildcard, an inline comment, a stray word) goes
    through the line-by-line parser, which accepts, cleans or skips and counts each line; the
    two paths accept exactly the same names.
    """
    return chain.from_iterable(_plain_chunks(lines, stats))


def _plain_chunks(lines: Iterable[str], stats: ListStats) -> Iterator[list[str]]:
    source = iter(lines)
    first_line = 1
    while chunk := list(islice(source, _PLAIN_CHUNK)):
        names = _clean_chunk(chunk)
        if names is None:
            names = list(_parse_plain_lines(chunk, stats, first_line))
        else:
            stats.accepted += len(names)
        yield names
        first_line += len(chunk)


def _clean_chunk(chunk: list[str]) -> list[str] | None:
    """The chunk's names if every line is a plain valid name, a blank or a whole-line comment;
    None if any line needs the careful parser."""
    block = "\n".join(chunk)  # lines may or may not end in a newline: blank lines are harmless
    block = block.lower()
    if "#" in block or "!" in block:
        kept = [line for line in block.splitlines() if not line.lstrip().startswith(("#", "!"))]
        block = "\n".join(kept)
        if "#" in block or "!" in block:
            return None  # an inline comment or a "!" inside a line
    if "\r" in block:
        block = block.replace("\r\n", "\n")
        if "\r" in block:
            return None
    if (" " in block or "\t" in block) and any(len(line.split()) > 1 for line in block.splitlines()):
        return None  # two words on one line: not a name
    names = block.split()
    if not names:
        return names
    try:
        joined = "\n".join(names).encode("ascii")
    except UnicodeEncodeError:
        return None
    if joined.translate(None, _NAME_BYTES):
        return None
    if joined[:1] in (b".", b"-") or joined.endswith(b".") or any(shape in joined for shape in _NOT_NAME_SHAPE):
        return None
    if max(map(len, names)) > 63 and not all(valid_name(name) for name in names if len(name) > 63):
        return None
    return names


def _parse_plain_lines(lines: Iterable[str], stats: ListStats, first_line: int = 1) -> Iterator[str]:
    accepted = 0
    for number, raw in enumerate(lines, start=first_line):
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        if "#" in line:
            line = line[: line.find("#")].strip()
        line = line.lower()
        if line.startswith("*."):
            line = line[2:]  # our entries always cover subdomains; the apex comes along
        if line.endswith("."):
            line = line[:-1]
        if (len(line) > 63 or _NAME(line) is None) and not valid_name(line) and not _network_shape(line):
            stats.skip(number, raw.strip(), "not a domain name")
            continue
        accepted += 1
        if accepted == 4096:  # update the shared counter in batches: this loop is hot
            stats.accepted += accepted
            accepted = 0
        yield line
    stats.accepted += accepted


def _network_shape(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# The widest network a list may block by address: a list that names 10.0.0.0/8, or the whole
# internet, is a mistake (or an attack) that would shut the school network, not a listing.
_WIDEST = {4: 16, 6: 32}


def listed_network(text: str) -> Network | str | None:
    """`text` as a network a list may block, the reason it may not, or None (not an address)."""
    if not (text[-1:].isdigit() or ":" in text or "/" in text):
        return None  # a name: no top-level domain is all digits
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if network.prefixlen < _WIDEST[network.version]:
        return f"network wider than /{_WIDEST[network.version]}"
    if not network.network_address.is_global or not network.broadcast_address.is_global:
        return "private, local or reserved address"
    return network


TOP_LEVEL_ALONE = "top-level domains alone (never matched)"


def split_addresses(names: Iterable[str], networks: list[Network], stats: ListStats) -> Iterator[str]:
    """Pass names on; move IP addresses and networks into `networks` (blocked by address,
    not looked up as names). A private or over-wide network is skipped and counted."""
    for name in names:
        if name[-1:].isdigit() or ":" in name or "/" in name:
            found = listed_network(name)
            if isinstance(found, str):
                stats.accepted -= 1
                stats.skip(0, name, found)
                continue
            if found is not None:
                stats.addresses += 1
                networks.append(found)
                continue
        if "." not in name:
            # "com" or "xxx" alone: lookups never ask for a top-level domain (an entry that
            # blocked every name under it would be a broken or hostile list), so say so here.
            stats.accepted -= 1
            stats.skip(0, name, TOP_LEVEL_ALONE)
            continue
        yield name


def parse_urls(lines: Iterable[str], stats: ListStats) -> Iterator[tuple[str, str]]:
    """squidGuard `urls`: `host/path` prefixes -> (host, "/path"). The host covers its
    subdomains, as in squidGuard (which strips www. and the like before matching)."""
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        text = line.lower()
        if "://" in text:
            text = text.split("://", 1)[1]
        host, slash, path = text.partition("/")
        host = host.rsplit("@", 1)[-1].split(":", 1)[0].rstrip(".")
        if not slash or not path:
            stats.skip(number, line, "URL without a path (a whole site belongs in domains)")
            continue
        if not valid_name(host) and listed_network(host) is None:
            stats.skip(number, line, "not a host/path URL")
            continue
        stats.accepted += 1
        stats.urls += 1
        yield host, "/" + path


def parse_hosts(lines: Iterable[str], stats: ListStats) -> Iterator[str]:
    """`0.0.0.0 ads.example.org other.example.org  # comment`; loopback names are ignored."""
    for number, raw in enumerate(lines, start=1):
        line = _clean(raw)
        if not line:
            continue
        parts = line.split()
        address = parts[0]
        if address not in _SINK_ADDRESSES:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                stats.skip(number, raw.strip(), "line does not start with an IP address")
                continue
        if len(parts) == 1:
            stats.skip(number, raw.strip(), "address without a name")
            continue
        for listed in parts[1:]:
            name = listed[:-1] if listed.endswith(".") else listed
            if name in _LOCAL_NAMES:
                continue
            if not valid_name(name):
                stats.skip(number, raw.strip(), "not a domain name")
                continue
            stats.accepted += 1
            yield name


def parse_adblock_rule(rule: str) -> tuple[str, bool] | str:
    """One adblock-style DNS rule -> (name, exact) or the reason it is skipped.

    `||example.org^` is the domain and its subdomains, `|host.example.org^` the exact host.
    """
    rule = rule.strip()
    if rule.startswith("@@"):
        return "allow rules (@@) ignored"
    if rule.startswith("/") and rule.endswith("/"):
        return "regular expressions not supported"
    if "##" in rule or "#@#" in rule or "#$#" in rule:
        return "cosmetic rules ignored"
    body, _, modifiers = rule.partition("$")
    if modifiers:
        for modifier in modifiers.lower().split(","):
            if not modifier.startswith(_HARMLESS_MODIFIERS):
                return "rules with restricting modifiers ($client, $denyallow, ...) skipped"
    body = body.lower()
    exact = False
    if body.startswith("||"):
        body = body[2:]
    elif body.startswith("|"):
        body = body[1:]
        exact = True
    if body.endswith("^|"):
        body = body[:-2]
    elif body.endswith("^"):
        body = body[:-1]
    if body.startswith("*."):
        body = body[2:]
    if "*" in body:
        return "wildcard rules skipped"
    if "/" in body or ":" in body:
        return "URL or port rules not supported"
    if body.endswith("."):
        body = body[:-1]
    if not valid_name(body):
        return "not a domain name"
    return body, exact


def parse_adblock(lines: Iterable[str], stats: ListStats, exact_out: list[str]) -> Iterator[str]:
    """Adblock / AdGuard DNS syntax. Exact-host rules go to `exact_out`; others are yielded."""
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line[0] in "!#[":
            continue
        # hosts-style lines are common in adblock lists too
        parts = line.split()
        if len(parts) >= 2 and (parts[0] in _SINK_ADDRESSES):
            for listed in parts[1:]:
                name = listed.lower().rstrip(".")
                if name.startswith("#"):
                    break
                if name in _LOCAL_NAMES:
                    continue
                if valid_name(name):
                    stats.accepted += 1
                    yield name
                else:
                    stats.skip(number, line, "not a domain name")
            continue
        parsed = parse_adblock_rule(line)
        if isinstance(parsed, str):
            stats.skip(number, line, parsed)
            continue
        name, exact = parsed
        stats.accepted += 1
        if exact:
            stats.exact += 1
            exact_out.append(name)
        else:
            yield name


@dataclass(frozen=True)
class AdguardService:
    id: str
    name: str
    rules: tuple[str, ...]


def parse_adguard_services(text: str) -> dict[str, AdguardService]:
    """AdGuard "blocked services": the published `services.json` (`blocked_services`: a list of
    {id, name, rules}) or a `{"rules_by_service": {id: [rules]}}` digest of it.

    Raises ValueError with a plain message if the text is neither.
    """
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON (line {err.lineno}: {err.msg})") from err
    services: dict[str, AdguardService] = {}
    if isinstance(data, dict) and isinstance(data.get("blocked_services"), list):
        for entry in data["blocked_services"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise ValueError("each entry of blocked_services needs an id")
            rules = entry.get("rules", [])
            if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
                raise ValueError(f"service {entry['id']!r}: rules must be a list of strings")
            services[entry["id"]] = AdguardService(entry["id"], str(entry.get("name", entry["id"])), tuple(rules))
        return services
    if isinstance(data, dict) and isinstance(data.get("rules_by_service"), dict):
        names: dict[str, Any] = data.get("provenance", {}) if isinstance(data.get("provenance"), dict) else {}
        for service_id, rules in data["rules_by_service"].items():
            if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
                raise ValueError(f"service {service_id!r}: rules must be a list of strings")
            info = names.get(service_id, {})
            name = info.get("name", service_id) if isinstance(info, dict) else service_id
            services[service_id] = AdguardService(service_id, str(name), tuple(rules))
        return services
    raise ValueError('expected AdGuard blocked services JSON: "blocked_services" or "rules_by_service"')


def adguard_names(
    services: dict[str, AdguardService], chosen: Iterable[str], stats: ListStats, exact_out: list[str]
) -> Iterator[str]:
    """The names of the chosen AdGuard services' rules; exact hosts go to `exact_out`."""
    for sid in chosen:
        for number, rule in enumerate(services[sid].rules, start=1):
            parsed = parse_adblock_rule(rule)
            if isinstance(parsed, str):
                stats.skip(number, rule, parsed)
                continue
            stats.accepted += 1
            if parsed[1]:
                stats.exact += 1
                exact_out.append(parsed[0])
            else:
                yield parsed[0]


def parse_list(fmt: str, lines: Iterable[str], stats: ListStats, exact_out: list[str]) -> Iterator[str]:
    """Dispatch on format name (one of FORMATS except adguard-services, which is JSON)."""
    if fmt == "plain":
        return parse_plain(lines, stats)
    if fmt == "hosts":
        return parse_hosts(lines, stats)
    if fmt == "adblock":
        return parse_adblock(lines, stats, exact_out)
    raise ValueError(f"unknown list format {fmt!r}")
