"""Domain matching: a host matches a listed domain if it is that domain or a subdomain of it.

The policy's lists are compiled into list stores (schoolgate.policy.liststore): the local list
files into one built when the policy is compiled, each subscription into the version file the
daemons map. `ListSet` asks them all about a host's label suffixes and turns what they hold
(source categories) into the policy's list and category bits; the catalogue's services stay
small dictionaries in the engine.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from xxhash import xxh3_64_intdigest

from schoolgate.policy.liststore import ListStore

MAX_LISTS = 32  # lists in one policy (one bit each in a decision's match)


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


@dataclass(frozen=True, slots=True)
class ListIndex:
    """A list store as the policy sees it: for each of the store's source categories, the
    policy's (category bits, list bits) it stands for; (0, 0) for a source not used."""

    store: ListStore
    source_bits: tuple[tuple[int, int], ...]


def _bits_of(mask: int, source_bits: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """A mask over a store's sources -> the policy's (category bits, list bits)."""
    categories = lists = 0
    while mask:
        low = mask & -mask
        category_bits, list_bits = source_bits[low.bit_length() - 1]
        categories |= category_bits
        lists |= list_bits
        mask ^= low
    return categories, lists


def _class_bits(index: ListIndex) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """Per class of the store, the policy's (category bits, list bits) it stands for: as a
    parent domain of the host asked for (entries with subdomains), and as the host itself
    (exact entries too)."""
    as_parent = []
    as_host = []
    for suffix, exact in index.store.classes:
        categories, lists = _bits_of(suffix, index.source_bits)
        exact_categories, exact_lists = _bits_of(exact, index.source_bits)
        as_parent.append((categories, lists))
        as_host.append((categories | exact_categories, lists | exact_lists))
    return tuple(as_parent), tuple(as_host)


_ClassBits = tuple[tuple[int, int], ...]
# A mapped version, bisected in place: (bucket index, keys, classes, shift, bits as a parent
# domain, bits as the host, and if it holds URL entries: the store and its URL-host filter).
_Urls = tuple[ListStore, tuple[int, bytes]] | None
_Bisected = tuple[memoryview, memoryview, memoryview, int, _ClassBits, _ClassBits, _Urls]
# A small store (a policy's own lists) held as a dict: (key -> class, bits as a parent, bits as
# the host, and the store with its URL-host filter if it holds URL entries).
_Small = tuple[dict[int, int], _ClassBits, _ClassBits, _Urls]


def _has_url_host(keys: Sequence[int], store: ListStore, url_filter: tuple[int, bytes]) -> bool:
    """Whether the store holds `host/path` entries for one of these keys: the filter rules out
    nearly every host without a bisect of the URL keys."""
    url_shift, bitmap = url_filter
    for key in keys:
        top = key >> url_shift
        if bitmap[top >> 3] >> (top & 7) & 1 and store.has_url_host(key):
            return True
    return False


class ListSet:
    """Every list store of a policy, asked together. Stores that share a seed share the keys
    of a host's suffixes, so each suffix is hashed once per seed, not once per store."""

    __slots__ = ("_groups", "_indexes", "address_count", "count", "url_count")

    def __init__(self, indexes: Sequence[ListIndex] = ()) -> None:
        by_seed: dict[int, tuple[list[_Bisected], list[_Small]]] = {}
        for index in indexes:
            if len(index.store.sources) != len(index.source_bits):
                raise ValueError("a list index must say what each of its store's sources stands for")
            store = index.store
            as_parent, as_host = _class_bits(index)
            urls = (store, store.url_host_filter()) if store.url_count else None
            bisected, small = by_seed.setdefault(store.seed, ([], []))
            table = store.small_table()
            if table is None:
                index_table, keys, classes, shift = store.arrays()
                bisected.append((index_table, keys, classes, shift, as_parent, as_host, urls))
            else:
                small.append((table, as_parent, as_host, urls))
        self._groups = tuple((seed, tuple(bisected), tuple(small)) for seed, (bisected, small) in by_seed.items())
        self._indexes = tuple(indexes)
        self.count = sum(i.store.key_count for i in indexes)
        self.url_count = sum(i.store.url_count for i in indexes)
        self.address_count = sum(i.store.address_count for i in indexes)

    def lookup(self, names: Sequence[str]) -> tuple[int, int, str | None]:
        """For a host's suffixes (longest first): (list bits, category bits, first match)."""
        found_lists, found_categories, first, _ = self.probe(names)
        return found_lists, found_categories, first

    def has_urls(self, names: Sequence[str]) -> bool:
        """Whether any list holds `host/path` entries for one of these names (a host's
        suffixes, longest first; a top-level domain alone is never such a host)."""
        return self.probe(names)[3]

    def probe(self, names: Sequence[str]) -> tuple[int, int, str | None, bool]:
        """For a host's suffixes (longest first): (list bits, category bits, first match,
        whether a list holds `host/path` entries under one of them).

        A suffix entry covers the host and all its subdomains; an exact entry only the host
        itself (the first element of `names`). This is the hot path of a decision for a name
        the engine has not seen, so each store's probe is written out here: a dict probe for
        the small local store, a bisect within one bucket for a mapped version; the keys
        hashed for it answer the URL question too.
        """
        found_lists = found_categories = 0
        url_entries = False
        count = first = len(names)
        if count > 1:
            # A top-level domain alone ("com", "uk") is never a list entry: an entry that would
            # block a whole TLD is a broken or hostile list, and skipping it saves a probe.
            names = names[:-1]
        for seed, bisected, small in self._groups:
            keys = [xxh3_64_intdigest(name.encode("utf-8", "replace"), seed) for name in names]
            for table, sorted_keys, key_classes, shift, as_parent, as_host, urls in bisected:
                if urls is not None and not url_entries:
                    url_entries = _has_url_host(keys, *urls)
                position = -1
                for key in keys:
                    position += 1
                    bucket = key >> shift
                    hi = table[bucket + 1]
                    i = bisect_left(sorted_keys, key, table[bucket], hi)
                    if i != hi and sorted_keys[i] == key:
                        categories, lists = (as_parent if position else as_host)[key_classes[i]]
                        if lists:
                            found_lists |= lists
                            found_categories |= categories
                            first = position if position < first else first  # not min(): a call per hit
            for held, as_parent, as_host, urls in small:
                if urls is not None and not url_entries:
                    url_entries = _has_url_host(keys, *urls)
                if held.keys().isdisjoint(keys):
                    continue  # the usual answer of a policy's own small lists, in one call
                position = -1
                for key in keys:
                    position += 1
                    klass = held.get(key, -1)
                    if klass >= 0:
                        categories, lists = (as_parent if position else as_host)[klass]
                        if lists:
                            found_lists |= lists
                            found_categories |= categories
                            first = position if position < first else first  # not min(): a call per hit
        return found_lists, found_categories, names[first] if first < count else None, url_entries

    def lookup_url(self, names: Sequence[str], path: str) -> tuple[int, int]:
        """(list bits, category bits) of `host/path` entries covering the host and path."""
        found_lists = found_categories = 0
        for index in self._indexes:
            store = index.store
            if not store.url_count:
                continue
            for name in names:
                mask = store.find_url(xxh3_64_intdigest(name.encode("utf-8", "replace"), store.seed), path)
                categories, lists = _bits_of(mask, index.source_bits)
                found_categories |= categories
                found_lists |= lists
        return found_lists, found_categories

    def lookup_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
        """(list bits, category bits) of the listed networks holding `address`."""
        found_lists = found_categories = 0
        for index in self._indexes:
            if not index.store.address_count:
                continue
            klass = index.store.find_address(address)
            if klass < 0:
                continue
            categories, lists = _bits_of(index.store.classes[klass][0], index.source_bits)
            found_categories |= categories
            found_lists |= lists
        return found_lists, found_categories

    def networks(self) -> Iterator[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]]:
        """Every listed network that a list in use holds, with its category bits."""
        for index in self._indexes:
            for network, klass in index.store.addresses():
                categories, lists = _bits_of(index.store.classes[klass][0], index.source_bits)
                if lists:
                    yield network, categories
