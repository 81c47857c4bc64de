"""The blocked-address sets: the IP entries of the policy's lists, in the kernel.

List entries that are addresses or networks (UT1 lists some) cannot be matched by DNS: a
device reaches them by address. The ruleset steers TCP 80/443 to them into the proxy (which
judges the address per role, so staff and pupils still differ) and refuses QUIC to them. The
sets are replaced in one nft transaction whenever a new list version is swapped in, without
touching the rest of the ruleset; the circumvention watcher (schoolgate-netwatch) owns them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from schoolgate.gateway.sets import BLOCKED_V4, BLOCKED_V6, NFT_TABLE

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CHUNK = 2000  # elements per `add element` statement


def blocked_script(networks: Iterable[Network], family: str = "inet") -> str:
    """An nft script that empties both sets and fills them with `networks` (merged: interval
    sets refuse overlapping elements)."""
    networks = list(networks)
    v4 = [n for n in networks if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in networks if isinstance(n, ipaddress.IPv6Network)]
    lines = [f"flush set {family} {NFT_TABLE} {BLOCKED_V4}", f"flush set {family} {NFT_TABLE} {BLOCKED_V6}"]
    for name, merged in ((BLOCKED_V4, _merged(v4)), (BLOCKED_V6, _merged(v6))):
        for start in range(0, len(merged), _CHUNK):
            lines.append(f"add element {family} {NFT_TABLE} {name} {{ {', '.join(merged[start:start + _CHUNK])} }}")
    return "\n".join(lines) + "\n"


def _merged(group: list[ipaddress.IPv4Network] | list[ipaddress.IPv6Network]) -> list[str]:
    collapsed: Iterable[Network] = ipaddress.collapse_addresses(group)  # type: ignore[type-var, assignment]
    return [str(n.network_address) if n.num_addresses == 1 else str(n) for n in collapsed]


class BlockedSets:
    """Keeps the kernel's sets equal to the lists' addresses; writes only when they change
    (or when asked to check again, e.g. after the ruleset was applied afresh)."""

    def __init__(self, family: str = "inet", run: Callable[[str], None] | None = None) -> None:
        if run is None:
            from schoolgate.gateway.nft import run_nft

            run = run_nft
        self.family = family
        self._run = run
        self._written: frozenset[Network] | None = None
        self.writes = 0

    def sync(self, networks: Iterable[Network], *, force: bool = False) -> bool:
        """Write the sets if they differ from the last write; True if written."""
        wanted = frozenset(networks)
        if wanted == self._written and not force:
            return False
        self._run(blocked_script(wanted, self.family))
        self._written = wanted
        self.writes += 1
        return True
