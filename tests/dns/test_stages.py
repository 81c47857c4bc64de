"""Each resolver stage on its own, with the real test policy and a stub for the rest of the chain."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from conftest import DATA

from schoolgate.dns.cache import AnswerCache
from schoolgate.dns.chain import Result, Stage, link, settle
from schoolgate.dns.stages.cache import CacheStage
from schoolgate.dns.stages.events import EventsStage, compact_event
from schoolgate.dns.stages.identify import IdentifyStage
from schoolgate.dns.stages.policy import PolicyStage
from schoolgate.dns.stages.safesearch import SafeSearchStage
from schoolgate.dns.stages.special import SpecialNamesStage
from schoolgate.dns.stages.watch import WatchedFeeder, WatchStage
from schoolgate.dns.upstream import UpstreamFailure
from schoolgate.dns.wire import Query, parse_query, type_name
from schoolgate.gateway.sets import MemoryWatchedSets
from schoolgate.policy import decide, load_policy
from schoolgate.policy.types import Client, Decision, Role, Target, Verdict
from schoolgate.store.events.record import EventRecord, from_ask, from_compact

POLICY = load_policy(DATA / "policy.toml")
TEN = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)


class FixedClock:
    def __init__(self, now: datetime) -> None:
        self.instant = now

    def now(self) -> datetime:
        return self.instant


class StaticPolicy:
    block_ipv4 = "10.99.0.1"
    block_ipv6 = "fd99::1"
    generation = 0

    def decide(self, client, target, now, *, named=True):
        return decide(POLICY, client, target, now, named=named)

    def role_for(self, client):
        return client.role or POLICY.role_for_ip(client.ip)


class Upstream(Stage):
    """Answers from a table, synchronously or later; counts what it was asked."""

    def __init__(self, records: dict[str, list[str]], later: bool = False, fail: bool = False) -> None:
        super().__init__()
        self.records = records
        self.later = later
        self.fail = fail
        self.asked: list[str] = []

    def resolve(self, query: Query) -> Result:
        self.asked.append(query.qname)
        if self.fail:

            async def failing():
                raise UpstreamFailure("down")

            return failing()
        message = dns.message.make_response(dns.message.from_wire(query.raw))
        for text in self.records.get(query.qname, []):
            rdtype, value = text.split(" ", 1)
            if dns.rdatatype.from_text(rdtype) != query.qtype:
                continue
            message.answer.append(dns.rrset.from_text(query.qname + ".", 300, "IN", rdtype, value))
        if not message.answer:
            message.set_rcode(dns.rcode.NXDOMAIN)
        message.use_edns(False)
        wire = message.to_wire()
        if not self.later:
            return wire

        async def later():
            await asyncio.sleep(0.01)
            return wire

        return later()


def query(name: str, rdtype: str = "A", ip: str = "127.0.0.1", edns: bool = True, role: Role | None = None) -> Query:
    q = parse_query(dns.message.make_query(name, rdtype, use_edns=0 if edns else False).to_wire())
    q.client_ip = ip
    q.client = Client(ip=ip, role=role)
    return q


def answer_of(result) -> dns.message.Message:
    wire = asyncio.run(settle(result)) if not isinstance(result, bytes | bytearray) else result
    return dns.message.from_wire(bytes(wire))


def test_identify_without_and_with_a_resolver() -> None:
    class Resolver:
        def resolve(self, ip, mac=None):
            return Client(ip=ip, device_id="ipad-3", role=Role.PUPIL)

    for resolver, device in ((None, None), (Resolver(), "ipad-3")):
        stage = IdentifyStage(resolver)
        tail = Upstream({"a.test": ["A 192.0.2.1"]})
        link([stage, tail])
        q = query("a.test")
        q.client = None
        stage.resolve(q)
        assert q.client is not None and q.client.device_id == device and q.client.ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "answers"),
    [
        ("use-application-dns.net", "A", "NXDOMAIN", []),
        ("USE-APPLICATION-DNS.NET", "AAAA", "NXDOMAIN", []),
        ("mask.icloud.com", "A", "NXDOMAIN", []),
        ("mask-h2.icloud.com", "HTTPS", "NXDOMAIN", []),
        ("resolver.arpa", "SVCB", "NOERROR", []),
        ("_dns.resolver.arpa", "SVCB", "NOERROR", []),
        ("schoolgate.lan", "A", "NOERROR", ["10.99.0.2"]),
        ("schoolgate.lan", "AAAA", "NOERROR", ["fd99::2"]),
        ("schoolgate.lan", "MX", "NOERROR", []),
    ],
)
def test_special_names(name: str, rdtype: str, rcode: str, answers: list[str]) -> None:
    stage = SpecialNamesStage(["schoolgate.lan"], "10.99.0.2", "fd99::2")
    tail = Upstream({})
    link([stage, tail])
    q = query(name, rdtype)
    message = answer_of(stage.resolve(q))
    assert dns.rcode.to_text(message.rcode()) == rcode
    assert [rd.address for rrset in message.answer for rd in rrset] == answers
    assert q.answered_by == "special" and q.special_rule.startswith("dns.special.")
    assert not tail.asked
    if name != "schoolgate.lan":
        assert message.authority and message.authority[0].rdtype == 6  # SOA for negative caching


def test_ordinary_names_pass_special_names() -> None:
    stage = SpecialNamesStage(["schoolgate.lan"], "10.99.0.2")
    tail = Upstream({"mask.icloud.com.evil.test": ["A 192.0.2.9"]})
    link([stage, tail])
    assert answer_of(stage.resolve(query("mask.icloud.com.evil.test"))).answer
    assert tail.asked == ["mask.icloud.com.evil.test"]


@pytest.mark.parametrize(
    ("name", "rdtype", "ip", "addresses", "ede_code", "ttl"),
    [
        ("www.facebook.com", "A", "127.0.0.1", ["10.99.0.1"], 17, 10),
        ("www.facebook.com", "AAAA", "127.0.0.1", ["fd99::1"], 17, 10),
        ("www.facebook.com", "TXT", "127.0.0.1", [], 17, None),
        ("dns.google", "A", "::1", ["10.99.0.1"], 15, 10),
        ("www.facebook.com", "A", "::1", ["192.0.2.21"], None, 300),
    ],
)
def test_policy_blocks_with_block_address_and_reason(name, rdtype, ip, addresses, ede_code, ttl) -> None:
    stage = PolicyStage(StaticPolicy(), FixedClock(TEN))
    tail = Upstream({"www.facebook.com": ["A 192.0.2.21"]})
    link([stage, tail])
    q = query(name, rdtype, ip)
    message = answer_of(stage.resolve(q))
    assert [rd.address for rrset in message.answer for rd in rrset] == addresses
    if ede_code:
        assert [(o.code, o.text) for o in message.options] == [(ede_code, q.decision.rule_id)]
        assert q.answered_by == "policy" and not tail.asked
    if ttl:
        assert message.answer[0].ttl == ttl


def test_block_ttl_never_outlives_the_decision() -> None:
    stage = PolicyStage(StaticPolicy(), FixedClock(datetime(2026, 11, 18, 11, 59, 56, tzinfo=UTC)))
    link([stage, Upstream({})])
    q = query("games.test")
    message = answer_of(stage.resolve(q))
    assert [rd.address for rd in message.answer[0]] == ["10.99.0.1"]
    assert message.answer[0].ttl == 4  # lunch (and games) starts at 12:00
    assert q.ttl_ceiling == 4


def test_safe_search_rewrites_every_type_with_the_target_resolved() -> None:
    policy = PolicyStage(StaticPolicy(), FixedClock(TEN))
    safe = SafeSearchStage()
    tail = Upstream(
        {"forcesafesearch.google.com": ["A 216.239.38.120"], "www.google.com": ["A 192.0.2.40"]}, later=True
    )
    link([policy, safe, tail])
    message = answer_of(policy.resolve(query("WWW.Google.com")))
    assert message.answer[0].rdtype == 5 and str(message.answer[0][0].target) == "forcesafesearch.google.com."
    assert [rd.address for rd in message.answer[1]] == ["216.239.38.120"]
    https = answer_of(policy.resolve(query("www.google.com", "HTTPS")))
    assert https.rcode() == 0 and [r.rdtype for r in https.answer] == [5]  # no hints to the real servers
    staff = answer_of(policy.resolve(query("www.google.com", ip="::1")))
    assert [rd.address for rd in staff.answer[0]] == ["192.0.2.40"]
    assert tail.asked == ["forcesafesearch.google.com", "forcesafesearch.google.com", "www.google.com"]


def test_cache_stage_fetches_once_for_many_and_serves_stale() -> None:
    async def go():
        cache = AnswerCache()
        stage = CacheStage(cache)
        tail = Upstream({"a.test": ["A 192.0.2.1"]}, later=True)
        link([stage, tail])
        queries = [query("a.test") for _ in range(5)]
        for q in queries:
            q.decision = decide(POLICY, q.client, __import__("schoolgate.policy").policy.Target("a.test"), TEN)
        results = await asyncio.gather(*(settle(stage.resolve(q)) for q in queries))
        assert tail.asked == ["a.test"]  # one upstream query for five clients
        for q, wire in zip(queries, results, strict=True):
            assert dns.message.from_wire(wire).id == q.ident
        hit = stage.resolve(queries[0])
        assert isinstance(hit, bytes)
        # Expire it and take the upstream away: the stale answer comes back with TTL 30 and EDE 3.
        entry = cache.lookup(stage.key(queries[0]))
        entry.lifetime = 0
        tail.fail = True
        stale = dns.message.from_wire(await settle(stage.resolve(queries[0])))
        assert stale.answer[0].ttl == 30 and [o.code for o in stale.options] == [3]
        unknown = query("b.test")
        unknown.decision = queries[0].decision
        failed = dns.message.from_wire(await settle(stage.resolve(unknown)))
        assert failed.rcode() == dns.rcode.SERVFAIL and [o.code for o in failed.options] == [22]

    asyncio.run(go())


def test_events_blocked_in_full_allowed_folded_special_named() -> None:
    class Sink:
        def __init__(self):
            self.records = []

        def submit(self, record):
            self.records.append(record)
            return True

    sink = Sink()
    events = EventsStage(sink, "dnstest", StaticPolicy().role_for)
    special = SpecialNamesStage([], "")
    policy = PolicyStage(StaticPolicy(), FixedClock(TEN))
    link([events, special, policy, Upstream({"a.test": ["A 192.0.2.1"]})])
    for _ in range(3):
        events.resolve(query("www.facebook.com"))
        events.resolve(query("a.test"))
    events.resolve(query("mask.icloud.com", ip="::1"))
    blocked = [r for r in sink.records if r.verdict == "block" and r.host == "www.facebook.com"]
    assert len(blocked) == 3 and all(r.row()["flags"] == "" for r in blocked)
    special_rows = [r for r in sink.records if r.host == "mask.icloud.com"]
    assert special_rows[0].role == "staff" and special_rows[0].rule_id == "dns.special.private-relay"
    assert not [r for r in sink.records if r.host == "a.test"]  # folded until the flush
    assert events.flush() == 1
    (allowed,) = [r for r in sink.records if r.host == "a.test"]
    assert allowed.count == 3 and allowed.verdict == "allow" and allowed.qtype == "A"
    row = allowed.row()
    assert row["ts"] == TEN and row["client_ip"] == "127.0.0.1" and row["role"] == "pupil"


def test_the_compact_event_is_the_record_from_decision_makes() -> None:
    """The events stage builds tuples instead of records: field for field the same event, its
    flags as the text the events table stores (made once per decision and client)."""
    decision = Decision(
        verdict=Verdict.BLOCK, rule_id="social-media", clause="Social Media Policy §9", reason="no",
        role=Role.PUPIL, service="facebook", category="social_media", flags=frozenset({"repeat", "circumvention"}),
    )
    client = Client(ip="10.0.0.7", mac="02:00:00:00:00:07", device_id="LAP-07", device_name="Laptop 7",
                    person_id="p42", person_name="Sam Pupil", role=Role.PUPIL, identity_source="radius")
    event = compact_event(decision, client, "www.facebook.com", 28, site="dnstest", ts=TEN.timestamp(), count=2)
    expected = EventRecord.from_decision(decision, client, Target("www.facebook.com"), site="dnstest", source="dns",
                                         ts=TEN, qtype="AAAA", count=2)
    assert from_compact(event) == replace(expected, flags="circumvention,repeat")
    assert from_compact(event).row() == expected.row() and from_compact(event).flag_set == expected.flag_set


def test_a_sink_that_takes_compact_events_gets_them_as_they_are() -> None:
    class CompactSink:
        def __init__(self):
            self.events = []

        def submit(self, record):
            raise AssertionError("records are for sinks without submit_compact")

        def submit_compact(self, event):
            self.events.append(event)
            return True

    sink = CompactSink()
    events = EventsStage(sink, "dnstest", StaticPolicy().role_for)
    link([events, SpecialNamesStage([], ""), PolicyStage(StaticPolicy(), FixedClock(TEN)),
          Upstream({"a.test": ["A 192.0.2.1"]})])
    events.resolve(query("www.facebook.com"))
    events.resolve(query("use-application-dns.net"))
    blocked, special = (from_compact(event) for event in sink.events)
    assert (blocked.host, blocked.verdict, blocked.ts) == ("www.facebook.com", "block", TEN)
    assert (special.host, special.flags, special.role) == ("use-application-dns.net", "special_name", "pupil")


def test_allowed_queries_handed_over_once_their_minute_is_over() -> None:
    """One record per client, name and minute, handed over in slices after the minute ends;
    a flood of distinct names is handed over early rather than held."""

    class Sink:
        def __init__(self):
            self.records = []

        def submit(self, record):
            self.records.append(record)
            return True

    sink = Sink()
    clock = FixedClock(TEN)
    events = EventsStage(sink, "dnstest", StaticPolicy().role_for, max_folded=8)
    link([events, PolicyStage(StaticPolicy(), clock), Upstream({f"n{i}.test": ["A 192.0.2.1"] for i in range(10)})])
    for name in ("n0.test", "n1.test", "n0.test", "n2.test"):
        events.resolve(query(name))
    assert events.flush_due(TEN.replace(second=59)) == 0  # the minute is not over
    assert events.held() == (3, 4)  # rows and queries a kill would lose now
    clock.instant = TEN.replace(minute=1)
    events.resolve(query("n0.test"))  # the next minute: a key of its own
    assert events.flush_due(clock.instant, limit=2) == 2  # a slice, oldest first
    assert events.held() == (2, 2)
    assert events.flush_due(clock.instant, limit=2) == 1
    assert events.flush_due(clock.instant) == 0
    assert events.held() == (1, 1)
    assert [(r.host, r.count, r.ts) for r in sink.records] == [
        ("n0.test", 2, TEN), ("n1.test", 1, TEN), ("n2.test", 1, TEN)]
    for i in range(10):  # more distinct keys than max_folded: the first 8 go out early
        events.resolve(query(f"n{i}.test"))
    assert len(sink.records) == 3 + 8
    assert events.flush() == 2 and len(sink.records) == 13
    assert events.held() == (0, 0)
    assert sum(r.count for r in sink.records if r.ts == clock.instant) == 11


def test_watch_feeds_service_addresses_only() -> None:
    sets = MemoryWatchedSets()
    feeder = WatchedFeeder(sets, 60)
    policy = PolicyStage(StaticPolicy(), FixedClock(TEN))
    watch = WatchStage(feeder)
    tail = Upstream({"video.test": ["A 192.0.2.60", "A 192.0.2.61"], "www.example.test": ["A 192.0.2.10"]}, later=True)
    link([policy, watch, tail])
    answer_of(policy.resolve(query("video.test")))
    answer_of(policy.resolve(query("www.example.test")))
    answer_of(policy.resolve(query("www.facebook.com")))  # blocked for pupils: the block address is not fed
    assert sets.snapshot() == {"192.0.2.60", "192.0.2.61"}


def test_watch_feeds_a_name_whose_verdict_depends_on_the_page() -> None:
    # A block for pages under a URL prefix: a device that trusts the school CA is let through
    # (decision.url_scoped), and the proxy must see its connections to judge each page.
    from schoolgate.policy.types import SiteBlock

    page = SiteBlock(id=1, domain=None, url_prefix="https://news.test/nasty", roles=frozenset())
    layered = POLICY.with_overlay(blocks=[page])

    class Overlaid(StaticPolicy):
        def decide(self, client, target, now, *, named=True):
            return decide(layered, client, target, now, named=named)

    sets = MemoryWatchedSets()
    policy = PolicyStage(Overlaid(), FixedClock(TEN))
    link([policy, WatchStage(WatchedFeeder(sets, 60)), Upstream({"news.test": ["A 192.0.2.80"]})])
    trusting = query("news.test")
    trusting.client = Client(ip="127.0.0.1", role=Role.PUPIL, trusts_school_ca=True)
    answer_of(policy.resolve(trusting))
    assert sets.snapshot() == {"192.0.2.80"}


@pytest.mark.parametrize("steered", [True, False])
def test_a_page_scoped_answer_waits_until_its_addresses_reach_the_proxy(steered: bool) -> None:
    from schoolgate.policy.types import SiteBlock

    class Sets(MemoryWatchedSets):
        def add(self, addresses, timeout_s):
            raise AssertionError("a page-scoped name is steered at once, not queued")

        def add_now(self, addresses, timeout_s):
            if not steered:
                raise OSError("nft: no such table")
            MemoryWatchedSets.add(self, addresses, timeout_s)

    layered = POLICY.with_overlay(
        blocks=[SiteBlock(id=1, domain=None, url_prefix="https://news.test/nasty", roles=frozenset())]
    )

    class Overlaid(StaticPolicy):
        def decide(self, client, target, now, *, named=True):
            return decide(layered, client, target, now, named=named)

    sets = Sets()
    policy = PolicyStage(Overlaid(), FixedClock(TEN))
    cache = CacheStage(AnswerCache())
    link([policy, WatchStage(WatchedFeeder(sets, 60)), cache, Upstream({"news.test": ["A 192.0.2.80"]})])
    for _ in range(2):  # upstream, then the cache: both wait for the steering
        trusting = query("news.test")
        trusting.client = Client(ip="127.0.0.1", role=Role.PUPIL, trusts_school_ca=True)
        answer = answer_of(policy.resolve(trusting))
        if steered:
            assert [rd.address for rd in answer.answer[0]] == ["192.0.2.80"]
            assert sets.contains("192.0.2.80")
        else:
            assert answer.rcode() == dns.rcode.SERVFAIL and not answer.answer  # never more open


def test_a_cname_to_a_blocked_name_is_blocked_for_that_client_only() -> None:
    class Chain(Stage):
        def resolve(self, query: Query) -> Result:
            message = dns.message.make_response(dns.message.from_wire(query.raw))
            message.answer.append(dns.rrset.from_text(query.qname + ".", 300, "IN", "CNAME", "cdn.facebook.com."))
            message.answer.append(dns.rrset.from_text("cdn.facebook.com.", 300, "IN", "A", "192.0.2.22"))
            message.use_edns(False)
            return message.to_wire()

    policy = PolicyStage(StaticPolicy(), FixedClock(TEN))
    cache = CacheStage(AnswerCache(), alias_check=policy.check_aliases)
    link([policy, cache, Chain()])
    pupil = query("innocent.example.test")
    blocked = answer_of(policy.resolve(pupil))
    assert [rd.address for rd in blocked.answer[0]] == ["10.99.0.1"]
    assert pupil.decision.rule_id == "pupils-social-media" and pupil.answered_by == "policy"
    staff = answer_of(policy.resolve(query("innocent.example.test", ip="::1")))  # a cache hit
    assert [rd.address for rrset in staff.answer if rrset.rdtype == 1 for rd in rrset] == ["192.0.2.22"]


@pytest.mark.parametrize(
    ("cdn_name", "blocked"),
    [
        ("cdn.facebook.com", False),  # a blocked service's CDN name: support stays open
        ("doh.example.test", True),  # a locked block (circumvention) still outranks support
    ],
)
def test_a_support_site_behind_a_blocked_cname_stays_open_unless_the_block_is_locked(
    cdn_name: str, blocked: bool
) -> None:
    class Chain(Stage):
        def resolve(self, query: Query) -> Result:
            message = dns.message.make_response(dns.message.from_wire(query.raw))
            message.answer.append(dns.rrset.from_text(query.qname + ".", 300, "IN", "CNAME", cdn_name + "."))
            message.answer.append(dns.rrset.from_text(cdn_name + ".", 300, "IN", "A", "192.0.2.22"))
            message.use_edns(False)
            return message.to_wire()

    policy = PolicyStage(StaticPolicy(), FixedClock(TEN))
    link([policy, CacheStage(AnswerCache(), alias_check=policy.check_aliases), Chain()])
    pupil = query("www.childline.org.uk")
    answer = answer_of(policy.resolve(pupil))
    addresses = [rd.address for rrset in answer.answer if rrset.rdtype == 1 for rd in rrset]
    assert addresses == (["10.99.0.1"] if blocked else ["192.0.2.22"]), pupil.decision


def test_a_block_found_after_upstream_answers_is_logged_as_a_block() -> None:
    class Sink:
        def __init__(self) -> None:
            self.records: list = []

        def submit(self, record):
            self.records.append(record)
            return True

    class LaterChain(Stage):
        def resolve(self, query: Query) -> Result:
            message = dns.message.make_response(dns.message.from_wire(query.raw))
            message.answer.append(dns.rrset.from_text(query.qname + ".", 300, "IN", "CNAME", "www.facebook.com."))
            message.use_edns(False)
            wire = message.to_wire()

            async def later():
                return wire
            return later()

    sink = Sink()
    events = EventsStage(sink, "dnstest")
    policy = PolicyStage(StaticPolicy(), FixedClock(TEN))
    link([events, policy, CacheStage(AnswerCache(), alias_check=policy.check_aliases), LaterChain()])
    message = answer_of(events.resolve(query("innocent.example.test")))
    assert [rd.address for rd in message.answer[0]] == ["10.99.0.1"]
    assert [(r.host, r.verdict, r.rule_id) for r in sink.records] == [
        ("innocent.example.test", "block", "pupils-social-media")]
    assert events.flush() == 0  # nothing was counted as allowed


def test_names_the_appliance_answers_itself_are_logged_on_the_daemons_clock() -> None:
    """The DoH canary and Private Relay's names never reach the policy stage, which stamps the
    query; their events must still carry the daemon's time (in the lab, the lab's clock), or the
    alert scan, which waits for events to settle, holds at the first of them."""

    class Sink:
        def __init__(self):
            self.records = []

        def submit(self, record):
            self.records.append(record)
            return True

    sink = Sink()
    events = EventsStage(sink, "dnstest", StaticPolicy().role_for, clock=FixedClock(TEN))
    link([events, SpecialNamesStage([], ""), PolicyStage(StaticPolicy(), FixedClock(TEN)),
          Upstream({"a.test": ["A 192.0.2.1"]})])
    for name in ("use-application-dns.net", "mask.icloud.com", "www.facebook.com"):
        events.resolve(query(name))
    assert [(r.host, r.ts) for r in sink.records] == [
        ("use-application-dns.net", TEN), ("mask.icloud.com", TEN), ("www.facebook.com", TEN)]


# -- a device's repeated asks of a blocked name, folded in the worker (EventsStage.fold_asks)

BLOCKED = Decision(verdict=Verdict.BLOCK, rule_id="list:ads", clause="Online Safety Policy (filtering)",
                   reason="listed", role=Role.PUPIL, category="adverts")
IPAD = Client(ip="10.41.20.15", mac="02:00:00:00:20:15", device_id="KW-IPAD-12", device_name="Class iPad 12",
              person_id="p7", person_name="Sam Pupil", role=Role.PUPIL, identity_source="dhcp")
T = TEN.timestamp()


class CompactSink:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def submit(self, record):
        raise AssertionError("a compact sink")

    def submit_compact(self, event) -> bool:
        self.events.append(event)
        return True


def folded_rows(asks: list[tuple], hold: int = 128) -> list[tuple]:
    """(seconds after T, host, qtype, count, device) of each event the stage hands over of `asks`:
    (seconds after T, name, type, and optionally the decision and client)."""
    sink = CompactSink()
    stage = EventsStage(sink, "dnstest")
    stage.fold_asks(hold)
    for at, name, qtype, *rest in asks:
        decision, client = (rest + [BLOCKED, IPAD][len(rest):])[:2]
        stage.record(decision, client, client.ip, name, qtype, ts=T + at)
    assert stage.flush_due(TEN) == 0 and stage.held() == (0, 0)
    return [(round(e[0] - T, 3), e[4], e[13], e[20], e[9]) for e in sink.events]


FOLDS = [
    pytest.param([(0, "ads.test", 1), (0.001, "ads.test", 28), (0.002, "ads.test", 65)],
                 [(0.0, "ads.test", "A,AAAA,HTTPS", 3, "KW-IPAD-12")], id="a phone's three types"),
    pytest.param([(0, "ads.test", 1), (0.3, "ads.test", 1), (0.4, "ads.test", 28)],
                 [(0.0, "ads.test", "A,AAAA", 3, "KW-IPAD-12")], id="a retry counts, its type named once"),
    pytest.param([(0.2, "ads.test", 28), (0.1, "ads.test", 1)],
                 [(0.1, "ads.test", "AAAA,A", 2, "KW-IPAD-12")], id="the earliest time, types as they came"),
    pytest.param([(0, "ads.test", 1), (1.01, "ads.test", 28)],
                 [(0.0, "ads.test", "A", 1, "KW-IPAD-12"), (1.01, "ads.test", "AAAA", 1, "KW-IPAD-12")],
                 id="another attempt a second later"),
    pytest.param([(0, "ads.test", 1), (0.1, "b.test", 1), (0.2, "ads.test", 28)],
                 [(0.0, "ads.test", "A,AAAA", 2, "KW-IPAD-12"), (0.1, "b.test", "A", 1, "KW-IPAD-12")],
                 id="another name between"),
    pytest.param([(0, "ads.test", 1), (0.1, "ads.test", 28, BLOCKED, Client(ip=IPAD.ip))],
                 [(0.0, "ads.test", "A", 1, "KW-IPAD-12"), (0.1, "ads.test", "AAAA", 1, None)],
                 id="the address changed hands"),
    pytest.param([(0, "ads.test", 1), (0.1, "ads.test", 28, replace(BLOCKED, rule_id="list:trackers"))],
                 [(0.0, "ads.test", "A", 1, "KW-IPAD-12"), (0.1, "ads.test", "AAAA", 1, "KW-IPAD-12")],
                 id="another decision (the policy reloaded)"),
    pytest.param([(0, "ads.test", 1), (0.1, "ads.test", 28, replace(BLOCKED), replace(IPAD))],
                 [(0.0, "ads.test", "A,AAAA", 2, "KW-IPAD-12")], id="an equal decision and client"),
    pytest.param([(0, "ads.test", 1), (0.001, "ads.test", 28), (0.002, "ads.test", 65), (0.003, "ads.test", 28),
                  (0.004, "ads.test", 1)],
                 [(0.0, "ads.test", "A,AAAA,HTTPS", 5, "KW-IPAD-12")], id="retries after three types, each named once"),
    pytest.param([(n * 0.001, "ads.test", (1, 28, 65, 16, 15)[n]) for n in range(5)],
                 [(0.0, "ads.test", "A,AAAA,HTTPS,TXT,MX", 5, "KW-IPAD-12")],
                 id="short types beyond the four that always fit, measured and kept"),
    pytest.param([(n * 0.001, "ads.test", 65280 + n) for n in range(6)],
                 [(0.0, "ads.test", "TYPE65280,TYPE65281,TYPE65282,TYPE65283", 4, "KW-IPAD-12"),
                  (0.004, "ads.test", "TYPE65284,TYPE65285", 2, "KW-IPAD-12")],
                 id="types beyond the column's width start a new event"),
]


@pytest.mark.parametrize(("asks", "expected"), FOLDS)
def test_a_devices_repeated_asks_are_handed_over_as_one_event(asks: list[tuple], expected: list[tuple]) -> None:
    assert folded_rows(asks) == expected


def test_folded_asks_are_the_event_the_writer_would_have_made() -> None:
    """The worker folds by the writer's rule (store.events.repeats): an attempt's event is the
    writer's row of its asks, field for field."""
    from schoolgate.store.events.repeats import fold_repeats

    names = [f"n{n % 5}.test" for n in range(40)]
    asks = [(n * 0.01, name, (1, 28, 65)[n % 3]) for n, name in enumerate(names)]
    sink = CompactSink()
    stage = EventsStage(sink, "dnstest")
    stage.fold_asks(128)
    unfolded = []
    for at, name, qtype in asks:
        stage.record(BLOCKED, IPAD, IPAD.ip, name, qtype, ts=T + at)
        unfolded.append(compact_event(BLOCKED, IPAD, name, qtype, site="dnstest", ts=T + at))
    stage.flush()
    by_writer, _ = fold_repeats(unfolded)
    assert sorted(sink.events) == sorted(by_writer)
    assert fold_repeats(sink.events) == (sink.events, 0)  # nothing left for the writer to fold


def test_attempts_are_held_until_the_tick_and_at_most_the_bound() -> None:
    sink = CompactSink()
    stage = EventsStage(sink, "dnstest")
    stage.fold_asks(3)
    for n, qtype in enumerate((1, 28, 65)):
        stage.record(BLOCKED, IPAD, IPAD.ip, "ads.test", qtype, ts=T + n * 0.001)
    stage.record(BLOCKED, IPAD, IPAD.ip, "b.test", 1, ts=T + 0.01)
    assert sink.events == [] and stage.held() == (2, 4)  # a kill now loses these, and says so
    stage.record(BLOCKED, IPAD, IPAD.ip, "c.test", 1, ts=T + 0.02)
    stage.record(BLOCKED, IPAD, IPAD.ip, "d.test", 1, ts=T + 0.03)  # a fourth attempt: the three go
    assert [(e[4], e[20]) for e in sink.events] == [("ads.test", 3), ("b.test", 1), ("c.test", 1)]
    assert stage.held() == (1, 1)
    stage.flush_due(TEN)  # the daemon's tick hands over every attempt
    assert [e[4] for e in sink.events][-1] == "d.test" and stage.held() == (0, 0)
    stage.record(BLOCKED, IPAD, IPAD.ip, "e.test", 1, ts=T + 0.04)
    stage.fold_asks(0)  # no longer folding: what it held goes, and each ask after at once
    stage.record(BLOCKED, IPAD, IPAD.ip, "e.test", 28, ts=T + 0.05)
    assert [(e[4], e[13]) for e in sink.events][-2:] == [("e.test", "A"), ("e.test", "AAAA")]
    assert stage.held() == (0, 0) and stage.logged == len(sink.events) == 6


class AskSink:
    """What the EventChannel takes: asks (record.Ask) and compact events."""

    def __init__(self) -> None:
        self.asks: list[tuple] = []
        self.compact: list[tuple] = []

    def submit(self, record):
        raise AssertionError("records are for sinks without submit_compact")

    def submit_compact(self, event) -> bool:
        self.compact.append(event)
        return True

    def submit_ask(self, ask) -> bool:
        self.asks.append(ask)
        return True


@pytest.mark.parametrize("hold", [0, 128])
def test_a_sink_that_takes_asks_gets_each_event_as_an_ask_with_shared_facts(hold: int) -> None:
    """Blocked events go over as asks whose facts, the same for every event of one decision
    for one client, are one tuple made once; each ask stands for the compact event the stage
    would have made."""
    sink = AskSink()
    stage = EventsStage(sink, "dnstest")
    stage.fold_asks(hold)
    other = replace(IPAD, ip="10.41.20.16", device_id="KW-IPAD-13")
    asked = [(IPAD, f"ads{n}.example", 1, T + n) for n in range(5)] + [(other, "ads9.example", 28, T + 9)]
    for client, name, qtype, ts in asked:
        stage.record(BLOCKED, client, client.ip, name, qtype, ts=ts)
    stage.hand_over_attempts()
    stage.record(BLOCKED, None, "10.41.20.99", "ads10.example", 65, ts=T + 10)  # an unknown client
    stage.hand_over_attempts()
    assert not sink.compact
    expected = [compact_event(BLOCKED, client, name, qtype, site="dnstest", ts=ts) for client, name, qtype, ts in asked]
    expected.append(compact_event(BLOCKED, Client(ip="10.41.20.99"), "ads10.example", 65, site="dnstest", ts=T + 10))
    assert [from_ask(ask) for ask in sink.asks] == expected
    facts = [ask[4] for ask in sink.asks]
    assert all(f is facts[0] for f in facts[:5]) and facts[5] is not facts[0] and facts[6] is not facts[0]


def test_the_texts_kept_for_folded_types_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The text of each list of types an attempt had ("A,AAAA,HTTPS") is kept for the next
    attempt with the same list, in a table that starts over when full: every event still names
    its own types, in the order asked."""
    import schoolgate.dns.stages.events as events_module

    monkeypatch.setattr(events_module, "TYPE_TEXTS_LIMIT", 4)
    sink = AskSink()
    stage = EventsStage(sink, "dnstest")
    stage.fold_asks(128)
    pairs = [(first, second) for first in (1, 28, 65, 16) for second in (1, 28, 65, 16) if first != second] * 2
    for n, (first, second) in enumerate(pairs):
        stage.record(BLOCKED, IPAD, IPAD.ip, f"ads{n}.example", first, ts=T + n)
        stage.record(BLOCKED, IPAD, IPAD.ip, f"ads{n}.example", second, ts=T + n + 0.001)
        stage.hand_over_attempts()
        assert len(stage._type_texts) <= 4
    assert [ask[2] for ask in sink.asks] == [f"{type_name(first)},{type_name(second)}" for first, second in pairs]
    assert [ask[3] for ask in sink.asks] == [2] * len(pairs)


def test_the_facts_kept_for_asks_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import schoolgate.dns.stages.events as events_module

    monkeypatch.setattr(events_module, "FACTS_LIMIT", 8)
    sink = AskSink()
    stage = EventsStage(sink, "dnstest")
    clients = [replace(IPAD, ip=f"10.41.21.{n}") for n in range(50)]
    for n, client in enumerate(clients):
        stage.record(BLOCKED, client, client.ip, "ads.example", 1, ts=T + n)
        assert len(stage._facts) <= 8
    assert [from_ask(ask)[3] for ask in sink.asks] == [client.ip for client in clients]

