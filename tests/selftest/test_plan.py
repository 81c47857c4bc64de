"""What the self-test asks and expects, from the example policy: pure, no network."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from schoolgate.config import SelftestConfig
from schoolgate.policy import Client, CompiledPolicy, load_policy
from schoolgate.selftest.plan import DOH_CANARY, UPSTREAM, Kind, Settings, Want, category_names, plan
from schoolgate.selftest.vantage import Vantage, VantageError, probe_addresses

REPO = Path(__file__).resolve().parents[2]
LESSON = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)  # Monday in term, GMT
AFTER_SCHOOL = datetime(2026, 11, 23, 16, 30, tzinfo=UTC)  # staff are outside school hours (§4)
SETTINGS = Settings(appliance_ipv4="10.41.0.1", appliance_names=("schoolgate.lan",),
                    allowed_sites=("www.gov.uk",), watched_prefixes=("203.0.113.10/32",))


@pytest.fixture(scope="module")
def policy() -> CompiledPolicy:
    return load_policy(REPO / "deploy" / "policy.example.toml")


def vantage(name: str, ip: str) -> Vantage:
    return Vantage(name=name, role="", client_ip=ip, source=ip)


PUPIL = vantage("pupil", "10.41.23.254")
STAFF = vantage("staff", "10.41.10.254")


def unknown(v: Vantage) -> Client:
    return Client(ip=v.client_ip)


def by_check(items: list, check: str, subject: str | None = None) -> list:
    return [e for e in items if e.check == check and (subject is None or e.subject == subject)]


def test_every_category_is_asked_by_its_canary_with_the_policys_verdict(policy: CompiledPolicy) -> None:
    items = plan(policy, [PUPIL], unknown, SETTINGS, LESSON)
    names = {c[0]: c[2] for c in category_names(policy)}
    assert set(names) == {c.id for c in policy.categories}  # every category has a canary
    assert names["self_harm"] == "self-harm.category-test.schoolgate.invalid"
    (gambling,) = by_check(items, "category", "Gambling")
    assert (gambling.kind, gambling.want, gambling.value, gambling.filtering) == (Kind.DNS, Want.BLOCK, "10.41.0.1",
                                                                                  True)
    assert gambling.rule.startswith("harmful-content-pupils-guests")
    (illegal,) = by_check(items, "category", "Illegal content")
    assert illegal.want is Want.BLOCK
    (support,) = by_check(items, "category", "Help and support for children")
    assert (support.want, support.filtering) == (Want.ALLOW, False)  # always open; over-blocking is no leak
    (doh,) = by_check(items, "doh-canary")
    assert (doh.name, doh.want) == (DOH_CANARY, Want.NXDOMAIN)
    assert {e.name for e in by_check(items, "private-relay")} == {"mask.icloud.com", "mask-h2.icloud.com"}
    (youtube,) = by_check(items, "safe-search", "YouTube")
    assert (youtube.name, youtube.value) == ("m.youtube.com", "restrict.youtube.com")
    (google,) = by_check(items, "safe-search", "Google Search")
    assert (google.want, google.value) == (Want.REWRITE, "forcesafesearch.google.com")


def test_staff_after_school_are_allowed_social_media_and_over_blocking_is_not_filtering_down(
    policy: CompiledPolicy,
) -> None:
    items = plan(policy, [STAFF], unknown, SETTINGS, AFTER_SCHOOL)
    (social,) = by_check(items, "category", "Social media")
    assert (social.want, social.filtering) == (Want.ALLOW, False)
    assert social.rule.startswith("staff-social-media-outside-hours")
    (drugs,) = by_check(items, "category", "Drugs and substance abuse")
    assert drugs.want is Want.ALLOW  # the federation lets staff research drugs education
    # Social media is open after school: the HTTPS check uses a service that stays blocked.
    (https,) = by_check(items, "https-block")
    assert (https.address, https.want, https.name) == ("10.41.0.1", Want.KILLED, "dns.google")


def test_web_checks_block_a_service_pass_an_allowed_site_and_try_the_real_address(policy: CompiledPolicy) -> None:
    items = plan(policy, [PUPIL], unknown, SETTINGS, LESSON)
    (https,) = by_check(items, "https-block")
    assert (https.name, https.subject, https.address) == ("x.com", "X (Twitter)", "10.41.0.1")
    (page,) = by_check(items, "http-block-page")
    assert (page.kind, page.want) == (Kind.HTTP, Want.BLOCK_PAGE)
    real = by_check(items, "https-blocked-address")
    assert real and all(e.address == UPSTREAM for e in real)
    (allowed,) = by_check(items, "https-allowed")
    assert (allowed.name, allowed.want, allowed.filtering) == ("www.gov.uk", Want.UNTOUCHED, False)


def test_a_supervised_device_is_not_asked_to_reach_a_site_its_ban_closes(policy: CompiledPolicy) -> None:
    banned = Client(ip="10.41.20.41", device_id="lab-sup-ipad")
    from datetime import timedelta

    from schoolgate.policy import Ban

    overlaid = policy.with_overlay([], [Ban(1, "lab-sup-ipad", None, None, LESSON - timedelta(days=1),
                                            LESSON + timedelta(days=1))], [])
    settings = Settings(appliance_ipv4="10.41.0.1", appliance_names=("schoolgate.lan",),
                        allowed_sites=("www.gov.uk", "www.example.com"))
    items = plan(overlaid, [vantage("sup", "10.41.20.41")], lambda v: banned, settings, LESSON)
    # gov.uk is on the curriculum list a banned device keeps; example.com is not.
    assert [e.name for e in by_check(items, "https-allowed")] == ["www.gov.uk"]
    (video,) = by_check(items, "category", "Video sharing")
    assert video.want is Want.BLOCK and video.rule.startswith("supervised-everything-else")
    (support,) = by_check(items, "category", "Help and support for children")
    assert support.want is Want.ALLOW  # a ban never closes Childline


def test_probe_addresses_are_the_last_address_of_each_network(policy: CompiledPolicy) -> None:
    found = probe_addresses(policy, SelftestConfig(), reserved=("10.41.0.1",))
    assert [(p.network, p.role, p.address) for p in found] == [
        ("Staff LAN", "staff", "10.41.10.254"),
        ("Office", "staff", "10.41.12.254"),
        ("Pupil Wi-Fi and class iPads", "pupil", "10.41.23.254"),
        ("ICT suite", "pupil", "10.41.24.254"),
        ("Guest Wi-Fi", "guest", "10.41.30.254"),
    ]
    chosen = probe_addresses(policy, SelftestConfig(probe_addresses=["10.41.20.200"]))
    assert [(p.network, p.role) for p in chosen] == [("Pupil Wi-Fi and class iPads", "pupil")]


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        (["10.99.0.9"], "in none of the policy's [[networks]]"),
        (["not-an-ip"], "is not an IP address"),
        (["fd41:0:0:20::9"], "IPv4 only"),
        (["10.41.0.1"], "already the appliance's own address"),
    ],
)
def test_bad_probe_addresses_name_the_setting(policy: CompiledPolicy, addresses: list[str], message: str) -> None:
    with pytest.raises(VantageError, match=r"selftest\.probe_addresses") as caught:
        probe_addresses(policy, SelftestConfig(probe_addresses=addresses), reserved=("10.41.0.1",))
    assert message in str(caught.value)
