"""Find where a value sits in a TOML file, so errors can say "policy.toml:42".

tomllib gives values without positions. Rather than carry a second parser, this walks the
source text: table headers (`[a.b]`, `[[a]]`, counting array-of-tables entries) and `key =`
lines, plus dotted keys and inline tables on one line. It answers the best line it can find
and never fails: a position is a courtesy on top of a message that already names the field.
"""

from __future__ import annotations

import re
from pathlib import Path

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*("[^"]*"|'[^']*'|[A-Za-z0-9_.\-"' ]+?)\s*=""")


class ConfigError(Exception):
    """A mistake in a configuration or policy file, in words a technician understands."""

    def __init__(self, path: str | Path, line: int | None, field: str, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.field = field
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.path.name}:{self.line}" if self.line else f"{self.path.name}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def _unquote(part: str) -> str:
    part = part.strip()
    if len(part) >= 2 and part[0] == part[-1] and part[0] in "\"'":
        return part[1:-1]
    return part


def _split_dotted(key: str) -> list[str]:
    return [_unquote(p) for p in re.findall(r"""("[^"]*"|'[^']*'|[^.]+)""", key)]


def locate(text: str, path: tuple[str | int, ...]) -> int | None:
    """Return the 1-based line of `path` (e.g. ("rules", 3, "when")) in TOML `text`, if found."""
    lines = text.splitlines()
    # Track the table each line belongs to, with array-of-tables indices.
    counters: dict[tuple[str, ...], int] = {}
    current: tuple[str | int, ...] = ()
    best: int | None = None
    best_len = -1
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _HEADER.match(line)
        if header and not _KEY.match(line):
            names = _split_dotted(header.group(2))
            if header.group(1) == "[[":
                key = tuple(names)
                counters[key] = counters.get(key, -1) + 1
                current = (*names, counters[key])
            else:
                current = tuple(names)
                # nested headers inside the latest array-of-tables entry, e.g. [rules.when]
                for arr, index in counters.items():
                    if tuple(names[: len(arr)]) == arr:
                        current = (*arr, index, *names[len(arr):])
            length = _prefix_len(current, path)
            if length == len(current) and length > best_len:
                best, best_len = number, length
            continue
        key_match = _KEY.match(line)
        if key_match:
            full = (*current, *_split_dotted(key_match.group(1)))
            length = _prefix_len(full, path)
            if length == len(full) and length > best_len:
                best, best_len = number, length
                # key = [ ... ] over several lines: find the element (and its inline key)
                if len(path) > length and isinstance(path[length], int):
                    found = _in_array(lines, number - 1, key_match.end(), path[length:])
                    if found is not None:
                        best, best_len = found[0], length + found[1]
                        continue
            # inline table on one line: key = { a = 1, b = 2 }
            if length == len(full) and len(path) > len(full) and isinstance(path[len(full)], str):
                inner = str(path[len(full)])
                if re.search(r"[{,]\s*" + re.escape(inner) + r"\s*=", line):
                    best, best_len = number, length + 1
    return best


def _scan(lines: list[str], row: int, col: int) -> list[tuple[int, int, str]]:
    """Characters of a TOML value from (row, col) with strings and comments blanked out, as
    (row, col, char) triples, stopping where the value ends (depth back to zero)."""
    out: list[tuple[int, int, str]] = []
    depth = 0
    quote = ""
    started = False
    for r in range(row, len(lines)):
        text = lines[r]
        c = col if r == row else 0
        while c < len(text):
            ch = text[c]
            if quote:
                if text.startswith(quote, c):
                    c += len(quote)
                    quote = ""
                    continue
                if ch == "\\" and quote in ('"', '"""'):
                    c += 2
                    continue
                c += 1
                continue
            if ch == "#":
                break
            for opener in ('"""', "'''", '"', "'"):
                if text.startswith(opener, c):
                    quote = opener
                    out.append((r, c, "s"))  # a string value starts here
                    c += len(opener)
                    break
            else:
                if ch in "[{":
                    depth += 1
                    started = True
                elif ch in "]}":
                    depth -= 1
                out.append((r, c, ch))
                c += 1
                if started and depth == 0:
                    return out
                continue
        if not started and r > row:
            return out
    return out


def _in_array(lines: list[str], row: int, col: int, rest: tuple[str | int, ...]) -> tuple[int, int] | None:
    """Line (1-based) of element rest[0] of the array starting after (row, col), and how many
    parts of `rest` were matched (1, or 2 if rest[1] is a key found in an inline table)."""
    chars = _scan(lines, row, col)
    depth = 0
    index = -1
    expect = False
    element_start: int | None = None
    want = rest[0]
    for position, (_r, _c, ch) in enumerate(chars):
        if depth == 1 and expect and ch not in " \t,]":
            index += 1
            expect = False
            if index == want:
                element_start = position
                break
        if ch in "[{":
            depth += 1
            if depth == 1:
                expect = True
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 1:
            expect = True
    if element_start is None:
        return None
    row_found = chars[element_start][0]
    if len(rest) > 1 and isinstance(rest[1], str) and chars[element_start][2] == "{":
        key = rest[1]
        depth = 0
        for r, c, ch in chars[element_start:]:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            elif depth == 1 and ch not in " \t,=" and re.match(
                r"(\"?)" + re.escape(key) + r"\1\s*=", lines[r][c:]
            ):
                return r + 1, 2
    return row_found + 1, 1


def _prefix_len(candidate: tuple[str | int, ...], wanted: tuple[str | int, ...]) -> int:
    n = 0
    for a, b in zip(candidate, wanted, strict=False):
        if a != b:
            break
        n += 1
    return n
