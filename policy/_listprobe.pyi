"""The list store's hash and probe, compiled (policy/_listprobe.c)."""

from collections.abc import Sequence

from typing_extensions import Buffer

XXH_VERSION_NUMBER: int

# (seed, bucket index u32, keys u64, classes u8/u16, shift, URL keys u64 or None, URL filter
# shift, URL filter bitmap or None, per class (categories, lists) as a parent domain, the same
# as the host itself)
_ClassBits = tuple[tuple[int, int], ...]
StoreArrays = tuple[int, Buffer, Buffer, Buffer, int, Buffer | None, int, Buffer | None, _ClassBits, _ClassBits]
# (seed, bucket index, keys, classes, shift)
KeySet = tuple[int, Buffer, Buffer, Buffer, int]

def key(name: Buffer, seed: int) -> int:
    """xxh3_64 of the bytes with the seed: a list store's key of a name."""

def find(index: Buffer, keys: Buffer, classes: Buffer, shift: int, key: int) -> int:
    """The class of `key` in one store's arrays, or -1 if it is not there."""

class Prober:
    """A policy's list stores, asked together about a host."""

    def __init__(self, stores: Sequence[StoreArrays], catalogue: KeySet | None = None) -> None: ...
    def probe(self, host: str, /) -> tuple[int, int, str | None, bool, tuple[str, ...]]:
        """(list bits, category bits, the longest listed domain that added list bits,
        whether a store holds `host/path` entries under a suffix, the suffixes that may be
        catalogue names, longest first). A top-level domain alone is never a list entry unless
        it is the whole host; the catalogue is asked about every suffix."""
