"""Domain matching: a host matches a listed domain if it is that domain or a subdomain of it.

Big block lists (a million names) are held as 64-bit hashes in one open-addressing table made
of two flat arrays, not as a set of strings: a Python `str` costs ~60 bytes plus the set's
slot, a hash costs 8 bytes plus a 4-byte mask of the lists that hold it. Python's `hash()` of a
`str` is a keyed 64-bit SipHash; the key differs per process, which is fine because a table is
built and used inside one process and never stored. Two different names sharing a 64-bit hash
is so unlikely (about 1 in 10^7 for a million names looked up a million times) that the table
does not keep the names themselves.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

_MAX_LOAD = 0.55
# A value word holds a bit per list for "domain and its subdomains" in the low half and a bit
# per list for "this exact host only" (adblock `|host^`) in the high half.
MAX_LISTS = 16
EXACT_SHIFT = 16
_SUFFIX_BITS = (1 << EXACT_SHIFT) - 1


def normalise_host(host: str) -> str:
    """Lower-case, without the trailing dot of a fully qualified name."""
    host = host.strip().lower()
    if host.endswith("."):
        host = host[:-1]
    return host


def suffixes(host: str) -> list[str]:
    """`a.b.example.org` -> [`a.b.example.org`, `b.example.org`, `example.org`, `org`].

    Walking label boundaries (never plain string endings) is what keeps `notfacebook.com`
    from matching `facebook.com`.
    """
    out = [host]
    start = host.find(".")
    while start != -1:
        start += 1
        out.append(host[start:])
        start = host.find(".", start)
    return out


class DomainTable:
    """Many domain lists in one table: for each name, which lists hold it, and how.

    Keys are the names' signed 64-bit hashes (0 marks an empty slot; a name hashing to 0 is
    stored as 1). Built once per policy version; a lookup allocates nothing but the hash.
    """

    __slots__ = ("_keys", "_mask", "_values", "count")

    def __init__(self, capacity_hint: int = 0) -> None:
        self._mask = self._size_for(capacity_hint) - 1
        self._keys = array("q", bytes(8 * (self._mask + 1)))
        self._values = array("I", bytes(4 * (self._mask + 1)))
        self.count = 0

    @staticmethod
    def _size_for(entries: int) -> int:
        size = 8
        while size * _MAX_LOAD < max(entries, 1):
            size *= 2
        return size

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def nbytes(self) -> int:
        return self._keys.itemsize * len(self._keys) + self._values.itemsize * len(self._values)

    def _reserve(self, entries: int) -> None:
        """Make room for `entries` names in total, rehashing once if needed."""
        size = self._size_for(entries)
        if size <= self._mask + 1:
            return
        old_keys, old_values = self._keys, self._values
        self._keys = array("q", bytes(8 * size))
        self._values = array("I", bytes(4 * size))
        self._mask = size - 1
        self.count = 0
        for key, value in zip(old_keys, old_values, strict=True):
            if key:
                self._insert_keys((key,), value)

    def _insert_keys(self, keys: Iterable[int], bits: int) -> int:
        table, values, mask = self._keys, self._values, self._mask
        added = 0
        for key in keys:
            if not key:
                key = 1  # noqa: PLW2901  (0 marks an empty slot)
            i = key & mask
            k = table[i]
            while k:
                if k == key:
                    values[i] |= bits
                    break
                i = (i + 1) & mask
                k = table[i]
            else:
                table[i] = key
                values[i] = bits
                added += 1
        self.count += added
        return added

    def add(self, name: str, list_index: int, *, exact: bool = False) -> bool:
        """Record `name` in list `list_index`; return True if the name was new to the table."""
        return self.add_many((name,), list_index, exact=exact) == 1

    def add_many(self, names: Iterable[str], list_index: int, *, exact: bool = False) -> int:
        """Bulk insert; returns how many names were new to the table.

        The hashes are computed in one pass in C (`map(hash, ...)`) into a compact array, the
        table is sized once for all of them, and only the probing loop runs in Python.
        """
        if not 0 <= list_index < MAX_LISTS:
            raise ValueError(f"list index {list_index} out of range (at most {MAX_LISTS} lists)")
        keys = array("q", map(hash, names))
        self._reserve(self.count + len(keys))
        return self._insert_keys(keys, 1 << (list_index + (EXACT_SHIFT if exact else 0)))

    def get(self, name: str) -> int:
        """The value bits recorded for exactly this name (0 if none)."""
        key = hash(name) or 1
        keys, mask = self._keys, self._mask
        i = key & mask
        while True:
            k = keys[i]
            if k == key:
                return int(self._values[i])
            if k == 0:
                return 0
            i = (i + 1) & mask

    def lookup(self, names: Sequence[str]) -> tuple[int, str | None]:
        """For a host's suffixes (longest first): the lists that cover it, and the first hit.

        A suffix entry covers the host and all its subdomains; an exact entry covers only the
        host itself (the first element of `names`).
        """
        if not self.count:
            return 0, None
        keys, values, mask = self._keys, self._values, self._mask
        found = 0
        first: str | None = None
        exact_allowed = True  # only the host itself may match an exact entry
        for name in names:
            key = hash(name) or 1
            i = key & mask
            k = keys[i]
            while k:
                if k == key:
                    bits = values[i]
                    hit = bits & _SUFFIX_BITS
                    if exact_allowed:
                        hit |= bits >> EXACT_SHIFT
                    if hit:
                        found |= hit
                        if first is None:
                            first = name
                    break
                i = (i + 1) & mask
                k = keys[i]
            exact_allowed = False
        return found, first
