"""The compiled hash and probe (policy/_listprobe.c) against recorded keys and a reference walk.

The keys are recorded from the reference xxh3_64 (xxHash 0.8): a list version compiled before
the probe was compiled, or on another machine, must still be read. The probe is compared with
the walk it replaced, written out here in Python (label suffixes, the top-level domain alone
skipped, a bisect within the key's bucket), on a table of odd hosts and on generated ones.
"""

from __future__ import annotations

import gc
from array import array
from bisect import bisect_left
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schoolgate.policy._listprobe import Prober, find, key
from schoolgate.policy.domains import ListIndex, ListSet, _class_bits, suffixes
from schoolgate.policy.liststore import ListStore, StoreBuilder, key_of

if TYPE_CHECKING:
    from schoolgate.policy._listprobe import StoreArrays

# (name, seed, xxh3_64) recorded from the reference implementation
RECORDED_KEYS = [
    (b"", 0, 0x2D06800538D394C2),
    (b"example.com", 0, 0x8B66107E8045BB73),
    (b"example.com", 1, 0x5C96E50D919B5DD2),
    (b"www.bbc.co.uk", 0x9E3779B97F4A7C15, 0xB7B9B51C5FA69BB6),
    (b"a" * 255, 2**64 - 1, 0xD879BD4165142B62),
    ("bücher.example".encode(), 42, 0x44240F1B47FE48C5),
    (bytes(range(256)), 7, 0xBDC8572069C5DA9D),
]


@pytest.mark.parametrize(("name", "seed", "expected"), RECORDED_KEYS)
def test_keys_are_the_reference_xxh3(name: bytes, seed: int, expected: int) -> None:
    assert key(name, seed) == expected
    assert key(bytearray(name), seed) == expected
    assert key(memoryview(name), seed) == expected


@pytest.mark.parametrize(("name", "seed", "error"), [
    ("a.example", 1, TypeError),  # a str: the caller says how it is encoded
    (b"a.example", -1, OverflowError),
    (b"a.example", 2**64, OverflowError),
    (b"a.example", "1", TypeError),
])
def test_bad_key_arguments_are_refused(name: object, seed: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        key(name, seed)  # type: ignore[arg-type]


LISTED = [
    "example.com", "ads.example.net", "a..b", ".lead.example", "trail.example.", "bücher.example",
    "?.odd.example", "x" * 63 + ".long.example", "com", "uk", "co.uk", "single",
]
EXACT = ["only.exact.example", "sub.only.exact.example"]


def store(seed: int) -> ListStore:
    builder = StoreBuilder(seed, ["listed", "exact"])
    builder.add_names(LISTED, 0)
    builder.add_names(EXACT, 1, exact=True)
    builder.add_url("forum.example", "/casino/", 0)
    return ListStore(builder.build())


# per store: (categories, lists) per source, as a policy's ListIndex says
SOURCE_BITS = [((0b1, 0b1), (0b10, 0b10)), ((0b100, 0b100), (0b1000, 0)), ((0b10000, 0b10000), (0, 0b100000))]
CATALOGUE = frozenset({"tiktok.com", "uk", "co.uk", "b.a..b", "bücher.example"})


def reference(host: str, stores: list[ListStore], catalogue: frozenset[str] = frozenset()
              ) -> tuple[int, int, str | None, bool, tuple[str, ...]]:
    """The walk the compiled probe replaced, in Python: the suffixes, each store's bucket
    bisected, a hit's class turned into the policy's bits."""
    names = suffixes(host)
    catalogued = tuple(name for name in names if name in catalogue)
    if len(names) > 1:
        names = names[:-1]
    found_lists = found_categories = 0
    first: str | None = None
    url = False
    for one, source_bits in zip(stores, SOURCE_BITS, strict=False):
        as_parent, as_host = _class_bits(ListIndex(one, source_bits))
        index, keys, classes, shift = one.arrays()
        url_keys = one.url_keys()
        for position, name in enumerate(names):
            k = key_of(name, one.seed)
            bucket = k >> shift if shift < 64 else 0
            hi = index[bucket + 1]
            i = bisect_left(keys, k, index[bucket], hi)
            if i < hi and keys[i] == k:
                categories, lists = (as_parent if position else as_host)[classes[i]]
                if lists:
                    found_lists |= lists
                    found_categories |= categories
                    if first is None or len(name) > len(first):
                        first = name
            j = bisect_left(url_keys, k)
            url = url or (j < len(url_keys) and url_keys[j] == k)
    return found_lists, found_categories, first, url, catalogued


def arrays_of(stores: list[ListStore]) -> list[StoreArrays]:
    arrays: list[StoreArrays] = []
    for one, source_bits in zip(stores, SOURCE_BITS, strict=False):
        index, keys, classes, shift = one.arrays()
        url_shift, bitmap = one.url_host_filter()
        as_parent, as_host = _class_bits(ListIndex(one, source_bits))
        arrays.append((one.seed, index, keys, classes, shift, one.url_keys(), url_shift, bitmap, as_parent, as_host))
    return arrays


def prober(stores: list[ListStore], catalogue: frozenset[str] = frozenset()) -> Prober:
    names = None
    if catalogue:
        builder = StoreBuilder(stores[0].seed, ["catalogue"])
        builder.add_names(catalogue, 0)
        names = ListStore(builder.build()).arrays_with_seed()
    return Prober(arrays_of(stores), names)


STORES = [store(5), store(9), store(5)]
PROBER = prober(STORES, CATALOGUE)

ODD_HOSTS = [
    "example.com", "www.example.com", "notexample.com", "ads.example.net", "x.ads.example.net",
    "", ".", "..", "a..b", "x.a..b", "b.a..b", ".lead.example", "trail.example.", "a.trail.example.",
    "bücher.example", "www.bücher.example", "\udcff.odd.example", "?.odd.example", "\x00.example",
    "x" * 63 + ".long.example", "y." + "x" * 63 + ".long.example", "com", "uk", "co.uk", "bbc.co.uk", "single",
    "only.exact.example", "www.only.exact.example", "sub.only.exact.example", "EXAMPLE.COM",
    "forum.example", "www.forum.example", "example", "tiktok.com", "www.tiktok.com", "tiktok.com.evil.example",
    ".".join(["a"] * 127) + ".example.com",  # a 255-byte name
    ".".join(["b"] * 400) + ".example.com",  # more labels than DNS allows (a proxy's host may)
    ".".join(["x.tiktok.com.b.a..b"] * 100) + ".bücher.example.uk",  # ... with catalogue names among them
    "a" * 100_000 + ".example.com",
]


@pytest.mark.parametrize("host", ODD_HOSTS, ids=lambda h: repr(h[:40]))
def test_the_probe_finds_what_the_reference_walk_finds(host: str) -> None:
    assert PROBER.probe(host) == reference(host, STORES, CATALOGUE)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*LISTED, *EXACT, *CATALOGUE, "a", "www", "", "ü", "\udc80", "forum.example", "0"]),
                min_size=1, max_size=6))
def test_generated_hosts_agree_with_the_reference(parts: list[str]) -> None:
    host = ".".join(parts)
    assert PROBER.probe(host) == reference(host, STORES, CATALOGUE)


@pytest.mark.parametrize(("host", "catalogued"), [
    ("tiktok.com", ("tiktok.com",)),
    ("www.tiktok.com", ("tiktok.com",)),
    ("nottiktok.com", ()),  # a label boundary, not a string ending
    ("tiktok.com.uk", ("uk",)),
    ("x.b.a..b", ("b.a..b",)),
    ("www.bücher.example", ("bücher.example",)),  # cut at characters, not bytes
    ("tiktok.com.bücher.example.uk", ("uk",)),
    ("b.a..b.uk", ("uk",)),
    ("uk", ("uk",)),
    ("bbc.co.uk", ("co.uk", "uk")),  # longest first, as the suffixes walk
    ("example.com", ()),
])
def test_the_probe_names_the_suffixes_that_may_be_catalogue_names(host: str, catalogued: tuple[str, ...]) -> None:
    assert PROBER.probe(host)[4] == catalogued


def test_without_a_catalogue_nothing_is_catalogued() -> None:
    bare = prober(STORES)
    for host in ODD_HOSTS:
        assert bare.probe(host) == (*reference(host, STORES)[:4], ())


@pytest.mark.parametrize(("host", "expected"), [
    ("www.example.com", (1, 1, "example.com")),
    ("sub.only.exact.example", (2, 2, "sub.only.exact.example")),  # exact: the host itself
    ("www.only.exact.example", (0, 0, None)),  # not the exact host, and not a suffix entry
    ("\udcff.odd.example", (1, 1, "\udcff.odd.example")),  # a lone surrogate hashes as "?", as before
    ("x.a..b", (1, 1, "a..b")),
    ("co.uk", (1, 1, "co.uk")),
    ("bbc.co.uk", (1, 1, "co.uk")),
    ("uk", (1, 1, "uk")),  # the name asked for itself, though a top-level domain
    ("www.uk", (0, 0, None)),  # a top-level domain is never an entry covering its subdomains
])
def test_list_set_answers(host: str, expected: tuple[int, int, str | None]) -> None:
    lists = ListSet([ListIndex(store(3), ((1, 1), (2, 2)))])
    assert lists.lookup(host) == expected


def test_find_and_the_store_agree() -> None:
    one = STORES[0]
    index, keys, classes, shift = one.arrays()
    for name in [*LISTED, *EXACT, "not.listed.example"]:
        k = key_of(name, one.seed)
        assert one.find(k) == find(index, keys, classes, shift, k)
    assert one.find(key_of("example.com", one.seed)) >= 0
    assert one.find(key_of("not.listed.example", one.seed)) == -1


PARENT = ((1, 1), (2, 2))


@pytest.mark.parametrize(("change", "error"), [
    (lambda a: (*a, None, 0, None, PARENT, PARENT), None),
    (lambda a: (a[0], a[2], a[2], a[3], a[4], None, 0, None, PARENT, PARENT), ValueError),  # keys for the index
    (lambda a: (a[0], a[1], a[1], a[3], a[4], None, 0, None, PARENT, PARENT), ValueError),  # index for the keys
    (lambda a: (a[0], a[1], a[2], a[2], a[4], None, 0, None, PARENT, PARENT), ValueError),  # classes of 8 bytes
    (lambda a: (a[0], a[1], a[2], a[3], a[4] - 1, None, 0, None, PARENT, PARENT), ValueError),  # index length
    (lambda a: (a[0], a[1], a[2], a[3], 70, None, 0, None, PARENT, PARENT), ValueError),  # shift out of range
    (lambda a: (a[0], a[1][:-1], a[2], a[3], a[4], None, 0, None, PARENT, PARENT), ValueError),  # short index
    (lambda a: (a[0], a[1], a[2][:-1], a[3], a[4], None, 0, None, PARENT, PARENT), ValueError),  # keys != classes
    (lambda a: (*a, a[2], 52, b"\0", PARENT, PARENT), ValueError),  # a bitmap too short
    (lambda a: (*a, a[2], 1, b"\0", PARENT, PARENT), ValueError),  # a URL shift out of range
    (lambda a: (-1, *a[1:], None, 0, None, PARENT, PARENT), OverflowError),
    (lambda a: (a[0], "index", *a[2:], None, 0, None, PARENT, PARENT), TypeError),
    (lambda a: (*a, None, 0, None, PARENT, PARENT[:1]), ValueError),  # the two class tables differ
    (lambda a: (*a, None, 0, None, PARENT, ((1, "2"),)), TypeError),
    (lambda a: (*a, None, 0, None, PARENT, [(1, 1)]), TypeError),
    (lambda a: a, TypeError),
])
def test_bad_store_arrays_are_refused(change: object, error: type[Exception] | None) -> None:
    one = STORES[0]
    index, keys, classes, shift = one.arrays()
    arrays = change((one.seed, index, keys, classes, shift))  # type: ignore[operator]
    if error is None:
        assert Prober([arrays]).probe("www.example.com")[0]
        return
    with pytest.raises(error):
        Prober([arrays])


@pytest.mark.parametrize("catalogue", [(1, 2), (1, b"", b"", b"", 64, 0), "names"])
def test_a_bad_catalogue_is_refused(catalogue: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        Prober([], catalogue)  # type: ignore[arg-type]


def test_a_class_beyond_the_class_table_is_an_error_not_a_read() -> None:
    one = STORES[0]
    index, keys, classes, shift = one.arrays()
    with pytest.raises(ValueError, match="class"):
        Prober([(one.seed, index, keys, classes, shift, None, 0, None, (), ())]).probe("www.example.com")


def test_a_damaged_bucket_index_reads_nothing_outside_the_keys() -> None:
    one = STORES[0]
    index, keys, classes, shift = one.arrays()
    damaged = array("I", [0] * len(index))
    damaged[-1] = 0xFFFFFFFF  # every key's bucket runs far past the end of the keys
    for b in range(1, len(damaged) - 1):
        damaged[b] = 0xFFFFFFF0
    probe = Prober([(one.seed, damaged, keys, classes, shift, None, 0, None, PARENT, PARENT)])
    for host in ODD_HOSTS:
        probe.probe(host)  # answers (listed or not) and never reads past the arrays
    assert find(damaged, keys, classes, shift, key_of("example.com", one.seed)) in (-1, *range(len(one.classes)))


def test_the_probe_takes_only_a_str() -> None:
    with pytest.raises(TypeError):
        PROBER.probe(b"example.com")  # type: ignore[arg-type]
    assert Prober([]).probe("example.com") == (0, 0, None, False, ())


def test_a_prober_keeps_its_stores_alive() -> None:
    probe = prober([store(21)], CATALOGUE)  # nothing else holds the stores or their buffers
    gc.collect()
    assert probe.probe("www.tiktok.com") == (0, 0, None, False, ("tiktok.com",))
    assert probe.probe("www.example.com") == (0b1, 0b1, "example.com", False, ())
    del probe
    gc.collect()  # the buffers are released with the prober (a leak or a double release would show here)
