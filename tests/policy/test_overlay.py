"""Exceptions, bans and technicians' site blocks laid over the compiled example policy."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from schoolgate.policy import (
    Ban,
    Client,
    ExceptionScope,
    PolicyException,
    Role,
    SiteBlock,
    Target,
    Verdict,
    decide,
    explain_text,
)
from schoolgate.policy.engine import CompiledPolicy, url_key

LONDON = ZoneInfo("Europe/London")
TEACHER = Client(ip="10.41.10.20", person_id="T123", device_id="LAPTOP-7", mac="aa:bb:cc:00:00:07", role=Role.STAFF)
PUPIL = Client(
    ip="10.41.20.30", person_id="P6001", device_id="IPAD-31", role=Role.PUPIL, year_group=6, groups=frozenset({"6B"})
)
OTHER_PUPIL = Client(ip="10.41.20.31", person_id="P5002", role=Role.PUPIL, year_group=5, groups=frozenset({"5A"}))


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


def exception(
    id: int,
    scope: ExceptionScope,
    subject: str,
    starts: str,
    expires: str,
    domain: str | None = None,
    url_prefix: str | None = None,
) -> PolicyException:
    return PolicyException(
        id=id,
        scope=scope,
        subject=subject,
        domain=domain,
        url_prefix=url_prefix,
        starts=local(starts),
        expires=local(expires),
        reason="approved for a lesson",
    )


def test_no_overlay_returns_the_static_decision(example: CompiledPolicy) -> None:
    layered = example.with_overlay()
    now = local("2026-11-23 11:00")
    assert decide(layered, TEACHER, Target("x.com"), now) is decide(example, TEACHER, Target("x.com"), now)


def test_exception_expiring_mid_window_sets_valid_until_to_the_expiry(example: CompiledPolicy) -> None:
    exc = exception(7, ExceptionScope.PERSON, "T123", "2026-11-23 09:00", "2026-11-23 11:20", domain="facebook.com")
    layered = example.with_overlay(exceptions=[exc])
    decision = decide(layered, TEACHER, Target("www.facebook.com"), local("2026-11-23 11:00"))
    assert decision.verdict is Verdict.ALLOW
    assert decision.exception_id == 7
    assert decision.rule_id == "exception-7"
    assert decision.valid_until == local("2026-11-23 11:20")  # before school hours end at 15:15
    assert decision.clause == example.dynamic.exception  # the school's own process, from [dynamic]
    after = decide(layered, TEACHER, Target("www.facebook.com"), local("2026-11-23 11:20"))
    assert (after.verdict, after.rule_id) == (Verdict.BLOCK, "staff-social-media-school-hours")
    # The base example is untouched by the overlay.
    assert decide(example, TEACHER, Target("www.facebook.com"), local("2026-11-23 11:00")).verdict is Verdict.BLOCK


def test_upcoming_exception_bounds_the_block(example: CompiledPolicy) -> None:
    exc = exception(8, ExceptionScope.GROUP, "6B", "2026-11-23 14:00", "2026-11-23 15:00", domain="x.com")
    layered = example.with_overlay(exceptions=[exc])
    before = decide(layered, PUPIL, Target("x.com"), local("2026-11-23 11:00"))
    assert before.verdict is Verdict.BLOCK
    assert before.valid_until == local("2026-11-23 14:00")
    during = decide(layered, PUPIL, Target("api.x.com"), local("2026-11-23 14:30"))
    assert (during.verdict, during.exception_id, during.valid_until) == (Verdict.ALLOW, 8, local("2026-11-23 15:00"))
    other = decide(layered, OTHER_PUPIL, Target("x.com"), local("2026-11-23 14:30"))
    assert other.verdict is Verdict.BLOCK


@pytest.mark.parametrize(
    ("scope", "subject", "client", "applies"),
    [
        (ExceptionScope.PERSON, "P6001", PUPIL, True),
        (ExceptionScope.PERSON, "P6001", OTHER_PUPIL, False),
        (ExceptionScope.DEVICE, "IPAD-31", PUPIL, True),
        (ExceptionScope.DEVICE, "AA:BB:CC:00:00:07", TEACHER, True),  # by MAC
        (ExceptionScope.DEVICE, "IPAD-31", OTHER_PUPIL, False),
        (ExceptionScope.ROLE, "pupil", OTHER_PUPIL, True),
        (ExceptionScope.ROLE, "staff", OTHER_PUPIL, False),
        (ExceptionScope.GROUP, "5A", OTHER_PUPIL, True),
        (ExceptionScope.GROUP, "5A", PUPIL, False),
    ],
)
def test_exception_scopes(
    example: CompiledPolicy, scope: ExceptionScope, subject: str, client: Client, applies: bool
) -> None:
    exc = exception(1, scope, subject, "2026-11-23 08:00", "2026-11-23 16:00", domain="instagram.com")
    decision = decide(
        example.with_overlay(exceptions=[exc]), client, Target("www.instagram.com"), local("2026-11-23 11:00")
    )
    assert (decision.verdict is Verdict.ALLOW) is applies


def test_exceptions_cannot_lift_locked_blocks(example: CompiledPolicy) -> None:
    exc = exception(2, ExceptionScope.ROLE, "staff", "2026-11-23 08:00", "2026-11-24 08:00", domain="nordvpn.com")
    decision = decide(example.with_overlay(exceptions=[exc]), TEACHER, Target("nordvpn.com"), local("2026-11-23 11:00"))
    assert (decision.verdict, decision.rule_id, decision.locked) == (Verdict.BLOCK, "no-circumvention", True)
    assert decision.exception_id is None
    assert decision.valid_until is None  # the exception's dates cannot change a locked block


def test_url_prefix_exception(example: CompiledPolicy) -> None:
    exc = exception(
        3, ExceptionScope.GROUP, "6B", "2026-11-23 08:00", "2026-11-23 16:00", url_prefix="https://x.com/KingswoodPri"
    )
    layered = example.with_overlay(exceptions=[exc])
    now = local("2026-11-23 11:00")
    # DNS cannot see the URL: the whole host is let through, marked as depending on the page
    # (the proxy then intercepts it on a device that trusts the school CA).
    unseen = decide(layered, PUPIL, Target("x.com"), now)
    assert (unseen.verdict, unseen.url_scoped) == (Verdict.ALLOW, True)
    inside = Target("x.com", url="http://X.com/KingswoodPri/status/1")
    seen = decide(layered, PUPIL, inside, now)
    assert (seen.verdict, seen.url_scoped) == (Verdict.ALLOW, False)
    outside = Target("x.com", url="https://x.com/someone-else")
    assert decide(layered, PUPIL, outside, now).verdict is Verdict.BLOCK
    assert decide(layered, PUPIL, Target("twitter.com"), now).verdict is Verdict.BLOCK


def test_ban_makes_the_client_supervised(example: CompiledPolicy) -> None:
    ban = Ban(
        id=4,
        device_id="IPAD-31",
        person_id=None,
        mac=None,
        starts=local("2026-11-23 09:00"),
        until=local("2026-11-27 15:15"),
        reason="tried a VPN",
    )
    layered = example.with_overlay(bans=[ban])
    now = local("2026-11-23 11:00")
    blocked = decide(layered, PUPIL, Target("example.org"), now)
    assert (blocked.verdict, blocked.role, blocked.rule_id) == (
        Verdict.BLOCK,
        Role.SUPERVISED,
        "supervised-everything-else",
    )
    assert "banned" in blocked.flags
    assert blocked.valid_until == local("2026-11-27 15:15")  # the ban's end
    assert decide(layered, PUPIL, Target("www.bbc.co.uk"), now).verdict is Verdict.ALLOW
    assert decide(layered, OTHER_PUPIL, Target("example.org"), now).verdict is Verdict.ALLOW
    before = decide(layered, PUPIL, Target("example.org"), local("2026-11-23 08:00"))
    assert (before.verdict, before.valid_until) == (Verdict.ALLOW, local("2026-11-23 09:00"))
    after = decide(layered, PUPIL, Target("example.org"), local("2026-11-27 15:15"))
    assert after.verdict is Verdict.ALLOW


def test_a_banned_clients_explanation_cites_the_schools_ban_clause(example: CompiledPolicy) -> None:
    ban = Ban(id=4, device_id="IPAD-31", person_id=None, mac=None,
              starts=local("2026-11-23 09:00"), until=local("2026-11-27 15:15"))
    layered = example.with_overlay(bans=[ban])
    now = local("2026-11-23 11:00")
    text = explain_text(decide(layered, PUPIL, Target("example.org"), now), layered, now)
    assert f"under a ban and is treated as supervised ({example.dynamic.ban})" in text
    assert "§3" in example.dynamic.ban  # ASPIRE §3: removal of internet access


def test_ban_by_mac_and_person(example: CompiledPolicy) -> None:
    start, end = local("2026-11-23 00:00"), local("2026-11-30 00:00")
    by_mac = Ban(id=5, device_id=None, person_id=None, mac="AA:BB:CC:00:00:07", starts=start, until=end)
    by_person = Ban(id=6, device_id=None, person_id="P5002", mac=None, starts=start, until=end)
    layered = example.with_overlay(bans=[by_mac, by_person])
    now = local("2026-11-23 11:00")
    assert decide(layered, TEACHER, Target("example.org"), now).role is Role.SUPERVISED
    assert decide(layered, OTHER_PUPIL, Target("example.org"), now).role is Role.SUPERVISED
    assert decide(layered, PUPIL, Target("example.org"), now).role is Role.PUPIL


def test_a_banned_client_keeps_its_own_role_beside_the_ban(example: CompiledPolicy) -> None:
    """The decision says who the client was before the ban (the register's role, or its
    network's for an unregistered phone), so the proxy shows a banned child the children's page."""
    start, now = local("2026-11-23 00:00"), local("2026-11-23 11:00")
    phone = Client(ip="10.41.20.77", mac="02:41:00:00:20:77")  # on the pupils' network, not registered
    assert example.role_for_ip(phone.ip) is Role.PUPIL
    unbanned = decide(example, phone, Target("example.org"), now)
    assert (unbanned.role, unbanned.own_role) == (Role.PUPIL, None)
    bans = [Ban(id=7, device_id=None, person_id=None, mac=phone.mac, starts=start, until=None),
            Ban(id=8, device_id=TEACHER.device_id, person_id=None, mac=None, starts=start, until=None)]
    layered = example.with_overlay(bans=bans)
    banned = decide(layered, phone, Target("example.org"), now)
    assert (banned.role, banned.own_role) == (Role.SUPERVISED, Role.PUPIL)
    staff = decide(layered, TEACHER, Target("example.org"), now)
    assert (staff.role, staff.own_role) == (Role.SUPERVISED, Role.STAFF)


def test_site_blocks(example: CompiledPolicy) -> None:
    everyone = SiteBlock(id=9, domain="badgames.example", url_prefix=None, roles=frozenset(), reason="reported")
    pupils = SiteBlock(id=10, domain="chat.example", url_prefix=None, roles=frozenset({Role.PUPIL}))
    page = SiteBlock(id=11, domain=None, url_prefix="https://news.example/nasty", roles=frozenset())
    layered = example.with_overlay(blocks=[everyone, pupils, page])
    now = local("2026-11-23 11:00")
    decision = decide(layered, TEACHER, Target("www.badgames.example"), now)
    assert (decision.verdict, decision.rule_id, decision.reason) == (Verdict.BLOCK, "site-block-9", "reported")
    assert decision.clause == example.dynamic.site_block
    assert decide(layered, PUPIL, Target("chat.example"), now).verdict is Verdict.BLOCK
    assert decide(layered, TEACHER, Target("chat.example"), now).verdict is Verdict.ALLOW
    nasty = Target("news.example", url="https://news.example/nasty/story")
    assert decide(layered, PUPIL, nasty, now).verdict is Verdict.BLOCK
    assert decide(layered, PUPIL, Target("news.example", url="https://news.example/ok"), now).verdict is Verdict.ALLOW


TRUSTING_PUPIL = Client(
    ip="10.41.20.32", person_id="P6003", device_id="LAPTOP-32", role=Role.PUPIL, year_group=6,
    groups=frozenset({"6B"}), trusts_school_ca=True,
)


@pytest.mark.parametrize(
    ("client", "target", "verdict", "url_scoped"),
    [
        # The page is visible (plain HTTP, or a page the proxy intercepted): judged at the prefix.
        (PUPIL, Target("news.example", url="https://news.example/nasty/story"), Verdict.BLOCK, False),
        (PUPIL, Target("news.example", url="http://NEWS.example/ok"), Verdict.ALLOW, False),
        (TRUSTING_PUPIL, Target("news.example", url="https://news.example/nasty"), Verdict.BLOCK, False),
        # No page (DNS, TLS): a device that trusts the school CA is let through to the proxy,
        # which intercepts it and judges each page; any other device loses the whole site.
        (TRUSTING_PUPIL, Target("news.example"), Verdict.ALLOW, True),
        (PUPIL, Target("news.example"), Verdict.BLOCK, True),
        # Other hosts are untouched, whatever the prefix's path.
        (PUPIL, Target("www.news.example"), Verdict.ALLOW, False),
        (TEACHER, Target("sport.example"), Verdict.ALLOW, False),
    ],
)
def test_a_page_block_is_enforced_at_its_prefix_or_closes_the_whole_site(
    example: CompiledPolicy, client: Client, target: Target, verdict: Verdict, url_scoped: bool
) -> None:
    page = SiteBlock(id=11, domain=None, url_prefix="https://news.example/nasty", roles=frozenset())
    decision = decide(example.with_overlay(blocks=[page]), client, target, local("2026-11-23 11:00"))
    assert (decision.verdict, decision.url_scoped) == (verdict, url_scoped)
    if verdict is Verdict.BLOCK:
        assert decision.rule_id == "site-block-11"


def test_a_page_block_for_pupils_leaves_staff_alone(example: CompiledPolicy) -> None:
    page = SiteBlock(id=15, domain=None, url_prefix="https://news.example/nasty", roles=frozenset({Role.PUPIL}))
    layered = example.with_overlay(blocks=[page])
    decision = decide(layered, TEACHER, Target("news.example"), local("2026-11-23 11:00"))
    assert (decision.verdict, decision.url_scoped) == (Verdict.ALLOW, False)


def test_an_approved_exception_lifts_a_site_block(example: CompiledPolicy) -> None:
    block = SiteBlock(id=12, domain="wiki.example", url_prefix=None, roles=frozenset())
    exc = exception(13, ExceptionScope.PERSON, "T123", "2026-11-23 08:00", "2026-11-23 18:00", domain="wiki.example")
    layered = example.with_overlay(exceptions=[exc], blocks=[block])
    now = local("2026-11-23 11:00")
    assert decide(layered, TEACHER, Target("wiki.example"), now).exception_id == 13
    assert decide(layered, PUPIL, Target("wiki.example"), now).rule_id == "site-block-12"


def test_a_site_block_overrides_safe_search(example: CompiledPolicy) -> None:
    block = SiteBlock(id=14, domain="youtube.com", url_prefix=None, roles=frozenset({Role.PUPIL}))
    decision = decide(example.with_overlay(blocks=[block]), PUPIL, Target("www.youtube.com"), local("2026-11-23 11:00"))
    assert (decision.verdict, decision.rewrite_to) == (Verdict.BLOCK, None)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://Example.org/a?b=1", ("example.org", "example.org/a?b=1")),
        ("http://example.org:443/", ("example.org", "example.org/")),
        ("example.org/path", ("example.org", "example.org/path")),
        ("https://example.org:8443/x", ("example.org", "example.org:8443/x")),
        ("https://[::1/", None),
        ("https:///nohost", None),
    ],
)
def test_url_key(url: str, key: tuple[str, str] | None) -> None:
    assert url_key(url) == key


def test_exception_times_are_compared_as_instants(example: CompiledPolicy) -> None:
    exc = PolicyException(
        id=15,
        scope=ExceptionScope.PERSON,
        subject="T123",
        domain="facebook.com",
        url_prefix=None,
        starts=datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
        expires=datetime(2026, 11, 23, 11, 0, 30, tzinfo=UTC),
    )
    layered = example.with_overlay(exceptions=[exc])
    decision = decide(layered, TEACHER, Target("facebook.com"), local("2026-11-23 11:00"))
    assert decision.valid_until == datetime(2026, 11, 23, 11, 0, 30, tzinfo=UTC)


BANNED_FROM = local("2026-11-23 09:00")



@pytest.mark.parametrize(
    ("scope", "subject", "lifts"),
    [
        (ExceptionScope.PERSON, "P6001", False),  # the pupil's own approved request
        (ExceptionScope.DEVICE, "IPAD-31", False),
        (ExceptionScope.GROUP, "6B", False),
        (ExceptionScope.ROLE, "pupil", False),  # the role it would have had
        (ExceptionScope.ROLE, "supervised", True),  # the school's decision for supervised use
    ],
)
def test_a_banned_client_is_supervised_whatever_its_exceptions(
    example: CompiledPolicy, scope: ExceptionScope, subject: str, lifts: bool
) -> None:
    exc = exception(30, scope, subject, "2026-11-23 08:00", "2026-11-24 18:00", domain="example.org")
    ban = Ban(id=21, device_id="IPAD-31", person_id=None, mac=None, starts=BANNED_FROM, until=None)
    layered = example.with_overlay(exceptions=[exc], bans=[ban])
    decision = decide(layered, PUPIL, Target("example.org"), local("2026-11-23 11:00"))
    assert decision.role is Role.SUPERVISED and "banned" in decision.flags
    assert (decision.verdict is Verdict.ALLOW) is lifts
    # without the ban, every one of these exceptions would have let the pupil in
    unbanned = example.with_overlay(exceptions=[exc])
    if scope is not ExceptionScope.ROLE or subject == "pupil":
        assert decide(unbanned, PUPIL, Target("example.org"), local("2026-11-23 11:00")).verdict is Verdict.ALLOW


def test_pupil_only_site_blocks_still_apply_to_a_banned_pupil(example: CompiledPolicy) -> None:
    pupils = SiteBlock(id=12, domain="bbc.co.uk", url_prefix=None, roles=frozenset({Role.PUPIL}), reason="reported")
    ban = Ban(id=21, device_id="IPAD-31", person_id=None, mac=None, starts=BANNED_FROM, until=None)
    now = local("2026-11-23 11:00")
    assert decide(example.with_overlay(bans=[ban]), PUPIL, Target("www.bbc.co.uk"), now).verdict is Verdict.ALLOW
    both = example.with_overlay(bans=[ban], blocks=[pupils])
    decision = decide(both, PUPIL, Target("www.bbc.co.uk"), now)
    assert (decision.verdict, decision.rule_id, decision.role) == (Verdict.BLOCK, "site-block-12", Role.SUPERVISED)
    # a banned member of staff is not a pupil: the pupils' block is not theirs
    staff_ban = Ban(id=22, device_id="LAPTOP-7", person_id=None, mac=None, starts=BANNED_FROM, until=None)
    staff = decide(example.with_overlay(bans=[staff_ban], blocks=[pupils]), TEACHER, Target("www.bbc.co.uk"), now)
    assert staff.verdict is Verdict.ALLOW and staff.role is Role.SUPERVISED


def test_a_ban_until_lifted_has_no_end_and_never_closes_support(example: CompiledPolicy) -> None:
    ban = Ban(id=23, device_id=None, person_id="P6001", mac=None, starts=BANNED_FROM, until=None)
    layered = example.with_overlay(bans=[ban])
    next_year = local("2027-11-23 11:00")
    decision = decide(layered, PUPIL, Target("example.org"), next_year)
    assert decision.role is Role.SUPERVISED and decision.verdict is Verdict.BLOCK
    assert decision.valid_until is None or decision.valid_until > next_year
    # the person, on another device the register gives them
    phone = Client(ip="10.41.20.99", person_id="P6001", device_id="PHONE-1", role=Role.PUPIL)
    assert decide(layered, phone, Target("example.org"), next_year).role is Role.SUPERVISED
    help_site = decide(layered, PUPIL, Target("www.childline.org.uk"), next_year)
    assert help_site.verdict is Verdict.ALLOW
