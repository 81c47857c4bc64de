"""The sign-in throttle on its own: which client a failure is counted against, and the waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from schoolgate.console.throttle import SignInThrottle, ThrottleSettings, account_key, source_key

T0 = datetime(2026, 11, 23, 10, 35, tzinfo=UTC)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.41.20.15", "10.41.20.15"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # a privacy address in the same network: same client
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:10.41.20.15", "10.41.20.15"),  # an IPv4 client seen through a dual-stack socket
        ("", "unknown"),
        (None, "unknown"),
        ("not an address", "unknown"),
    ],
)
def test_a_client_is_counted_by_its_address_or_ipv6_64(address: str | None, key: str) -> None:
    assert source_key(address) == key


def test_usernames_are_keyed_as_the_accounts_table_keys_them() -> None:
    assert account_key("  HeadTeacher ") == "headteacher"
    assert len(account_key("x" * 500)) == 100


def _fail(throttle: SignInThrottle, times: int, *, source: str = "10.0.0.1", account: str = "head",
          device: str | None = None, at: datetime = T0) -> None:
    for _ in range(times):
        throttle.failure(source=source, account=account, device=device, now=at)


def test_failures_past_the_free_ones_wait_longer_each_time_up_to_the_cap() -> None:
    throttle = SignInThrottle(ThrottleSettings(account_free_failures=5, source_free_failures=100))
    _fail(throttle, 4)
    assert throttle.wait_until(source="10.0.0.1", account="head", device=None, now=T0) is None
    waits = []
    for _ in range(8):
        _fail(throttle, 1)
        until = throttle.wait_until(source="10.0.0.1", account="head", device=None, now=T0)
        assert until is not None
        waits.append((until - T0).total_seconds())
    assert waits == [30, 60, 120, 240, 480, 900, 900, 900]
    # Forgotten after the window: free again.
    later = T0 + timedelta(minutes=15, seconds=1)
    assert throttle.wait_until(source="10.0.0.1", account="head", device=None, now=later) is None


def test_a_known_device_is_not_slowed_by_guessing_elsewhere() -> None:
    throttle = SignInThrottle(ThrottleSettings(account_free_failures=5, source_free_failures=20))
    _fail(throttle, 30, source="10.41.20.15")  # a pupil's iPad, guessing the head's password
    assert throttle.wait_until(source="10.41.20.15", account="head", device=None, now=T0) is not None
    assert throttle.wait_until(source="10.41.10.5", account="head", device=None, now=T0) is not None  # unknown devices
    assert throttle.wait_until(source="10.41.20.15", account="head", device="phone", now=T0) is None
    # The known device has an allowance of its own, and loses only that.
    _fail(throttle, 5, device="phone")
    assert throttle.wait_until(source="10.41.10.5", account="head", device="phone", now=T0) is not None
    assert throttle.wait_until(source="10.41.10.5", account="head", device="laptop", now=T0) is None


def test_the_address_limit_covers_every_account_and_unknown_names() -> None:
    throttle = SignInThrottle(ThrottleSettings(account_free_failures=5, source_free_failures=6))
    for number in range(6):
        _fail(throttle, 1, account=f"nobody{number}")
    assert throttle.wait_until(source="10.0.0.1", account="someone-else", device=None, now=T0) is not None
    assert throttle.wait_until(source="10.0.0.2", account="someone-else", device=None, now=T0) is None


def test_success_forgives_the_device_and_an_admin_the_account_never_the_address() -> None:
    throttle = SignInThrottle(ThrottleSettings(account_free_failures=2, source_free_failures=3))
    _fail(throttle, 2, device="phone")
    _fail(throttle, 3)
    throttle.success(account="head", device="phone")
    assert throttle.wait_until(source="10.0.0.2", account="head", device="phone", now=T0) is None
    # The owner signing in hands whoever guesses from unknown devices no fresh allowance.
    assert throttle.wait_until(source="10.0.0.2", account="head", device=None, now=T0) is not None
    throttle.forgive_account("head")
    assert throttle.wait_until(source="10.0.0.2", account="head", device=None, now=T0) is None
    assert throttle.wait_until(source="10.0.0.1", account="other", device=None, now=T0) is not None
    _fail(throttle, 2, source="10.0.0.9", account="dsl")
    assert throttle.slowed_accounts(["dsl", "head"], T0).keys() == {"dsl"}
    throttle.forgive_account("dsl")
    assert throttle.slowed_accounts(["dsl"], T0) == {}


def test_memory_is_bounded() -> None:
    throttle = SignInThrottle(max_keys=100)
    for number in range(1000):
        _fail(throttle, 1, source=f"10.1.{number // 250}.{number % 250}", account=f"guess{number}")
    assert len(throttle._buckets) <= 100
