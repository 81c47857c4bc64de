"""The example policy (the ASPIRE Federation's, seed 000), decision by decision: roles x times x
sites (table-driven). tests/policy/test_seed_policies.py checks each seed's clauses against
its document."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from schoolgate.policy import Client, Role, Target, Verdict, decide
from schoolgate.policy.catalogue import CATALOGUE, HARMFUL_CATEGORIES, canary_for
from schoolgate.policy.engine import CompiledPolicy

LONDON = ZoneInfo("Europe/London")
PUPIL_IP, STAFF_IP, GUEST_IP = "10.41.20.15", "10.41.10.15", "10.41.30.15"  # the example's networks


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


CLIENTS = {
    "pupil": Client(ip=PUPIL_IP),  # role from the network
    "staff": Client(ip=STAFF_IP),
    "authorised": Client(ip=STAFF_IP, role=Role.AUTHORISED, person_id="marketing"),
    "guest": Client(ip=GUEST_IP),
    "supervised": Client(ip=PUPIL_IP, role=Role.SUPERVISED),
}

TIMES = {
    "lesson": "2026-11-23 11:00",  # Monday, Autumn 2
    "morning_break": "2026-11-23 10:35",
    "lunch": "2026-11-23 12:30",
    "after_school": "2026-11-23 16:00",
    "weekend": "2026-11-21 14:00",
    "inset_day": "2026-11-02 11:00",  # staff at work, pupils off
    "inset_lunch": "2026-11-02 12:10",
    "holiday": "2026-12-23 11:00",
}

SOCIAL = ("facebook.com", "m.facebook.com", "www.instagram.com", "x.com")

B, A = Verdict.BLOCK, Verdict.ALLOW


# School hours (§4 staff, §6 children): 08:45-15:15 on school days and INSET days.
SCHOOL_HOURS = ("lesson", "morning_break", "lunch", "inset_day", "inset_lunch")


def expected(who: str, when: str, host: str) -> tuple[Verdict, str]:
    social = host in SOCIAL
    if who == "supervised":
        return B, "supervised-everything-else"
    if not social:
        return A, "default"
    if who == "pupil":
        return B, "pupils-no-social-media" if when in SCHOOL_HOURS else "pupils-no-social-media-on-site"
    if who == "authorised" and "facebook" in host:
        return A, "authorised-school-accounts"  # §5: the official channels are Facebook pages
    # staff, authorised staff on other services, and guests (visitors are "staff", §1): §4,
    # with no exception for breaks
    if when in SCHOOL_HOURS:
        return B, "guests-no-social-media" if who == "guest" else "staff-social-media-school-hours"
    return A, "staff-social-media-outside-hours"


CASES = [(who, when, host) for who in CLIENTS for when in TIMES for host in (*SOCIAL, "example.org")]


@pytest.mark.parametrize(("who", "when", "host"), CASES, ids=["-".join(c) for c in CASES])
def test_matrix(example: CompiledPolicy, who: str, when: str, host: str) -> None:
    decision = decide(example, CLIENTS[who], Target(host), local(TIMES[when]))
    verdict, rule = expected(who, when, host)
    assert (decision.verdict, decision.rule_id) == (verdict, rule)
    assert decision.role.value == who
    assert decision.clause and decision.reason
    if host in SOCIAL:
        assert decision.category == "social_media"
        assert decision.service in ("facebook", "instagram", "x")


STAFF_VALID_UNTIL = [
    ("lesson", "2026-11-23 15:15"),  # school hours end: no break opens social media (§4)
    ("morning_break", "2026-11-23 15:15"),
    ("lunch", "2026-11-23 15:15"),
    ("after_school", "2026-11-24 08:45"),
    ("weekend", "2026-11-23 08:45"),
    ("inset_day", "2026-11-02 15:15"),
    ("holiday", "2027-01-04 08:45"),  # the INSET day opening the spring term: staff are in
]


@pytest.mark.parametrize(("when", "until"), STAFF_VALID_UNTIL)
def test_staff_social_media_changes_at_the_next_window_edge(example: CompiledPolicy, when: str, until: str) -> None:
    decision = decide(example, CLIENTS["staff"], Target("www.facebook.com"), local(TIMES[when]))
    assert decision.valid_until == local(until)


def test_a_verdict_that_never_changes_has_no_valid_until(example: CompiledPolicy) -> None:
    decision = decide(example, CLIENTS["authorised"], Target("facebook.com"), local(TIMES["lesson"]))
    assert decision.valid_until is None


def test_label_suffix_matching(example: CompiledPolicy) -> None:
    now = local(TIMES["lesson"])
    pupil = CLIENTS["pupil"]
    assert decide(example, pupil, Target("m.facebook.com"), now).matched == "facebook.com"
    assert decide(example, pupil, Target("WWW.Facebook.COM."), now).verdict is B
    for host in ("notfacebook.com", "facebook.com.evil.example", "myx.com", "instagram.co"):
        assert decide(example, pupil, Target(host), now).verdict is A, host


def test_network_roles_and_unknown_networks(example: CompiledPolicy) -> None:
    assert example.role_for_ip(PUPIL_IP) is Role.PUPIL
    assert example.role_for_ip("fd41:0:0:20::42") is Role.PUPIL
    assert example.role_for_ip(STAFF_IP) is Role.STAFF
    assert example.role_for_ip("192.0.2.9") is Role.GUEST  # unknown_network_role
    assert example.role_for_ip("not an address") is Role.GUEST


def test_circumvention_is_a_locked_flagged_block_for_everyone(example: CompiledPolicy) -> None:
    now = local(TIMES["lunch"])
    for who, client in CLIENTS.items():
        for host in ("dns.google", "mozilla.cloudflare-dns.com", "nordvpn.com", "doh.blahdns.com", "www.kproxy.com"):
            decision = decide(example, client, Target(host), now)
            assert decision.verdict is B, (who, host)
            assert decision.rule_id == "no-circumvention"
            assert decision.locked
            assert "circumvention" in decision.flags
            assert decision.category == "circumvention"


def test_list_matches_name_the_list(example: CompiledPolicy) -> None:
    decision = decide(example, CLIENTS["pupil"], Target("doh.blahdns.com"), local(TIMES["lunch"]))
    assert decision.list_id == "circumvention"
    assert decision.matched == "doh.blahdns.com"
    assert decision.service is None


@pytest.mark.parametrize(
    ("who", "host", "rewrite"),
    [
        ("pupil", "www.youtube.com", "restrict.youtube.com"),
        ("guest", "m.youtube.com", "restrict.youtube.com"),
        ("staff", "www.youtube.com", "restrictmoderate.youtube.com"),
        ("authorised", "youtubei.googleapis.com", "restrictmoderate.youtube.com"),
        ("pupil", "www.google.co.uk", "forcesafesearch.google.com"),
        ("staff", "google.com", "forcesafesearch.google.com"),
        ("pupil", "www.bing.com", "strict.bing.com"),
        ("staff", "duckduckgo.com", "safe.duckduckgo.com"),
    ],
)
def test_safe_search(example: CompiledPolicy, who: str, host: str, rewrite: str) -> None:
    decision = decide(example, CLIENTS[who], Target(host), local(TIMES["lesson"]))
    assert decision.verdict is Verdict.SAFE_SEARCH
    assert decision.rewrite_to == rewrite


@pytest.mark.parametrize("host", ["docs.google.com", "i.ytimg.com", "rr1---sn-x.googlevideo.com", "mail.google.com"])
def test_safe_search_leaves_other_hosts_alone(example: CompiledPolicy, host: str) -> None:
    decision = decide(example, CLIENTS["pupil"], Target(host), local(TIMES["lesson"]))
    assert decision.verdict is A
    assert decision.rewrite_to is None


def test_supervised_devices_reach_only_curriculum_essentials(example: CompiledPolicy) -> None:
    now = local(TIMES["lesson"])
    supervised = CLIENTS["supervised"]
    for host in ("www.bbc.co.uk", "classroom.google.com", "play.ttrockstars.com"):
        decision = decide(example, supervised, Target(host), now)
        assert (decision.verdict, decision.rule_id) == (A, "supervised-curriculum"), host
    for host in ("example.org", "www.youtube.com", "www.google.com", "docs.google.com.evil.example"):
        assert decide(example, supervised, Target(host), now).verdict is B, host


def test_decide_needs_an_aware_instant(example: CompiledPolicy) -> None:
    with pytest.raises(ValueError, match="aware"):
        decide(example, CLIENTS["pupil"], Target("x.com"), datetime(2026, 11, 23, 11, 0))


def test_valid_until_is_utc(example: CompiledPolicy) -> None:
    decision = decide(example, CLIENTS["staff"], Target("x.com"), local(TIMES["lesson"]))
    assert decision.valid_until is not None and decision.valid_until.tzinfo is UTC


# -- content categories (the catalogue's canaries stand in for any listed name) ----------------

PUPIL_BLOCKED = {
    "pornography", "gambling", "drugs", "extremism", "hate", "malware", "misinformation", "piracy", "self_harm",
    "violence", "dating", "social_media", "circumvention", "illegal",
}
STAFF_BLOCKED = {"pornography", "malware", "extremism", "self_harm", "violence", "gambling", "dating", "social_media",
                 "circumvention", "illegal"}
CATEGORY_CASES = [(who, category.id) for who in CLIENTS for category in CATALOGUE]


def category_expected(who: str, category: str) -> Verdict:
    if category == "support":
        return A  # everyone, banned devices included
    if category == "illegal" or who in ("pupil", "guest", "supervised"):
        return B if category in PUPIL_BLOCKED or who == "supervised" else A
    return B if category in STAFF_BLOCKED else A


@pytest.mark.parametrize(("who", "category"), CATEGORY_CASES, ids=["-".join(c) for c in CATEGORY_CASES])
def test_every_category_for_every_role_in_a_lesson(example: CompiledPolicy, who: str, category: str) -> None:
    decision = decide(example, CLIENTS[who], Target(canary_for(category)), local(TIMES["lesson"]))
    assert decision.verdict is category_expected(who, category)
    assert decision.category == category
    if category == "illegal":
        assert decision.locked and decision.rule_id == "illegal-content"
    if category == "support":
        assert decision.rule_id == "support-always-open"


@pytest.mark.parametrize("when", list(TIMES))
def test_harmful_categories_are_blocked_for_pupils_and_guests_at_all_times(example: CompiledPolicy, when: str) -> None:
    for who in ("pupil", "guest"):
        for category in HARMFUL_CATEGORIES:
            decision = decide(example, CLIENTS[who], Target(canary_for(category)), local(TIMES[when]))
            assert (decision.verdict, decision.rule_id) == (B, "harmful-content-pupils-guests"), (who, category)
            assert decision.valid_until is None
