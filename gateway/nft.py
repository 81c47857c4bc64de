"""Talking to nftables: apply the ruleset in one transaction, feed the watched sets, read counters.

`nft -f` is the interface: the ruleset is a whole table replaced atomically, and set elements
go in batches of `add element` commands. pyroute2's nftables API can build single rules, not
parse a ruleset, so it would only duplicate what nft does well.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from schoolgate.gateway.sets import NFT_TABLE, TABLE_FAMILIES, WATCHED_V4, WATCHED_V6

log = logging.getLogger(__name__)


class NftError(RuntimeError):
    """nft refused a command; the message carries nft's own explanation."""


def nft_binary() -> str:
    found = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )
    if not found:
        raise NftError("nft is not installed (Debian package: nftables)")
    return found


def run_nft(script: str, *, check_only: bool = False, timeout: float = 20.0) -> None:
    """Run an nft script from stdin as one transaction."""
    args = [nft_binary(), *(["-c"] if check_only else []), "-f", "-"]
    done = subprocess.run(args, input=script, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise NftError(done.stderr.strip() or f"nft exited with status {done.returncode}")


def nft_json(*command: str, timeout: float = 10.0) -> list[dict[str, object]]:
    """`nft -j <command>`; an absent table or set gives an empty list, not an error."""
    done = subprocess.run(
        [nft_binary(), "-j", *command], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        if "No such file or directory" in done.stderr:
            return []
        raise NftError(done.stderr.strip())
    items: list[dict[str, object]] = json.loads(done.stdout or "{}").get("nftables", [])
    return items


@dataclass(frozen=True)
class LiveElement:
    set_name: str
    address: str
    expires_s: int  # seconds left; 0: no timeout


def loaded_families() -> list[str]:
    """The families of the schoolgate tables loaded now (inet, bridge)."""
    found = []
    for item in nft_json("list", "tables"):
        body = item.get("table")
        if isinstance(body, dict) and body.get("name") == NFT_TABLE and body.get("family") in TABLE_FAMILIES:
            found.append(str(body["family"]))
    return found


def live_watched_elements(family: str | None = None) -> list[LiveElement]:
    """The addresses DNS has put in the watched sets, with the time each has left.

    `family`: the table to read; None reads whichever schoolgate tables hold watched sets.
    """
    found: list[LiveElement] = []
    families = [family] if family else loaded_families()
    for set_name in (WATCHED_V4, WATCHED_V6):
        for item in (i for fam in families for i in nft_json("list", "set", fam, NFT_TABLE, set_name)):
            body = item.get("set")
            if not isinstance(body, dict):
                continue
            for element in body.get("elem", []):
                if isinstance(element, dict) and "elem" in element:
                    inner = element["elem"]
                    found.append(
                        LiveElement(set_name, str(inner["val"]), int(inner.get("expires", 0)))
                    )
                else:
                    found.append(LiveElement(set_name, str(element), 0))
    return found


def restore_script(elements: Iterable[LiveElement], family: str = "inet") -> str:
    """Commands that put learnt elements back after the table was replaced."""
    lines = []
    for element in elements:
        # Ones about to expire are not worth restoring; DNS re-adds them on the next answer.
        if element.expires_s and element.expires_s < 2:
            continue
        timeout = f" timeout {element.expires_s}s" if element.expires_s else ""
        lines.append(f"add element {family} {NFT_TABLE} {element.set_name} {{ {element.address}{timeout} }}")
    return "\n".join(lines) + ("\n" if lines else "")


def _declared_families(ruleset: str) -> set[str]:
    return {
        line.split()[1]
        for line in ruleset.splitlines()
        if line.startswith("table ") and line.rstrip().endswith("{") and line.split()[2] == NFT_TABLE
    }


def _delete_tables(families: Iterable[str]) -> str:
    return "".join(f"table {f} {NFT_TABLE}\ndelete table {f} {NFT_TABLE}\n" for f in families)


def apply_ruleset(ruleset: str, *, keep_learnt: bool = True, watched_family: str = "inet") -> int:
    """Replace the schoolgate tables atomically. Returns how many learnt elements were kept.

    Elements the DNS daemon learnt at run time survive a re-apply (with the time they had
    left), in the same transaction as the new tables: no instant without them, so a watched
    service's connections never slip past the proxy during a re-apply. A table of another
    mode (a bridge table after a switch to gateway mode) goes in the same transaction, and
    what its watched sets had learnt moves to the new ones.
    """
    loaded = loaded_families()
    kept = live_watched_elements() if keep_learnt and loaded else []
    stale = [family for family in loaded if family not in _declared_families(ruleset)]
    run_nft(_delete_tables(stale) + ruleset + restore_script(kept, watched_family))
    return len(kept)


def remove_table() -> None:
    """Remove every schoolgate table (inet, and bridge if bridge mode left one)."""
    run_nft(_delete_tables(loaded_families() or ["inet"]))


def read_counters() -> dict[str, tuple[int, int]]:
    """Named counters of the schoolgate tables: name -> (packets, bytes)."""
    result: dict[str, tuple[int, int]] = {}
    for family in loaded_families():
        for item in nft_json("list", "counters", "table", family, NFT_TABLE):
            body = item.get("counter")
            if isinstance(body, dict):
                result[str(body["name"])] = (int(body["packets"]), int(body["bytes"]))
    return result


class NftWatchedSets:
    """WatchedSets backed by the kernel's `schoolgate watched4/watched6` sets (in the inet
    table, or the bridge table in bridge mode: see schoolgate.gateway.sets.watched_family).

    `add` is called on the DNS hot path: it only appends to a bounded queue and returns.
    A writer thread drains the queue, skips addresses whose timeout is still fresh, and sends
    the rest to nft in one transaction per batch. If the queue is full the addresses are
    counted as dropped: the next answer for the same name offers them again.
    """

    def __init__(self, *, max_queue: int = 10_000, batch_interval_s: float = 0.05, family: str = "inet") -> None:
        self._family = family
        self._queue: collections.deque[tuple[tuple[str, ...], int]] = collections.deque()
        self._max_queue = max_queue
        self._interval = batch_interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline: dict[str, float] = {}  # address -> monotonic time its element expires
        self._writing = threading.Lock()  # the writer thread and add_now's callers
        self.added = 0
        self.dropped = 0
        self.failures = 0
        self.batches = 0

    def add(self, addresses: Iterable[str], timeout_s: int) -> None:
        if len(self._queue) >= self._max_queue:
            self.dropped += 1
            return
        self._queue.append((tuple(addresses), int(timeout_s)))
        self._wake.set()
        if self._thread is None:
            self.start()

    def add_now(self, addresses: Iterable[str], timeout_s: int) -> None:
        """Write these addresses at once, in the caller's thread; NftError if nft refused."""
        with self._writing:
            wanted = self._fresh(self._wanted([(tuple(addresses), int(timeout_s))]))
            if wanted and not self._write(wanted):
                raise NftError(f"could not add {len(wanted)} watched addresses")

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nft-watched-sets", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def flush(self) -> None:
        """Write whatever is queued now (used at shutdown and by tests)."""
        self._write_drained()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            # A short pause gathers the addresses of a burst of answers into one transaction.
            self._stop.wait(self._interval)
            self._write_drained()
        self._write_drained()

    def _write_drained(self) -> None:
        with self._writing:
            self._write(self._drain())

    def _drain(self) -> dict[str, int]:
        batches = []
        while self._queue:
            batches.append(self._queue.popleft())
        return self._fresh(self._wanted(batches))

    @staticmethod
    def _wanted(batches: Iterable[tuple[tuple[str, ...], int]]) -> dict[str, int]:
        wanted: dict[str, int] = {}
        for addresses, timeout in batches:
            for address in addresses:
                try:
                    key = str(ipaddress.ip_address(address))
                except ValueError:
                    log.warning("ignoring %r: not an IP address", address)
                    continue
                wanted[key] = max(timeout, wanted.get(key, 0))
        return wanted

    def _fresh(self, wanted: dict[str, int]) -> dict[str, int]:
        now = time.monotonic()
        fresh = {}
        for address, timeout in wanted.items():
            # Re-adding costs a transaction; only refresh once half the timeout has passed.
            if self._deadline.get(address, 0.0) - now > timeout / 2:
                continue
            fresh[address] = timeout
        return fresh

    def _write(self, wanted: dict[str, int]) -> bool:
        if not wanted:
            return True
        lines = []
        for address, timeout in wanted.items():
            set_name = WATCHED_V6 if ":" in address else WATCHED_V4
            element = f"{self._family} {NFT_TABLE} {set_name} {{ {address} }}"
            # add (so it exists), delete, add with the timeout: in one transaction this
            # refreshes an existing element's timeout on every kernel nft supports.
            lines.append(f"add element {element}")
            lines.append(f"delete element {element}")
            lines.append(f"add element {self._family} {NFT_TABLE} {set_name} {{ {address} timeout {timeout}s }}")
        try:
            run_nft("\n".join(lines) + "\n")
        except (NftError, OSError, subprocess.TimeoutExpired) as err:
            self.failures += 1
            log.error("could not add %d watched addresses: %s", len(wanted), err)
            return False
        now = time.monotonic()
        for address, timeout in wanted.items():
            self._deadline[address] = now + timeout
        self.added += len(wanted)
        self.batches += 1
        return True
