"""Slowing down password and code guessing without handing anyone a way to lock staff out.

Locking an account after five wrong passwords lets any pupil stop the headteacher approving or
the DSL reading a case: type her username five times on a classroom iPad. So no failure locks
an account. Instead failures are counted in buckets, and once a bucket has had its free
failures each further attempt has to wait, longer each time (30 s, 1, 2, 4, 8 minutes, at most
`max_delay`), until failures older than `window` are forgotten:

- a browser that has signed in to an account before carries a known-device cookie for it
  (schoolgate.console.known_devices); its attempts on that account count in a bucket of their
  own, so a pupil's guessing elsewhere never slows the headteacher's phone down;
- any other attempt counts against its source address (an IPv6 client by its /64, since a
  device can take any address in its network) and against the account's "unknown devices"
  bucket, which stops slow guessing spread over many addresses.

The buckets are kept by username as typed, whether or not such an account exists, so an
unknown username is slowed exactly like a real one and the replies say nothing about which
usernames exist. A wrong current password on the account pages and a wrong password or code
when signing a decision count in the same buckets. State is kept in the console's memory: the
console runs as one process (schoolgate.console.server) and memory is bounded by `max_keys`.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

UNKNOWN_SOURCE = "unknown"


def source_key(address: str | None) -> str:
    """The unit one client is counted by: an IPv4 address, or the /64 of an IPv6 address."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return UNKNOWN_SOURCE
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def account_key(username: str) -> str:
    """The username as the accounts table keys it (see accounts.find_user), known or not."""
    return username.strip().lower()[:100]


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    account_free_failures: int = 5  # per account from unknown devices, and per known device
    source_free_failures: int = 20  # per address (IPv6: per /64), over all accounts
    first_delay: timedelta = timedelta(seconds=30)
    max_delay: timedelta = timedelta(minutes=15)
    window: timedelta = timedelta(minutes=15)  # failures older than this are forgotten


class _Bucket:
    __slots__ = ("failures", "wait_until")

    def __init__(self) -> None:
        self.failures: deque[datetime] = deque()
        self.wait_until: datetime | None = None


class SignInThrottle:
    def __init__(self, settings: ThrottleSettings | None = None, max_keys: int = 20_000) -> None:
        self.settings = settings or ThrottleSettings()
        self._max_keys = max_keys
        self._buckets: OrderedDict[tuple[str, ...], _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _keys(self, source: str, account: str, device: str | None) -> list[tuple[tuple[str, ...], int]]:
        """The buckets an attempt counts in, each with its free failures."""
        settings = self.settings
        if device is not None:
            return [(("device", account, device), settings.account_free_failures)]
        return [
            (("source", source), settings.source_free_failures),
            (("account", account), settings.account_free_failures),
        ]

    def _bucket(self, key: tuple[str, ...], now: datetime, *, create: bool) -> _Bucket | None:
        bucket = self._buckets.get(key)
        if bucket is None:
            if not create:
                return None
            bucket = self._buckets[key] = _Bucket()
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(key)
        while bucket.failures and now - bucket.failures[0] >= self.settings.window:
            bucket.failures.popleft()
        return bucket

    def wait_until(self, *, source: str, account: str, device: str | None, now: datetime) -> datetime | None:
        """When this attempt may be made, or None if it may be made now."""
        latest: datetime | None = None
        with self._lock:
            for key, _free in self._keys(source, account, device):
                bucket = self._bucket(key, now, create=False)
                if bucket is not None and bucket.wait_until is not None and bucket.wait_until > now:
                    latest = max(latest or bucket.wait_until, bucket.wait_until)
        return latest

    def failure(self, *, source: str, account: str, device: str | None, now: datetime) -> int:
        """Count a failed attempt; returns the most failures any of its buckets now holds."""
        most = 0
        settings = self.settings
        with self._lock:
            for key, free in self._keys(source, account, device):
                bucket = self._bucket(key, now, create=True)
                assert bucket is not None
                bucket.failures.append(now)
                over = len(bucket.failures) - free
                if over >= 0:
                    delay = min(settings.max_delay, settings.first_delay * (2 ** min(over, 20)))
                    bucket.wait_until = now + delay
                most = max(most, len(bucket.failures))
        return most

    def success(self, *, account: str, device: str) -> None:
        """The right password and code: this device's own failures are forgiven. Not those of
        unknown devices or of the address: someone else may be guessing there, and the owner
        signing in must not hand them a fresh allowance."""
        with self._lock:
            self._buckets.pop(("device", account, device), None)

    def forgive_account(self, account: str) -> None:
        """An admin's "unlock": every wait on the account ends (not those of addresses)."""
        with self._lock:
            for key in [k for k in self._buckets if len(k) > 1 and k[0] in ("device", "account") and k[1] == account]:
                del self._buckets[key]

    def remembers_failures(self, now: datetime) -> bool:
        """Whether a failure still counts or a wait still runs: what a console going to sleep
        (schoolgate.console.activation) would forget, handing a guesser a fresh allowance."""
        with self._lock:
            return any(
                (bucket.failures and now - bucket.failures[-1] < self.settings.window)
                or (bucket.wait_until is not None and bucket.wait_until > now)
                for bucket in self._buckets.values()
            )

    def slowed_accounts(self, accounts: Iterable[str], now: datetime) -> dict[str, datetime]:
        """Accounts whose sign-ins from unknown devices must wait, and until when."""
        wanted = set(accounts)
        found: dict[str, datetime] = {}
        with self._lock:
            for key, bucket in self._buckets.items():
                if key[0] == "account" and key[1] in wanted and bucket.wait_until is not None \
                        and bucket.wait_until > now:
                    found[key[1]] = bucket.wait_until
        return found
