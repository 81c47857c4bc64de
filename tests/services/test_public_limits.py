"""The daily allowance of the forms that need no account: per device and per address (an IPv6
client by its /64), fewer for a pupil's device."""

from __future__ import annotations

import pytest

from schoolgate.services.errors import RateLimited
from schoolgate.services.public_limits import Allowance, Filer, check, client_unit

ALLOWANCE = Allowance(pupil=2, other=5)


@pytest.mark.parametrize(
    ("address", "unit"),
    [
        ("10.41.20.15", "10.41.20.15"),
        ("2001:db8:1:2:a:b:c:d", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::ffff", "2001:db8:1:2::/64"),  # another address of the same network: the same unit
        ("::ffff:10.41.20.15", "10.41.20.15"),
        ("fe80::1%br-lan", "fe80::/64"),
        ("not an address", "unknown"),
        (None, "unknown"),
    ],
)
def test_addresses_are_counted_by_the_unit_a_client_controls(address: str | None, unit: str) -> None:
    assert client_unit(address) == unit


@pytest.mark.parametrize(
    ("role", "allowed"),
    [("pupil", 2), (None, 2), ("guest", 2), ("supervised", 2), ("staff", 5), ("authorised", 5)],
)
def test_a_pupils_device_gets_fewer(role: str | None, allowed: int) -> None:
    filer = Filer("IPAD-1", "10.0.0.1", role)
    earlier: list[tuple[str | None, str | None]] = []
    for _ in range(allowed):
        check(earlier, filer, ALLOWANCE, what="reports")
        earlier.append((filer.device_id, filer.client_ip))
    with pytest.raises(RateLimited, match=f"sent {allowed} reports today"):
        check(earlier, filer, ALLOWANCE, what="reports")


def test_neither_a_new_device_id_nor_a_new_ipv6_address_buys_a_fresh_allowance() -> None:
    earlier = [("IPAD-1", "2001:db8:1:2::10"), ("IPAD-1", "2001:db8:1:2::11")]
    with pytest.raises(RateLimited):  # same device, another network
        check(earlier, Filer("IPAD-1", "10.9.9.9", "pupil"), ALLOWANCE, what="reports")
    with pytest.raises(RateLimited):  # another address in the same /64, no known device
        check(earlier, Filer(None, "2001:db8:1:2::99", "pupil"), ALLOWANCE, what="reports")
    check(earlier, Filer("IPAD-2", "2001:db8:1:3::10", "pupil"), ALLOWANCE, what="reports")  # someone else
    check(earlier, Filer(None, None, None), ALLOWANCE, what="reports")  # a signed-in account: not limited here
