"""A list's entries that DNS cannot enforce, enforced at the proxy: host/path prefixes (on a
device that trusts the school CA, each page judged by its URL) and IP addresses (whatever
name the client sends to a listed address)."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from pathlib import Path

import pytest
from proxy_testkit import OTHER_IP, PUPIL, TRUSTED_PUPIL, Harness

from schoolgate.policy.engine import CompiledPolicy, decide
from schoolgate.policy.liststore import ListStore, StoreBuilder
from schoolgate.policy.loader import load_policy
from schoolgate.policy.model import ListSource
from schoolgate.policy.types import Client, Decision, Target
from schoolgate.proxy.addons import REFUSED, Services

LISTED_IP = "93.184.216.34"
EXTRA = """
[lists.ut1]
url = "https://lists.example/blacklists.tar.gz"
format = "squidguard"

[lists.ut1.categories]
gambling = "gambling"

[[rules]]
id = "no-gambling"
clause = "Online Safety Policy"
reason = "gambling is blocked"
categories = ["gambling"]
action = "block"
"""


@pytest.fixture
def known_clients() -> dict[str, Client]:
    return {c.ip: c for c in (PUPIL, TRUSTED_PUPIL)}


@pytest.fixture
def listed_policy(policy_file: Path, tmp_path: Path) -> CompiledPolicy:
    path = tmp_path / "policy.toml"
    text = policy_file.read_text(encoding="utf-8")
    head, _, rules = text.partition("[[rules]]")
    path.write_text(head + EXTRA + "\n[[rules]]" + rules, encoding="utf-8")
    builder = StoreBuilder(17, ["gambling"])
    builder.add_names(["casino.example"], 0)
    builder.add_url("forum.example", "/betting/", 0)
    builder.add_network(ipaddress.ip_network(f"{LISTED_IP}/32"), 0)
    store = ListStore(builder.build({"version": "ut1-test"}))

    def installed(source: ListSource) -> ListStore | None:
        return store if source.id == "ut1" else None

    return load_policy(path, installed=installed)


@pytest.fixture
def with_lists(services: Services, listed_policy: CompiledPolicy) -> Services:
    def decide_now(client: Client, target: Target, now: datetime) -> Decision:
        return decide(listed_policy, client, target, now)

    services.decide = decide_now
    return services


def test_a_url_entry_is_judged_by_the_page_on_a_trusting_device(harness: Harness, with_lists: Services) -> None:
    ctx = harness.connect(TRUSTED_PUPIL, OTHER_IP)
    assert harness.hello(ctx, "www.forum.example").ignore_connection is False  # intercepted to see pages
    ctx.client.tls = True
    ok = harness.request(ctx, "https://www.forum.example/homework-help")
    assert ok.response is None
    betting = harness.request(ctx, "https://www.forum.example/betting/odds")
    assert betting.response is not None and betting.response.status_code == 403
    # A device that cannot be intercepted reaches the forum: only the proxy sees paths, and
    # `lists status` says so.
    other = harness.connect(PUPIL, OTHER_IP)
    assert harness.hello(other, "www.forum.example").ignore_connection is True


def test_a_listed_address_is_blocked_whatever_name_is_sent(harness: Harness, with_lists: Services) -> None:
    ctx = harness.connect(PUPIL, LISTED_IP)
    harness.hello(ctx, "innocent.example")
    assert harness.server_connect(ctx).error == REFUSED
    elsewhere = harness.connect(PUPIL, OTHER_IP)
    assert harness.hello(elsewhere, "innocent.example").ignore_connection is True
    assert harness.server_connect(elsewhere).error is None


def test_names_and_addresses_at_the_policy(listed_policy: CompiledPolicy) -> None:
    from schoolgate.policy.types import Verdict

    now = datetime.fromisoformat("2026-11-23T11:00:00+00:00")
    assert decide(listed_policy, PUPIL, Target("www.casino.example"), now).verdict is Verdict.BLOCK
    assert decide(listed_policy, PUPIL, Target(LISTED_IP), now).category == "gambling"
    host_only = decide(listed_policy, PUPIL, Target("forum.example"), now)
    assert host_only.verdict is Verdict.ALLOW and host_only.url_scoped  # the proxy must look at pages


VPN_IP = "198.51.100.77"


@pytest.fixture
def support_policy(policy_file: Path, tmp_path: Path) -> CompiledPolicy:
    """A gambling address and a VPN server's address (circumvention: locked) in one list."""
    path = tmp_path / "policy.toml"
    text = policy_file.read_text(encoding="utf-8")
    head, _, rules = text.partition("[[rules]]")
    extra = EXTRA.replace('gambling = "gambling"\n', 'gambling = "gambling"\nvpn = "circumvention"\n') + (
        '\n[[rules]]\nid = "no-circumvention"\nclause = "Online Safety Policy"\n'
        'reason = "ways round the filter are blocked"\ncategories = ["circumvention"]\naction = "block"\n'
    )
    path.write_text(head + extra + "\n[[rules]]" + rules, encoding="utf-8")
    builder = StoreBuilder(17, ["gambling", "vpn"])
    builder.add_network(ipaddress.ip_network(f"{LISTED_IP}/32"), 0)
    builder.add_network(ipaddress.ip_network(f"{VPN_IP}/32"), 1)
    store = ListStore(builder.build({"version": "ut1-test"}))
    return load_policy(path, installed=lambda source: store if source.id == "ut1" else None)


@pytest.mark.parametrize(
    ("sni", "dialled", "refused"),
    [
        ("www.childline.org.uk", LISTED_IP, False),  # support outranks a list's address entry
        ("www.samaritans.org", LISTED_IP, False),
        ("innocent.example", LISTED_IP, True),  # any other name does not
        ("www.childline.org.uk", VPN_IP, True),  # a locked block (a VPN server) outranks support
    ],
)
def test_a_support_name_is_not_refused_by_an_address_entry_unless_locked(
    harness: Harness, services: Services, support_policy: CompiledPolicy, sni: str, dialled: str, refused: bool
) -> None:
    services.decide = lambda client, target, now: decide(support_policy, client, target, now)
    ctx = harness.connect(PUPIL, dialled)
    harness.hello(ctx, sni)
    assert (harness.server_connect(ctx).error == REFUSED) is refused
