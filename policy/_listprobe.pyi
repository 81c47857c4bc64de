"""The list store's hash and probe, compiled (policy/_listprobe.c)."""

from collections.abc import Sequence

from typing_extensions import Buffer

XXH_VERSION_NUMBER: int

# (seed, bucket index u32, keys u64, classes u8/u16, shift, URL keys u64 or None, URL filter
# shift, URL filter bitmap or None)
StoreArrays = tuple[int, Buffer, Buffer, Buffer, int, Buffer | None, int, Buffer | None]

def key(name: Buffer, seed: int) -> int:
    """xxh3_64 of the bytes with the seed: a list store's key of a name."""

def find(index: Buffer, keys: Buffer, classes: Buffer, shift: int, key: int) -> int:
    """The class of `key` in one store's arrays, or -1 if it is not there."""

class Prober:
    """A policy's list stores, asked together about a host."""

    def __init__(self, stores: Sequence[StoreArrays]) -> None: ...
    def probe(self, host: str, /) -> tuple[tuple[int, ...], bool]:
        """(hits, url_entries): hits is flat (store, offset, class) triples, one per listed
        label suffix (offset 0 is the host itself); url_entries says whether a store holds
        `host/path` entries under one of the suffixes. A top-level domain alone is skipped
        unless it is the whole host."""
