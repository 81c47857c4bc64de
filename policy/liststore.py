"""The compiled list store: one list version in one flat, read-only buffer.

A list version (a UT1 download of millions of names, or the policy's local list files) is
compiled once into this layout and written to a file that every daemon maps read-only: the
kernel's page cache holds it once however many processes use it, and opening it is a map and a
header check, not a parse. This module is pure: it builds the bytes and reads them through a
`memoryview` of whatever buffer it is given (an `mmap` at the edge, `bytes` in tests).

Layout (little-endian, every section 8-byte aligned):

    header      magic, format version, byte-order check, seed, counts, section offsets
    index       u32[2**bits + 1]: where the keys of each bucket (the top `bits` of a key) start
    keys        u64[n]: the names' keys, sorted, unique
    classes     u8 or u16[n]: per key, an index into the class table
    url keys    u64[u]: the hosts' keys of `host/path` entries, sorted (repeats allowed)
    url refs    u32[u]: per url key, where its entry starts in the url blob
    url blob    per entry: u16 class, u16 length, the path prefix (ASCII, lower case)
    IPv4        u32 starts[a], u32 ends[a], u16 classes[a]: disjoint address ranges, sorted
    IPv6        16-byte starts[b], 16-byte ends[b], u16 classes[b]
    meta        JSON: the source categories, the class table, and facts about the version

A key is `xxh3_64(name, seed)` with a random 64-bit seed kept in the header: Python's own
`hash()` differs per process so it could not be stored, and a seed unknown outside the
appliance keeps anyone from choosing a name whose key collides with a listed one. A class is a
pair of bit masks over the version's source categories: those that list the name with its
subdomains, and those that list only the exact host. Names are not stored: two names sharing a
64-bit key is about a one-in-10^7 event for five million names looked up a million times a day.

Why a whole 8-byte key and not a 4-byte fingerprint beside the bucket (which would save 4
bytes a name, 20 MB at five million): the bucket's 20 bits and a 32-bit fingerprint leave 52
bits, so an unlisted name would match about 4,000 times as often (about 1 in 9 * 10^8 probes
instead of 1 in 4 * 10^12), and no hit could be confirmed without the full key or the name,
which would give the saving back. A false match blocks a name no list holds, for the life of
the version; the bisect costs the same either way.

A lookup hashes each label suffix of the host (as `schoolgate.policy.domains` walks them),
reads the bucket's bounds from the index and bisects the few keys in it: about four keys per
bucket, so a suffix costs a hash and two or three comparisons. The hash and the lookup are
compiled (`schoolgate.policy._listprobe`, from policy/_listprobe.c): the one implementation of
both, used by the builders here and by every reader, so what is filed and what is asked for
cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any, Literal

from schoolgate.policy._listprobe import find as _find
from schoolgate.policy._listprobe import key as _key

Buffer = bytes | bytearray | memoryview  # what a layout piece may be (written as it is)

MAGIC = b"SGLISTS\x00"
FORMAT_VERSION = 1
_ORDER_CHECK = 0x0102030405060708  # read back natively: a file from a machine of the other byte order fails
MAX_SOURCES = 64  # source categories per version: a class mask is one 64-bit word
MAX_CLASSES = 65535
_KEYS_PER_BUCKET = 4  # the index's target; it costs 4 bytes per bucket, under one byte per name

# magic, version, header size, order check, seed, bucket bits, class width, then u64 counts and
# offsets (see _FIELDS).
_FIELDS = (
    "key_count", "url_count", "v4_count", "v6_count", "index_off", "keys_off", "classes_off", "url_keys_off",
    "url_refs_off", "url_blob_off", "url_blob_len", "v4_off", "v6_off", "meta_off", "meta_len", "file_size",
)
_HEADER = struct.Struct("<8sIIQQII" + "Q" * len(_FIELDS))
_URL_ENTRY = struct.Struct("<HH")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class StoreError(ValueError):
    """The buffer is not a list store this code can read (or it is damaged)."""


def key_of(name: str, seed: int) -> int:
    """A name's key: xxh3_64 of its UTF-8 bytes with the store's seed."""
    return _key(name.encode("utf-8", "replace"), seed)


def bucket_bits_for(count: int) -> int:
    bits = 0
    while (count >> bits) > _KEYS_PER_BUCKET:
        bits += 1
    return bits


def _align(size: int) -> int:
    return (size + 7) & ~7


# -- reading --------------------------------------------------------------------------------


class ListStore:
    """One list version over a read-only buffer. Lookups allocate only the keys' ints."""

    __slots__ = (
        "_buffer",
        "_classes",
        "_index",
        "_keys",
        "_shift",
        "_url_blob",
        "_url_filter",
        "_url_keys",
        "_url_refs",
        "_v4_classes",
        "_v4_ends",
        "_v4_starts",
        "_v6",
        "address_count",
        "classes",
        "info",
        "key_count",
        "seed",
        "size",
        "sources",
        "url_count",
    )

    def __init__(self, buffer: Any) -> None:
        view = memoryview(buffer)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        self._buffer = view
        self.size = len(view)
        if self.size < _HEADER.size:
            raise StoreError(f"{self.size} bytes is too short for a list store")
        magic, version, header_size, order, seed, bits, width, *values = _HEADER.unpack_from(view, 0)
        if magic != MAGIC:
            raise StoreError("not a schoolgate list store (bad magic)")
        if version != FORMAT_VERSION:
            raise StoreError(f"list store format {version}; this schoolgate reads format {FORMAT_VERSION}")
        if view[16:24].cast("Q")[0] != _ORDER_CHECK or order != _ORDER_CHECK:
            raise StoreError("the list store was written on a machine of the other byte order")
        head = dict(zip(_FIELDS, values, strict=True))
        if head["file_size"] != self.size or header_size != _HEADER.size:
            raise StoreError(f"the list store is {self.size} bytes but says {head['file_size']} (truncated?)")
        if width not in (1, 2) or bits > 40:
            raise StoreError("damaged list store header")
        n, u, a, b = (int(head[f]) for f in ("key_count", "url_count", "v4_count", "v6_count"))
        self._url_filter: tuple[int, bytes] | None = None
        self.seed: int = int(seed)
        self.key_count: int = n
        self.url_count: int = u
        self.address_count: int = a + b
        self._shift = 64 - bits
        self._index = self._array(head["index_off"], (1 << bits) + 1, "I")
        self._keys = self._array(head["keys_off"], n, "Q")
        self._classes = self._array(head["classes_off"], n, "B" if width == 1 else "H")
        self._url_keys = self._array(head["url_keys_off"], u, "Q")
        self._url_refs = self._array(head["url_refs_off"], u, "I")
        self._url_blob = self._slice(head["url_blob_off"], head["url_blob_len"])
        self._v4_starts = self._array(head["v4_off"], a, "I")
        self._v4_ends = self._array(head["v4_off"] + 4 * a, a, "I")
        self._v4_classes = self._array(head["v4_off"] + 8 * a, a, "H")
        self._v6 = (self._slice(head["v6_off"], 16 * b), self._slice(head["v6_off"] + 16 * b, 16 * b),
                    self._array(head["v6_off"] + 32 * b, b, "H"))
        try:
            meta = json.loads(bytes(self._slice(head["meta_off"], head["meta_len"])))
            self.sources: tuple[str, ...] = tuple(str(s) for s in meta["sources"])
            self.classes: tuple[tuple[int, int], ...] = tuple((int(s), int(e)) for s, e in meta["classes"])
            self.info: dict[str, Any] = dict(meta.get("info", {}))
        except (ValueError, KeyError, TypeError) as err:
            raise StoreError(f"damaged list store metadata: {err}") from None

    def _slice(self, offset: int, length: int) -> memoryview:
        if offset < _HEADER.size or offset + length > self.size:
            raise StoreError("damaged list store: a section lies outside the file")
        return self._buffer[offset : offset + length]

    def _array(self, offset: int, count: int, code: Literal["B", "H", "I", "Q"]) -> memoryview[int]:
        size = struct.calcsize(code)
        if count == 0:
            return memoryview(array(code))
        if offset % size:
            raise StoreError("damaged list store: a section is misaligned")
        return self._slice(offset, count * size).cast(code)

    def release(self) -> None:
        """Let go of the buffer now (an mmap cannot close while views of it exist)."""
        for name in ("_index", "_keys", "_classes", "_url_keys", "_url_refs", "_url_blob", "_v4_starts", "_v4_ends",
                     "_v4_classes"):
            getattr(self, name).release()
        for part in self._v6:
            part.release()
        self._buffer.release()

    # -- lookups ------------------------------------------------------------------------------
    def arrays(self) -> tuple[memoryview[int], memoryview[int], memoryview[int], int]:
        """(bucket index, keys, classes, shift) for a caller that inlines `find` in a hot loop."""
        return self._index, self._keys, self._classes, self._shift

    def arrays_with_seed(self) -> tuple[int, memoryview[int], memoryview[int], memoryview[int], int]:
        """(seed, bucket index, keys, classes, shift): the store as the prober takes it."""
        return self.seed, self._index, self._keys, self._classes, self._shift

    def url_keys(self) -> memoryview[int]:
        """The sorted host keys of the `host/path` entries (for the prober's URL-host check)."""
        return self._url_keys

    def find(self, key: int) -> int:
        """The class of a name's key, or -1 if the name is not listed."""
        return _find(self._index, self._keys, self._classes, self._shift, key)

    def find_url(self, host_key: int, path: str) -> int:
        """The union of the classes of `host/path` entries whose path is a prefix of `path`
        (as a mask over the class table's entries' suffix masks: 0 if none)."""
        keys = self._url_keys
        i = bisect_left(keys, host_key)
        mask = 0
        blob = self._url_blob
        wanted = path.lower().encode("utf-8", "replace")
        while i < len(keys) and keys[i] == host_key:
            offset = self._url_refs[i]
            klass, length = _URL_ENTRY.unpack_from(blob, offset)
            start = offset + _URL_ENTRY.size
            if wanted.startswith(blob[start : start + length]):
                mask |= self.classes[klass][0]
            i += 1
        return mask

    def url_host_filter(self) -> tuple[int, bytes]:
        """(shift, bitmap): bit `key >> shift` of the bitmap is set for every URL entry's host
        key. Built once per process (about 16 bits per URL host, 2 MB at most), so the names of
        a host with no URL entries (nearly all of them) are ruled out without a bisect."""
        if self._url_filter is None:
            bits = max(12, min(24, self.url_count.bit_length() + 4))
            shift = 64 - bits
            bitmap = bytearray(1 << (bits - 3))
            for key in self._url_keys:
                top = key >> shift
                bitmap[top >> 3] |= 1 << (top & 7)
            self._url_filter = (shift, bytes(bitmap))
        return self._url_filter

    def find_address(self, address: Address) -> int:
        """The class of the range holding `address`, or -1."""
        if address.version == 4:
            value = int(address)
            i = bisect_right(self._v4_starts, value) - 1
            if i >= 0 and value <= self._v4_ends[i]:
                return self._v4_classes[i]
            return -1
        starts, ends, classes = self._v6
        packed = address.packed
        count = len(classes)
        lo, hi = 0, count
        while lo < hi:  # bisect over 16-byte big-endian values (compare as bytes)
            mid = (lo + hi) // 2
            if bytes(starts[16 * mid : 16 * mid + 16]) <= packed:
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
        if i >= 0 and packed <= bytes(ends[16 * i : 16 * i + 16]):
            return classes[i]
        return -1

    def addresses(self) -> Iterable[tuple[Network, int]]:
        """Every listed range as networks, with its class (for the gateway's sets)."""
        for start, end, klass in zip(self._v4_starts, self._v4_ends, self._v4_classes, strict=True):
            first, last = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
            for network4 in ipaddress.summarize_address_range(first, last):
                yield network4, klass
        starts, ends, classes = self._v6
        for i, klass in enumerate(classes):
            first6 = ipaddress.IPv6Address(bytes(starts[16 * i : 16 * i + 16]))
            last6 = ipaddress.IPv6Address(bytes(ends[16 * i : 16 * i + 16]))
            for network in ipaddress.summarize_address_range(first6, last6):
                yield network, klass

    def verify(self) -> None:
        """Check the whole structure (the writer does this once before a version goes live)."""
        keys, index, classes = self._keys, self._index, self._classes
        if index[0] != 0 or index[len(index) - 1] != len(keys):
            raise StoreError("damaged list store: the bucket index does not cover the keys")
        previous = -1
        bucket = 0
        for i, key in enumerate(keys):
            if key <= previous:
                raise StoreError("damaged list store: keys out of order")
            previous = key
            while index[bucket + 1] <= i:
                bucket += 1
            if key >> self._shift != bucket:
                raise StoreError("damaged list store: a key is filed in the wrong bucket")
        if classes and max(classes) >= len(self.classes):
            raise StoreError("damaged list store: a key names a class that does not exist")
        self.verify_entries()

    def verify_entries(self) -> None:
        """The URL and address sections (small beside the keys)."""
        if list(self._url_keys) != sorted(self._url_keys):
            raise StoreError("damaged list store: url keys out of order")
        for offset in self._url_refs:
            klass, length = _URL_ENTRY.unpack_from(self._url_blob, offset)
            if klass >= len(self.classes) or offset + _URL_ENTRY.size + length > len(self._url_blob):
                raise StoreError("damaged list store: a url entry is damaged")
        ends = list(self._v4_ends)
        starts = list(self._v4_starts)
        if any(s > e for s, e in zip(starts, ends, strict=True)) or any(
            ends[i] >= starts[i + 1] for i in range(len(starts) - 1)
        ):
            raise StoreError("damaged list store: address ranges overlap or are out of order")
        for klass in (*self._v4_classes, *self._v6[2]):
            if klass >= len(self.classes):
                raise StoreError("damaged list store: an address names a class that does not exist")


# -- building -------------------------------------------------------------------------------


class StoreBuilder:
    """Collects one version's entries, then lays them out (`build`).

    Names are turned into keys as they arrive (8 bytes each), so a five-million-name set never
    exists as five million strings. This builder sorts and merges in pure Python, which is
    right for a policy's local lists; `schoolgate.lists.compile` sorts millions with numpy and
    hands its arrays to the same `layout()`.
    """

    def __init__(self, seed: int, sources: Sequence[str]) -> None:
        if len(sources) > MAX_SOURCES:
            raise ValueError(f"at most {MAX_SOURCES} source categories in one list version, not {len(sources)}")
        if not 0 <= seed < 1 << 64:
            raise ValueError("the seed is a 64-bit unsigned number")
        self.seed = seed
        self.sources = tuple(sources)
        self.names: dict[tuple[int, bool], array[int]] = {}
        self.urls: list[tuple[int, bytes, int]] = []  # (host key, path, source)
        self.ranges: list[tuple[int, int, int, int]] = []  # (version, first, last, source)

    def add_names(self, names: Iterable[str], source: int, *, exact: bool = False) -> int:
        """Add names (already checked and lower-cased); returns how many were added."""
        keys = self.names.setdefault((source, exact), array("Q"))
        before = len(keys)
        keys.extend(map(_key, map(str.encode, names), repeat(self.seed)))
        return len(keys) - before

    def add_keys(self, keys: array[int], source: int, *, exact: bool = False) -> None:
        self.names.setdefault((source, exact), array("Q")).extend(keys)

    def add_url(self, host: str, path: str, source: int) -> None:
        self.urls.append((key_of(host, self.seed), path.lower().encode("utf-8", "replace")[:65535], source))

    def add_network(self, network: Network, source: int) -> None:
        self.ranges.append((network.version, int(network.network_address), int(network.broadcast_address), source))

    def build(self, info: Mapping[str, Any] | None = None) -> bytes:
        merged: dict[int, int] = {}
        get = merged.get
        for (source, exact), keys in self.names.items():
            bit = 1 << (source + (64 if exact else 0))
            for key in keys:
                merged[key] = get(key, 0) | bit
        ordered = sorted(merged)
        bits = bucket_bits_for(len(ordered))
        shift = 64 - bits
        index = array("I", [0]) * ((1 << bits) + 1)
        for key in ordered:
            index[(key >> shift) + 1] += 1
        for b in range(1, len(index)):
            index[b] += index[b - 1]
        pairs = [(merged[k] & _LOW64, merged[k] >> 64) for k in ordered]

        def classes(number: Mapping[tuple[int, int], int], width: int) -> bytes:
            return array("B" if width == 1 else "H", [number[p] for p in pairs]).tobytes()

        return b"".join(
            bytes(piece) for piece in layout(
                self, count=len(ordered), key_bytes=array("Q", ordered).tobytes(), index_bytes=index.tobytes(),
                key_pairs=set(pairs), class_bytes=classes, info=info or {},
            )
        )


_LOW64 = (1 << 64) - 1


def _disjoint(ranges: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Overlapping (first, last, source) ranges -> sorted disjoint (first, last, source mask)."""
    events: dict[int, list[tuple[int, int]]] = {}
    for first, last, source in ranges:
        events.setdefault(first, []).append((source, 1))
        events.setdefault(last + 1, []).append((source, -1))
    counts = [0] * MAX_SOURCES
    out: list[tuple[int, int, int]] = []
    points = sorted(events)
    for i, point in enumerate(points[:-1]):
        for source, step in events[point]:
            counts[source] += step
        mask = sum(1 << s for s, c in enumerate(counts) if c > 0)
        if mask:
            end = points[i + 1] - 1
            if out and out[-1][1] == point - 1 and out[-1][2] == mask:
                out[-1] = (out[-1][0], end, mask)
            else:
                out.append((point, end, mask))
    return out


def layout(
    builder: StoreBuilder,
    *,
    count: int,
    key_bytes: Buffer,
    index_bytes: Buffer,
    key_pairs: Iterable[tuple[int, int]],
    class_bytes: Callable[[Mapping[tuple[int, int], int], int], Buffer],
    info: Mapping[str, Any],
) -> list[Buffer]:
    """The file's bytes, in pieces: the header, then each section padded to 8 bytes.

    The caller has sorted the unique keys (`key_bytes`, with their bucket `index_bytes`) and
    knows the distinct (suffix mask, exact mask) pairs they carry; `class_bytes` turns the
    class numbers chosen here into the per-key class array of the given width. Both builders
    (pure Python here, numpy in schoolgate.lists.compile) share this, so their files are equal.
    """
    buckets = (1 << bucket_bits_for(count)) + 1
    if memoryview(index_bytes).nbytes != 4 * buckets or memoryview(key_bytes).nbytes != 8 * count:
        raise ValueError("the keys and the bucket index do not agree")
    bits = bucket_bits_for(count)
    v4 = _disjoint([(f, last, s) for version, f, last, s in builder.ranges if version == 4])
    v6 = _disjoint([(f, last, s) for version, f, last, s in builder.ranges if version == 6])
    url_masks: dict[tuple[int, bytes], int] = {}
    for host_key, path, source in builder.urls:
        url_masks[(host_key, path)] = url_masks.get((host_key, path), 0) | 1 << source
    # The class table: every (suffix mask, exact mask) pair in use, in sorted order.
    pairs: set[tuple[int, int]] = {(m, 0) for m in url_masks.values()}
    pairs |= {(m, 0) for _, _, m in (*v4, *v6)}
    pairs |= {(int(s), int(e)) for s, e in key_pairs}
    table = sorted(pairs)
    if len(table) > MAX_CLASSES:
        raise ValueError(f"{len(table)} combinations of categories; at most {MAX_CLASSES}")
    number = {pair: i for i, pair in enumerate(table)}
    width = 1 if len(table) <= 256 else 2
    classes_blob = class_bytes(number, width)
    if memoryview(classes_blob).nbytes != width * count:
        raise ValueError("the class array does not match the keys")
    url_items = sorted(url_masks.items())
    blob = bytearray()
    refs = array("I")
    for (_, path), mask in url_items:
        refs.append(len(blob))
        blob += _URL_ENTRY.pack(number[(mask, 0)], len(path)) + path
    url_keys = array("Q", [k for (k, _), _ in url_items])
    v4_blob = (array("I", [f for f, _, _ in v4]).tobytes() + array("I", [e for _, e, _ in v4]).tobytes()
               + array("H", [number[(m, 0)] for _, _, m in v4]).tobytes())
    v6_blob = (b"".join(f.to_bytes(16, "big") for f, _, _ in v6) + b"".join(e.to_bytes(16, "big") for _, e, _ in v6)
               + array("H", [number[(m, 0)] for _, _, m in v6]).tobytes())
    meta = json.dumps(
        {"format": FORMAT_VERSION, "sources": builder.sources, "classes": table, "info": dict(info)},
        sort_keys=True, separators=(",", ":"),
    ).encode()
    sections = [index_bytes, key_bytes, classes_blob, url_keys.tobytes(), refs.tobytes(), bytes(blob), v4_blob,
                v6_blob, meta]
    offsets: list[int] = []
    position = _align(_HEADER.size)
    pieces: list[Buffer] = []
    for section in sections:
        offsets.append(position)
        size = memoryview(section).nbytes
        padded = _align(size)
        pieces.append(section)  # not copied: a key section is tens of megabytes
        if padded > size:
            pieces.append(b"\0" * (padded - size))
        position += padded
    values = {
        "key_count": count, "url_count": len(url_items), "v4_count": len(v4), "v6_count": len(v6),
        "index_off": offsets[0], "keys_off": offsets[1], "classes_off": offsets[2], "url_keys_off": offsets[3],
        "url_refs_off": offsets[4], "url_blob_off": offsets[5], "url_blob_len": len(blob), "v4_off": offsets[6],
        "v6_off": offsets[7], "meta_off": offsets[8], "meta_len": len(meta), "file_size": position,
    }
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, _HEADER.size, _ORDER_CHECK, builder.seed, bits, width,
                          *(values[f] for f in _FIELDS))
    return [header + b"\0" * (_align(_HEADER.size) - _HEADER.size), *pieces]
