"""The compiled list store: layout, lookups through the policy's ListSet, and damaged files."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schoolgate.policy import Client, Role, Target, Verdict, decide
from schoolgate.policy.domains import ListIndex, ListSet, suffixes
from schoolgate.policy.liststore import MAGIC, ListStore, StoreBuilder, StoreError, bucket_bits_for, key_of
from schoolgate.policy.loader import load_policy


def build(seed: int = 11) -> StoreBuilder:
    builder = StoreBuilder(seed, ["adult", "gambling", "agressif"])
    builder.add_names([f"site{i}.example" for i in range(3000)], 0)
    builder.add_names(["bet.example", "site7.example"], 1)
    builder.add_names(["only.exact.example"], 2, exact=True)
    builder.add_network(ipaddress.ip_network("198.51.100.0/24"), 2)
    builder.add_network(ipaddress.ip_network("198.51.100.7/32"), 1)  # inside the /24: classes merge
    builder.add_network(ipaddress.ip_network("2001:db8:5::/48"), 0)
    builder.add_url("forum.example", "/Casino/", 1)
    builder.add_url("forum.example", "/hate/", 2)
    return builder


# adult -> category 0b1, gambling -> 0b10, agressif -> 0b100; all in list bit 0b1000
BITS = ((0b1, 0b1000), (0b10, 0b1000), (0b100, 0b1000))


def listset(data: bytes) -> ListSet:
    return ListSet([ListIndex(ListStore(data), BITS)])


def test_names_subdomains_and_exact_hosts() -> None:
    data = build().build({"version": "v1"})
    store = ListStore(data)
    store.verify()
    assert (store.key_count, store.sources, store.info) == (3002, ("adult", "gambling", "agressif"), {"version": "v1"})
    lists = listset(data)
    assert lists.lookup("site5.example") == (0b1000, 0b1, "site5.example")
    assert lists.lookup("a.b.site5.example") == (0b1000, 0b1, "site5.example")
    assert lists.lookup("site7.example") == (0b1000, 0b11, "site7.example")  # two sources, one key
    assert lists.lookup("only.exact.example") == (0b1000, 0b100, "only.exact.example")
    assert lists.lookup("www.only.exact.example") == (0, 0, None)
    assert lists.lookup("notsite5.example") == (0, 0, None)
    assert lists.lookup("example") == (0, 0, None)


def test_about_ten_bytes_a_name() -> None:
    builder = StoreBuilder(3, ["a"])
    builder.add_names((f"n{i}.example" for i in range(100_000)), 0)
    size = len(builder.build())
    assert size / 100_000 < 10.5  # 8 key + 1 class + under 1 of bucket index
    assert bucket_bits_for(100_000) == 15  # 32768 buckets, about 3 keys in each


def test_addresses_are_disjoint_ranges_with_merged_classes() -> None:
    lists = listset(build().build())
    assert lists.lookup_address(ipaddress.ip_address("198.51.100.6")) == (0b1000, 0b100)
    assert lists.lookup_address(ipaddress.ip_address("198.51.100.7")) == (0b1000, 0b110)
    assert lists.lookup_address(ipaddress.ip_address("198.51.100.255")) == (0b1000, 0b100)
    assert lists.lookup_address(ipaddress.ip_address("198.51.101.0")) == (0, 0)
    assert lists.lookup_address(ipaddress.ip_address("2001:db8:5:ffff::1")) == (0b1000, 0b1)
    assert lists.lookup_address(ipaddress.ip_address("2001:db8:6::1")) == (0, 0)
    networks = dict(lists.networks())
    assert networks[ipaddress.ip_network("198.51.100.7/32")] == 0b110
    assert networks[ipaddress.ip_network("2001:db8:5::/48")] == 0b1
    assert lists.address_count == 4  # .0-.6, .7, .8-.255, and the IPv6 /48


def test_url_prefixes_match_the_path_on_the_host_and_its_subdomains() -> None:
    lists = listset(build().build())
    assert lists.url_count == 2
    assert lists.lookup_url(suffixes("forum.example"), "/casino/tables?x=1") == (0b1000, 0b10)  # case folded
    assert lists.lookup_url(suffixes("www.forum.example"), "/hate/") == (0b1000, 0b100)
    assert lists.lookup_url(suffixes("forum.example"), "/cas") == (0, 0)
    assert lists.lookup_url(suffixes("forum.example"), "/") == (0, 0)
    assert lists.lookup("forum.example") == (0, 0, None)  # never blocks the name


def test_the_seed_changes_every_key_but_no_answer() -> None:
    first, second = ListStore(build(1).build()), ListStore(build(2).build())
    assert first.seed != second.seed
    assert key_of("site5.example", 1) != key_of("site5.example", 2)
    for store in (first, second):
        assert store.find(key_of("site5.example", store.seed)) >= 0
        assert store.find(key_of("site5.example", 3)) == -1


def test_stores_of_several_seeds_are_asked_together() -> None:
    # The prober groups stores by seed to hash each suffix once per seed: stores given with
    # their seeds interleaved must each still be asked with their own seed's keys.
    one = StoreBuilder(9, ["x"])
    one.add_names(["b.a.example"], 0)
    two = StoreBuilder(4, ["y"])
    two.add_names(["a.example"], 0)
    three = StoreBuilder(9, ["z"])
    three.add_names(["www.b.a.example"], 0, exact=True)
    lists = ListSet([ListIndex(ListStore(one.build()), ((0b1, 0b1),)),
                     ListIndex(ListStore(two.build()), ((0b10, 0b10),)),
                     ListIndex(ListStore(three.build()), ((0b100, 0b100),))])
    assert lists.lookup("www.b.a.example") == (0b111, 0b111, "www.b.a.example")
    assert lists.lookup("x.www.b.a.example") == (0b11, 0b11, "b.a.example")
    assert lists.lookup("a.example") == (0b10, 0b10, "a.example")


def test_an_empty_store_answers_nothing() -> None:
    store = ListStore(StoreBuilder(1, ["x"]).build())
    store.verify()
    assert store.key_count == 0 and store.find(key_of("a.example", 1)) == -1


def _damage(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


@pytest.mark.parametrize(("name", "change", "fragment"), [
    ("magic", lambda d: _damage(d, 0, b"NOTALIST"), "bad magic"),
    ("format", lambda d: _damage(d, 8, struct.pack("<I", 99)), "format 99"),
    ("byte-order", lambda d: _damage(d, 16, struct.pack(">Q", 0x0102030405060708)), "byte order"),
    ("truncated", lambda d: d[:-8], "truncated"),
    ("too-short", lambda d: d[:40], "too short"),
])
def test_a_damaged_file_is_refused_at_open(name: str, change: Callable[[bytes], bytes], fragment: str) -> None:
    with pytest.raises(StoreError, match=fragment):
        ListStore(change(build().build()))


def test_verify_finds_keys_out_of_order() -> None:
    data = bytearray(build().build())
    store = ListStore(bytes(data))
    offset = bytes(data).find(struct.pack("<Q", store._keys[10]))
    assert offset > 0
    data[offset : offset + 8] = struct.pack("<Q", store._keys[12])  # a duplicate out of place
    with pytest.raises(StoreError, match=r"order|bucket"):
        ListStore(bytes(data)).verify()
    assert ListStore(bytes(data)).info == {}  # the header still reads: only verify() looks deeper
    assert bytes(data[:8]) == MAGIC


# -- in a policy: local lists with addresses, and an IP literal asked for ----------------------

POLICY = """\
[school]
id = "t"
name = "T"
timezone = "Europe/London"
block_ipv4 = "10.0.0.1"

[calendar]
terms = [{ start = 2026-09-03, end = 2026-12-18 }]

[lists.bad]
file = "bad.txt"
format = "plain"
category = "malware"

[[rules]]
id = "no-malware"
clause = "c"
reason = "malware"
categories = ["malware"]
action = "block"
"""


def test_a_local_list_blocks_addresses_and_refuses_private_ones(write_policy: Callable[..., Path]) -> None:
    path = write_policy(POLICY, files={"bad.txt": "evil.example\n118.123.4.224\n93.184.216.0/24\n10.0.0.0/8\n"
                                                  "192.168.1.1\n0.0.0.0/0\n2a00:1450:4000::/40\n192.0.2.1\n"})
    policy = load_policy(path)
    (entry,) = policy.lists
    assert "3 addresses" in entry.summary
    assert "2 private, local or reserved address" in entry.summary and "2 network wider than /16" in entry.summary
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    pupil = Client(ip="10.0.0.5", role=Role.PUPIL)
    cases = (("118.123.4.224", Verdict.BLOCK), ("93.184.216.34", Verdict.BLOCK), ("2a00:1450:4001::5", Verdict.BLOCK),
             ("evil.example", Verdict.BLOCK), ("118.123.4.225", Verdict.ALLOW), ("10.1.2.3", Verdict.ALLOW),
             ("192.168.1.1", Verdict.ALLOW))
    for host, verdict in cases:
        decision = decide(policy, pupil, Target(host), now)
        assert decision.verdict is verdict, host
        if verdict is Verdict.BLOCK:
            assert decision.category == "malware" and decision.list_id == "bad"


def test_a_top_level_domain_in_a_list_never_blocks_its_names() -> None:
    builder = StoreBuilder(4, ["adult", "gambling", "agressif"])
    builder.add_names(["com", "example.com"], 0)
    lists = listset(builder.build())
    assert lists.lookup("www.example.com") == (0b1000, 0b1, "example.com")
    assert lists.lookup("other.com") == (0, 0, None)  # not every .com name
    assert lists.lookup("com") == (0b1000, 0b1, "com")  # the bare name itself, asked for


def test_a_top_level_domain_alone_in_a_list_file_is_reported_not_used(write_policy: Callable[..., Path]) -> None:
    path = write_policy(POLICY, files={"bad.txt": "evil.example\ncom\nxxx\n"})
    policy = load_policy(path)
    (entry,) = policy.lists
    assert "1 names" in entry.summary and "2 top-level domains alone (never matched)" in entry.summary, entry.summary
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    pupil = Client(ip="10.0.0.5", role=Role.PUPIL)
    assert decide(policy, pupil, Target("www.evil.example"), now).verdict is Verdict.BLOCK
    assert decide(policy, pupil, Target("bbc.com"), now).verdict is Verdict.ALLOW


@pytest.mark.parametrize("url_hosts", [1, 300, 5000])
def test_hosts_with_url_entries_are_found_through_the_filter(url_hosts: int) -> None:
    """The filter only rules names out: every host with URL entries (and its subdomains) is
    still found, any other is not, whatever the filter's size."""
    builder = StoreBuilder(21, ["adult", "gambling", "agressif"])
    builder.add_names(["listed.example"], 0)
    for i in range(url_hosts):
        builder.add_url(f"forum{i}.example", f"/board{i}/", i % 3)
    data = builder.build()
    store = ListStore(data)
    lists = listset(data)
    shift, bitmap = store.url_host_filter()
    assert len(bitmap) * 8 == 1 << (64 - shift) and 12 <= 64 - shift <= 24
    for i in range(0, url_hosts, max(1, url_hosts // 50)):
        assert lists.has_urls(f"forum{i}.example")
        assert lists.has_urls(f"www.forum{i}.example")
    for host in ("listed.example", "forum.example", f"forum{url_hosts}.example", "example", "www.example"):
        assert not lists.has_urls(host), host
    assert store.url_count == url_hosts
