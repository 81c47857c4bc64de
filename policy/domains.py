"""Domain matching: a host matches a listed domain if it is that domain or a subdomain of it.

The policy's lists are compiled into list stores (schoolgate.policy.liststore): the local list
files into one built when the policy is compiled, each subscription into the version file the
daemons map. `ListSet` asks them all about a host's label suffixes and turns what they hold
(source categories) into the policy's list and category bits; the catalogue's services stay
small dictionaries in the engine.
"""

from __future__ import annotations

import ipaddress
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schoolgate.policy._listprobe import Prober
from schoolgate.policy.liststore import ListStore, StoreBuilder, key_of

if TYPE_CHECKING:
    from schoolgate.policy._listprobe import StoreArrays

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


# (list bits, category bits, the listed domain that matched, whether a list holds `host/path`
# entries for the host or a domain above it, the suffixes that may be names the catalogue knows,
# longest first: none for most names)
Classified = tuple[int, int, str | None, bool, tuple[str, ...]]


class ListSet:
    """Every list store of a policy, asked together about a host in one compiled call
    (schoolgate.policy._listprobe): the host's label suffixes are hashed once per seed, each
    store's bucket is bisected in place in its mapping, and what a hit's class stands for (the
    policy's list and category bits) is added up there too."""

    __slots__ = ("_arrays", "_indexes", "address_count", "classify", "count", "url_count")

    classify: Callable[[str], Classified]

    def __init__(self, indexes: Sequence[ListIndex] = (), catalogue: Iterable[str] = ()) -> None:
        # Stores that share a seed are asked one after another, so the prober hashes each
        # suffix once per seed, not once per store.
        ordered = sorted(indexes, key=lambda index: index.store.seed)
        arrays: list[StoreArrays] = []
        for index in ordered:
            store = index.store
            if len(store.sources) != len(index.source_bits):
                raise ValueError("a list index must say what each of its store's sources stands for")
            as_parent, as_host = _class_bits(index)
            table, keys, classes, shift = store.arrays()
            if store.url_count:
                url_shift, bitmap = store.url_host_filter()
                arrays.append((store.seed, table, keys, classes, shift, store.url_keys(), url_shift, bitmap,
                               as_parent, as_host))
            else:
                arrays.append((store.seed, table, keys, classes, shift, None, 0, None, as_parent, as_host))
        self._arrays = tuple(arrays)
        self._indexes = tuple(indexes)
        catalogue = frozenset(catalogue)
        # The catalogue's names keyed with the first store's seed share the suffixes' keys.
        seed = arrays[0][0] if arrays else 0
        names = ListStore(_catalogue_store(seed, catalogue)) if catalogue else None
        prober = Prober(arrays, names.arrays_with_seed() if names is not None else None)
        self.classify = prober.probe
        self.count = sum(i.store.key_count for i in indexes)
        self.url_count = sum(i.store.url_count for i in indexes)
        self.address_count = sum(i.store.address_count for i in indexes)

    def lookup(self, host: str) -> tuple[int, int, str | None]:
        """For a host (normalised): (list bits, category bits, the listed domain that matched)."""
        found_lists, found_categories, first, _, _ = self.classify(host)
        return found_lists, found_categories, first

    def has_urls(self, host: str) -> bool:
        """Whether any list holds `host/path` entries for the host or a domain above it (a
        top-level domain alone is never such a host)."""
        return self.classify(host)[3]

    def probe(self, host: str) -> tuple[int, int, str | None, bool]:
        """For a host (normalised): (list bits, category bits, the longest listed domain that
        matched, whether a list holds `host/path` entries for it or a domain above it).

        A suffix entry covers the host and all its subdomains; an exact entry only the host
        itself. The host's label suffixes are walked as `suffixes` walks them, and a top-level
        domain alone ("com", "uk") is never a list entry (one that would block a whole TLD is a
        broken or hostile list), unless it is the whole host asked about. `classify` answers
        the same and, last, the suffixes that may be catalogue names (a 64-bit key's word: a
        caller checks each exactly): the engine's hot path for a name it has not seen.
        """
        found_lists, found_categories, first, url_entries, _ = self.classify(host)
        return found_lists, found_categories, first, url_entries

    def lookup_url(self, names: Sequence[str], path: str) -> tuple[int, int]:
        """(list bits, category bits) of `host/path` entries covering the host and path."""
        found_lists = found_categories = 0
        for index in self._indexes:
            store = index.store
            if not store.url_count:
                continue
            for name in names:
                mask = store.find_url(key_of(name, store.seed), path)
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


def _catalogue_store(seed: int, names: Iterable[str]) -> bytes:
    """The catalogue's names as a store of one source (only whether a key is there is read)."""
    builder = StoreBuilder(seed, ["catalogue"])
    builder.add_keys(array("Q", (key_of(name, seed) for name in names)), 0)
    return builder.build()
