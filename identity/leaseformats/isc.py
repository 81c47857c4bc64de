"""ISC dhcpd's `dhcpd.leases`: a journal of lease statements, the newest last.

    lease 10.41.20.11 {
      starts 1 2026/11/23 08:00:00;     # weekday, date, time: UTC
      ends 1 2026/11/23 20:00:00;       # or `ends never;`, or `ends epoch 1795435200; # ...`
      binding state active;
      hardware ethernet 02:41:00:00:20:11;
      client-hostname "ipad-11";
    }

dhcpd appends a statement each time a lease changes and rewrites the whole file now and
then, so one address appears many times; every statement is a fact about its own time and
the lease store merges them. `lease6`, `host`, `failover`, `server-duid` and other statements
are skipped. Quoted strings may hold `;`, `{` or escapes; comments run from `#` to the end of
the line. Only whole statements are read: the part of a file dhcpd is still writing is left
for the next read (`consumed`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from schoolgate.identity.leaseformats import (
    DhcpLease,
    LeaseFile,
    LeaseProblem,
    hostname_or_note,
    utc_from_timestamp,
)
from schoolgate.identity.macs import normalise_mac

# Whitespace is not matched, so finditer skips it; a lone quote is an unterminated string.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|"|[{};]|#[^\n]*|[^\s{};"#]+', re.S)
_DATE = re.compile(r"(\d{4})/(\d{1,2})/(\d{1,2})")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})")
INACTIVE_STATES = {"free", "released", "expired", "abandoned", "reset", "backup"}
_ESCAPE = re.compile(r"\\([0-7]{1,3}|.)", re.S)


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    start: int  # offset of the token in the text
    end: int  # offset just after it


def _tokens(text: str) -> Iterator[_Token]:
    for match in _TOKEN.finditer(text):
        value = match.group(0)
        if value.startswith("#"):
            continue
        if value == '"':  # an unterminated quoted string: the rest is not a whole statement yet
            return
        yield _Token(value, match.start(), match.end())


def _unquote(text: str) -> str:
    if not (len(text) >= 2 and text[0] == text[-1] == '"'):
        return text

    def replace(match: re.Match[str]) -> str:
        value = match.group(1)
        return chr(int(value, 8)) if value[0] in "01234567" else value

    return _ESCAPE.sub(replace, text[1:-1])


def _time(words: list[str]) -> datetime | None:
    """`1 2026/11/23 08:00:00`, `epoch 1795435200`, or `never` (None)."""
    if words == ["never"]:
        return None
    if len(words) == 2 and words[0] == "epoch" and words[1].isdigit():
        return utc_from_timestamp(int(words[1]))
    if len(words) == 3 and words[0].isdigit():
        date, clock = _DATE.fullmatch(words[1]), _CLOCK.fullmatch(words[2])
        if date and clock:
            try:  # strptime would do, at ten times the cost: a big file has two times per lease
                year, month, day = (int(v) for v in date.groups())
                hour, minute, second = (int(v) for v in clock.groups())
                return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
            except ValueError:
                pass
    raise ValueError(f"{' '.join(words)!r} is not a dhcpd time")


def _statements(tokens: list[_Token]) -> Iterator[list[_Token]]:
    """The statements inside one block (each ends at `;`; nested blocks are passed whole)."""
    current: list[_Token] = []
    depth = 0
    for token in tokens:
        current.append(token)
        if token.text == "{":
            depth += 1
        elif token.text == "}":
            depth -= 1
            if depth == 0:
                yield current
                current = []
        elif token.text == ";" and depth == 0:
            yield current[:-1]
            current = []


class _Lines:
    """Line numbers of offsets, counted forwards only (statements come in order)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.offset = 0
        self.line = 1

    def at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.offset, offset)
        self.offset = offset
        return self.line


def parse_isc(text: str) -> LeaseFile:
    result = LeaseFile("isc")
    lines = _Lines(text)
    block: list[_Token] = []
    depth = 0
    for token in _tokens(text):
        block.append(token)
        if token.text == "{":
            depth += 1
        elif token.text == "}":
            depth -= 1
            if depth < 0:
                where = lines.at(token.start)
                result.problems.append(LeaseProblem(where, "}", "a closing brace without an opening one"))
                block, depth = [], 0
                result.consumed = token.end
                continue
        if depth == 0 and token.text in ("}", ";"):
            _top_level(block, result, lines.at(block[0].start))
            result.consumed = token.end
            block = []
    return result


def _top_level(block: list[_Token], result: LeaseFile, line: int) -> None:
    head = block[0].text
    if head == "lease" and len(block) >= 3 and block[2].text == "{":
        _lease(block, result, line)
    elif head == "lease6":
        result.skipped += 1
    # host, failover, server-duid, authoring-byte-order, class, subclass...: not leases


def _lease(block: list[_Token], result: LeaseFile, line: int) -> None:
    shown = " ".join(t.text for t in block[:3])
    try:
        address = ipaddress.IPv4Address(block[1].text)
    except ValueError:
        result.problems.append(LeaseProblem(line, shown, f"{block[1].text!r} is not an IPv4 address"))
        return
    values: dict[str, list[str]] = {}
    for statement in _statements(block[3:-1]):
        words = [_unquote(t.text) for t in statement if t.text not in ("{", "}")]
        if not words:
            continue
        if words[:2] == ["binding", "state"]:
            values["binding"] = words[2:]
        elif words[:2] == ["hardware", "ethernet"]:
            values["mac"] = words[2:]
        elif words[0] in ("starts", "ends", "cltt", "client-hostname"):
            values[words[0]] = words[1:]
    try:
        mac_words = values.get("mac")
        if not mac_words:
            result.skipped += 1  # a lease dhcpd keeps without a client (free, never used)
            return
        mac = normalise_mac(mac_words[0])
        if mac is None:
            raise ValueError(f"{mac_words[0]!r} is not an Ethernet MAC address")
        starts = _time(values["starts"]) if "starts" in values else None
        ends = _time(values["ends"]) if "ends" in values else None
    except ValueError as err:
        result.problems.append(LeaseProblem(line, shown, str(err)))
        return
    name = values.get("client-hostname")
    hostname = hostname_or_note(name[0], line, shown, result) if name else None
    state = (values.get("binding") or ["active"])[0]
    result.leases.append(DhcpLease(line, str(address), mac, hostname, starts, ends, state not in INACTIVE_STATES))
