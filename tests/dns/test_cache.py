"""The answer cache: aging TTLs, the policy clamp, negative caching, serve-stale, LRU bound."""

from __future__ import annotations

import dns.message
import dns.rrset

from schoolgate.dns.cache import STALE_TTL, AnswerCache, render
from schoolgate.dns.message import Message
from schoolgate.dns.stages.cache import decision_key, lifetime_of
from schoolgate.policy.types import Decision, Role, Verdict


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(ttl: int = 300, rcode: int = 0, soa_min: int | None = None) -> bytes:
    query = dns.message.make_query("www.example.test", "A", use_edns=False)
    query.id = 0
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if rcode == 0 and soa_min is None:
        response.answer.append(dns.rrset.from_text("www.example.test.", ttl, "IN", "A", "192.0.2.1"))
        response.answer.append(dns.rrset.from_text("www.example.test.", ttl * 2, "IN", "AAAA", "2001:db8::2"))
    if soa_min is not None:
        response.authority.append(
            dns.rrset.from_text("example.test.", 3600, "IN", "SOA", f"ns. host. 1 2 3 4 {soa_min}")
        )
    return response.to_wire()


KEY = (b"\x03www\x07example\x04test\x00", 1, 1, ("allow", "default", None), False)
QUESTION = b"\x03WWW\x07example\x04test\x00\x00\x01\x00\x01"


def store(cache: AnswerCache, wire: bytes, key=KEY, dependent: bool = False) -> None:
    message = Message(wire)
    cache.store(key, wire, message.ttl_offsets(), lifetime_of(message), policy_dependent=dependent)


def ttls(wire: bytes) -> list[int]:
    return [rrset.ttl for rrset in dns.message.from_wire(bytes(wire)).answer]


def test_ttls_age_and_are_clamped_per_client() -> None:
    clock = FakeTime()
    cache = AnswerCache(monotonic=clock)
    store(cache, answer(300))
    clock.now += 100
    entry = cache.lookup(KEY)
    assert entry is not None
    served = render(entry, 0xBEEF, QUESTION, cache.age(entry), ceiling=86400)
    assert ttls(served) == [200, 500]
    message = dns.message.from_wire(bytes(served))
    assert message.id == 0xBEEF and str(message.question[0].name) == "WWW.example.test."
    # The decision behind this client's query ends in 42 s: nothing may say otherwise.
    assert ttls(render(entry, 1, QUESTION, cache.age(entry), ceiling=42)) == [42, 42]
    clock.now += 200  # the smallest TTL has run out
    assert cache.lookup(KEY) is None


def test_negative_answers_follow_rfc_2308() -> None:
    nx = answer(rcode=3, soa_min=60)
    assert lifetime_of(Message(nx)) == 60
    nodata = answer(soa_min=30)
    assert lifetime_of(Message(nodata)) == 30
    no_soa = answer(rcode=3)
    assert lifetime_of(Message(no_soa)) == 0  # no SOA: not cached
    assert lifetime_of(Message(answer(rcode=2))) == 0  # SERVFAIL never cached


def test_serve_stale_after_expiry_with_ttl_30() -> None:
    clock = FakeTime()
    cache = AnswerCache(monotonic=clock, stale_for=3600)
    store(cache, answer(10))
    clock.now += 60
    assert cache.lookup(KEY) is None
    stale = cache.lookup_stale(KEY)
    assert stale is not None
    assert ttls(render(stale, 1, QUESTION, 0, ceiling=86400, stale=True)) == [STALE_TTL, STALE_TTL]
    assert ttls(render(stale, 1, QUESTION, 0, ceiling=5, stale=True)) == [5, 5]
    clock.now += 3600
    assert cache.lookup_stale(KEY) is None


def test_lru_bound_and_policy_flush() -> None:
    cache = AnswerCache(max_entries=3)
    keys = [(f"n{i}".encode(), 1, 1, None, False) for i in range(4)]
    for key in keys[:3]:
        store(cache, answer(), key)
    assert cache.lookup(keys[0]) is not None  # now most recently used
    store(cache, answer(), keys[3], dependent=True)
    assert len(cache) == 3
    assert cache.lookup(keys[1]) is None  # the least recently used went
    assert cache.flush_policy_dependent() == 1
    assert cache.lookup(keys[3]) is None and cache.lookup(keys[0]) is not None


def test_two_roles_never_share_a_policy_dependent_answer() -> None:
    pupil = Decision(
        Verdict.SAFE_SEARCH, "pupils-safe-search", "", "", Role.PUPIL, rewrite_to="forcesafesearch.google.com"
    )
    staff = Decision(Verdict.ALLOW, "default", "", "", Role.STAFF)
    other_staff = Decision(Verdict.ALLOW, "default", "", "", Role.AUTHORISED)
    assert decision_key(pupil) != decision_key(staff)
    assert decision_key(staff) == decision_key(other_staff)  # same decision, same upstream data
