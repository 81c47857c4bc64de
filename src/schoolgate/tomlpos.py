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
            # inline table on one line: key = { a = 1, b = 2 }
            if length == len(full) and len(path) > len(full) and isinstance(path[len(full)], str):
                inner = str(path[len(full)])
                if re.search(r"[{,]\s*" + re.escape(inner) + r"\s*=", line):
                    best, best_len = number, length + 1
    return best


def _prefix_len(candidate: tuple[str | int, ...], wanted: tuple[str | int, ...]) -> int:
    n = 0
    for a, b in zip(candidate, wanted, strict=False):
        if a != b:
            break
        n += 1
    return n
