"""The fast path takes the chain's decision: one table of queries through both, byte for byte.

Two resolvers are built as a worker builds them (build_resolver), each over the same policy,
clock and upstream: one answers through the fast path first (as the worker's QueryHandler does),
the other through the chain alone. Every packet of the table goes to both, in the same order,
and must get the same answer bytes and leave the same events. Each case says whether the fast
path must have answered it, so the comparison cannot pass by the fast path declining everything.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import dns.flags
import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from conftest import DATA
from test_stages import POLICY, TEN, FixedClock, StaticPolicy

from schoolgate.dns import fastpath
from schoolgate.dns.cache import AnswerCache
from schoolgate.dns.chain import Result, Stage
from schoolgate.dns.resolver import Resolver, build_resolver
from schoolgate.dns.server import QueryHandler, UdpListener
from schoolgate.dns.stages.watch import WatchedFeeder
from schoolgate.dns.upstream import UpstreamPool
from schoolgate.dns.wire import Query
from schoolgate.gateway.sets import MemoryWatchedSets
from schoolgate.policy import decide, load_policy
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.types import Client, Decision, Role, Target, Verdict

PUPIL = "127.0.0.1"
STAFF = "::1"


class Upstream(Stage):
    """Every name has an A and an AAAA record (TTL 300); a few names answer otherwise. Both
    resolvers get the same bytes for a question (an rrset's order is not fixed otherwise)."""

    made: ClassVar[dict[tuple[str, int, bool], bytes]] = {}

    def resolve(self, query: Query) -> Result:
        key = (query.qname, query.qtype, query.dnssec_ok)
        if key not in self.made:
            self.made[key] = self._make(query)
        return query.raw[:2] + self.made[key][2:]

    @staticmethod
    def _make(query: Query) -> bytes:
        message = dns.message.make_response(dns.message.from_wire(query.raw))
        owner = query.qname + "."
        if query.qname == "alias.example.test":
            message.answer.append(dns.rrset.from_text(owner, 300, "IN", "CNAME", "www.facebook.com."))
            message.answer.append(dns.rrset.from_text("www.facebook.com.", 300, "IN", "A", "192.0.2.22"))
        elif query.qname == "big.example.test" and query.qtype == dns.rdatatype.A:
            addresses = [f"192.0.2.{i}" for i in range(1, 60)]
            message.answer.append(dns.rrset.from_text_list(owner, 300, "IN", "A", addresses))
        elif query.qtype == dns.rdatatype.A:
            message.answer.append(dns.rrset.from_text(owner, 300, "IN", "A", "192.0.2.7"))
        elif query.qtype == dns.rdatatype.AAAA:
            message.answer.append(dns.rrset.from_text(owner, 300, "IN", "AAAA", "2001:db8::7"))
        elif query.qtype == 99:  # SPF: an odd type, answered as text
            message.answer.append(dns.rrset.from_text(owner, 300, "IN", "SPF", '"v=spf1 -all"'))
        message.use_edns(False)
        return message.to_wire()


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def submit(self, record: object) -> bool:
        raise AssertionError("the events stage hands over compact events")

    def submit_compact(self, event: tuple[object, ...]) -> bool:
        self.events.append(event)
        return True


class Identities:
    """A device register of one: the pupil's iPad, with a person."""

    def resolve(self, ip: str, mac: str | None = None) -> Client:
        if ip == PUPIL:
            return Client(ip=ip, mac="02:00:00:00:00:01", device_id="ipad-7", device_name="iPad 7",
                          person_id="p-12", person_name="A Pupil", role=Role.PUPIL)
        return Client(ip=ip)


def unmoving() -> float:
    """Both resolvers' caches on one clock that stands still: an answer's age (so its TTLs)
    cannot differ between the two by the instants each happened to store and serve it."""
    return 1000.0


def resolver(
    policy: object | None = None, clock: FixedClock | None = None, identities: object | None = None
) -> tuple[Resolver, Sink]:
    sink = Sink()
    built = build_resolver(
        policy=policy or StaticPolicy(), clock=clock or FixedClock(TEN), pool=UpstreamPool(["127.0.0.1:9"]),  # type: ignore[arg-type]
        cache=AnswerCache(monotonic=unmoving), sink=sink, site="dnstest",
        feeder=WatchedFeeder(MemoryWatchedSets(), 600),
        identities=identities or Identities(),  # type: ignore[arg-type]
        own_names=["schoolgate.lan"], own_ipv4="10.0.0.1",
    )
    built.cache.next.next = Upstream()  # type: ignore[union-attr]
    return built, sink


def packet(name: str, rdtype: str | int = "A", *, edns: bool = True, do: bool = False, flags: int | None = None,
           ident: int = 0x1234) -> bytes:
    message = dns.message.make_query(name, rdtype, use_edns=0 if edns or do else False, want_dnssec=do)
    message.id = ident
    if flags is not None:
        message.flags = flags
    return message.to_wire()


def patched(wire: bytes, offset: int, value: bytes) -> bytes:
    return wire[:offset] + value + wire[offset + len(value):]


def raw(name_wire: bytes, qtype: int = 1, qclass: int = 1, *, counts: tuple[int, int, int, int] = (1, 0, 0, 0),
        flags: int = 0x0100, tail: bytes = b"") -> bytes:
    return struct.pack("!HHHHHH", 0x4321, flags, *counts) + name_wire + struct.pack("!HH", qtype, qclass) + tail


OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # root, OPT, 1232 bytes, version 0, no options
WWW_FACEBOOK = b"\x03www\x08facebook\x03com\x00"

# (what it is, client, packet, whether the fast path answers it). Allowed names are asked once
# before (the "warm" list) so that their second sight is a cache hit.
WARM = ["news.example.test", "big.example.test", "alias.example.test", "spf.example.test"]
CASES: list[tuple[str, str, bytes, bool]] = [
    ("blocked A, EDNS", PUPIL, packet("www.facebook.com"), True),
    ("blocked AAAA", PUPIL, packet("www.facebook.com", "AAAA"), True),
    ("blocked TXT: no data", PUPIL, packet("www.facebook.com", "TXT"), True),
    ("blocked, no EDNS", PUPIL, packet("www.facebook.com", edns=False), True),
    ("blocked, DO bit", PUPIL, packet("www.facebook.com", do=True), True),
    ("blocked, locked (circumvention) for staff", STAFF, packet("dns.google"), True),
    ("blocked, 0x20 letter case echoed", PUPIL, packet("WwW.FaCeBoOk.CoM"), True),
    ("blocked, an odd type (SPF)", PUPIL, packet("www.facebook.com", 99), True),
    ("blocked, TC and CD set in the query, RD clear", PUPIL,
     packet("www.facebook.com", flags=dns.flags.TC | dns.flags.CD), True),
    ("blocked, an OPT record with an option (cookie)", PUPIL,
     raw(WWW_FACEBOOK, counts=(1, 0, 0, 1), tail=b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c"
         + b"\x00\x0a\x00\x08" + b"\x01\x02\x03\x04\x05\x06\x07\x08"), True),
    ("cached A, EDNS", PUPIL, packet("news.example.test"), True),
    ("cached A, no EDNS: the same entry", PUPIL, packet("news.example.test", edns=False), True),
    ("cached AAAA: first sight", PUPIL, packet("news.example.test", "AAAA"), False),
    ("cached AAAA", PUPIL, packet("news.example.test", "AAAA"), True),
    ("cached, DO bit: a cache key of its own", PUPIL, packet("news.example.test", do=True), False),
    ("cached, DO bit", PUPIL, packet("news.example.test", do=True), True),
    ("cached, 0x20 letter case echoed", PUPIL, packet("NeWs.ExAmPlE.tEsT"), True),
    ("cached for staff: the same decision, the same entry", STAFF, packet("news.example.test"), True),
    ("cached, an odd type (SPF)", PUPIL, packet("spf.example.test", 99), True),
    ("cached, TC set in the query", PUPIL, packet("news.example.test", flags=dns.flags.TC | dns.flags.RD), True),
    ("cached, too big for 512 bytes without EDNS: TC", PUPIL, packet("big.example.test", edns=False), False),
    ("cached, big, with EDNS", PUPIL, packet("big.example.test"), True),
    ("cached, a CNAME to a blocked name", PUPIL, packet("alias.example.test"), False),
    ("a watched service allowed for staff", STAFF, packet("www.facebook.com"), False),
    ("safe search", PUPIL, packet("www.google.com"), False),
    ("special: DoH canary", PUPIL, packet("use-application-dns.net"), False),
    ("special: DoH canary in capitals", PUPIL, packet("USE-APPLICATION-DNS.NET"), False),
    ("special: resolver discovery", PUPIL, packet("_dns.resolver.arpa", "SVCB"), False),
    ("special: the appliance's name", PUPIL, packet("schoolgate.lan"), False),
    ("special: a dot inside a label", PUPIL, raw(b"\x0fmask.icloud.com\x00"), False),
    ("a name that is not ASCII", PUPIL, raw(b"\x04caf\xc9\x04test\x00"), False),
    ("ANY", PUPIL, packet("news.example.test", "ANY"), False),
    ("AXFR: refused", PUPIL, packet("news.example.test", "AXFR"), False),
    ("AXFR for a blocked name: refused", PUPIL, packet("www.facebook.com", "AXFR"), False),
    ("ANY for a blocked name", PUPIL, packet("www.facebook.com", "ANY"), False),
    ("MAILB for a blocked name: not implemented", PUPIL, packet("www.facebook.com", "MAILB"), False),
    ("a meta type (128) for a blocked name: not implemented", PUPIL, raw(WWW_FACEBOOK, qtype=128), False),
    ("class CH for a blocked name: refused", PUPIL, raw(WWW_FACEBOOK, qclass=3), False),
    ("type 0 for a blocked name: format error", PUPIL, raw(WWW_FACEBOOK, qtype=0), False),
    ("type 0: format error", PUPIL, raw(b"\x04news\x04test\x00", qtype=0), False),
    ("class CH: refused", PUPIL, raw(b"\x04news\x04test\x00", qclass=3), False),
    ("shorter than a header: dropped", PUPIL, b"\x12\x34\x01", False),
    ("a response: dropped", PUPIL, patched(packet("news.example.test"), 2, b"\x81\x00"), False),
    ("opcode NOTIFY: not implemented", PUPIL, patched(packet("news.example.test"), 2, b"\x20\x00"), False),
    ("two questions", PUPIL, raw(WWW_FACEBOOK, counts=(2, 0, 0, 0)), False),
    ("an answer record in a query", PUPIL, raw(WWW_FACEBOOK, counts=(1, 1, 0, 0)), False),
    ("a label running past the end", PUPIL, raw(b"\x03www\x20facebook")[:-4], False),
    ("a compression pointer in the question", PUPIL, raw(b"\x03www\xc0\x0c"), False),
    ("a name over 255 bytes", PUPIL, raw((b"\x3f" + b"a" * 63) * 4 + b"\x00"), False),
    ("EDNS version 1: BADVERS", PUPIL, raw(WWW_FACEBOOK, counts=(1, 0, 0, 1), tail=patched(OPT, 6, b"\x01")), False),
    ("two OPT records", PUPIL, raw(WWW_FACEBOOK, counts=(1, 0, 0, 2), tail=OPT + OPT), False),
    ("an OPT record not at the root", PUPIL, raw(WWW_FACEBOOK, counts=(1, 0, 0, 1), tail=b"\xc0\x0c" + OPT[1:]), False),
    ("an OPT record cut short", PUPIL, raw(WWW_FACEBOOK, counts=(1, 0, 0, 1), tail=OPT[:7]), False),
    ("a TSIG-like record instead of OPT", PUPIL,
     raw(WWW_FACEBOOK, counts=(1, 0, 0, 1), tail=b"\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x00"), False),
    ("bytes after the question", PUPIL, raw(WWW_FACEBOOK, tail=b"\xde\xad"), True),
    ("the root name", PUPIL, raw(b"\x00", qtype=2), False),
]


def answers(handler: QueryHandler, data: bytes, client_ip: str) -> bytes | None:
    result = handler.handle(data, client_ip, False)
    if result is not None and not isinstance(result, bytes | bytearray):
        result = asyncio.run(_settled(result))
    return None if result is None else bytes(result)


async def _settled(pending: object) -> bytes | None:
    return await pending  # type: ignore[misc, no-any-return]


def test_the_fast_path_answers_as_the_chain_does() -> None:
    fast_resolver, fast_sink = resolver()
    chain_resolver, chain_sink = resolver()
    fast = QueryHandler(fast_resolver.head, fast_resolver.fast.answer)
    chain = QueryHandler(chain_resolver.head)
    for name in WARM:
        for rdtype in ("A", 99):
            for handler in (fast, chain):
                answers(handler, packet(name, rdtype), PUPIL)
    for what, client_ip, data, expect_fast in CASES:
        before = fast_resolver.fast.answered
        got = answers(fast, data, client_ip)
        expected = answers(chain, data, client_ip)
        assert got == expected, what
        assert (fast_resolver.fast.answered > before) is expect_fast, what
        assert fast_sink.events == chain_sink.events, what
    fast_resolver.events.flush()
    chain_resolver.events.flush()
    assert fast_sink.events == chain_sink.events
    assert fast.counters == chain.counters
    assert fast_resolver.cache.cache.hits == chain_resolver.cache.cache.hits
    assert fast_resolver.cache.cache.misses == chain_resolver.cache.cache.misses


def test_every_blocked_query_answered_fast_leaves_its_event_with_the_dfe_fields() -> None:
    built, sink = resolver()
    handler = QueryHandler(built.head, built.fast.answer)
    answer = dns.message.from_wire(answers(handler, packet("www.facebook.com"), PUPIL) or b"")
    assert [rd.address for rrset in answer.answer for rd in rrset] == ["10.99.0.1"]
    assert built.fast.answered == 1
    (event,) = sink.events
    # record.COMPACT_FIELDS: time, site, source, IP, host, verdict, rule, role, MAC, device, person...
    assert event[0] == TEN.timestamp() and event[3] == PUPIL and event[4] == "www.facebook.com"
    assert event[5] == "block" and event[6] == "pupils-social-media"
    assert event[8:13] == ("02:00:00:00:00:01", "ipad-7", "iPad 7", "p-12", "A Pupil")


@pytest.mark.parametrize(("what", "client_ip", "data"), [case[:3] for case in CASES], ids=[case[0] for case in CASES])
def test_each_case_alone(what: str, client_ip: str, data: bytes) -> None:
    """The same comparison from cold caches: a case must not depend on the ones before it."""
    fast_resolver, fast_sink = resolver()
    chain_resolver, chain_sink = resolver()
    fast = QueryHandler(fast_resolver.head, fast_resolver.fast.answer)
    chain = QueryHandler(chain_resolver.head)
    for _ in range(2):  # the first sight fills the cache, the second may be a hit
        assert answers(fast, data, client_ip) == answers(chain, data, client_ip), what
    fast_resolver.events.flush()
    chain_resolver.events.flush()
    assert fast_sink.events == chain_sink.events, what


ENDS = datetime(2026, 11, 18, 12, 0, 20, tzinfo=UTC)


class ReloadablePolicy(StaticPolicy):
    """The test policy, or with Facebook open to pupils once `reload` is called."""

    def __init__(self) -> None:
        self.policy = POLICY
        self.generation = 0

    def reload(self, policy: CompiledPolicy) -> None:
        self.policy = policy
        self.generation += 1

    def decide(self, client: Client, target: Target, now: datetime, *, named: bool = True) -> Decision:
        if target.host == "timed.example.test" and now < ENDS:
            # A decision that ends inside a minute, as an exception or a ban can.
            return Decision(Verdict.BLOCK, "timed-ban", "Acceptable Use §2", "banned until 12:00:20", Role.PUPIL,
                            valid_until=ENDS)
        return decide(self.policy, client, target, now, named=named)


class MovingIdentities(Identities):
    def __init__(self) -> None:
        self.staff_ips: set[str] = set()

    def resolve(self, ip: str, mac: str | None = None) -> Client:
        if ip in self.staff_ips:
            return Client(ip=ip, device_id="laptop-1", role=Role.STAFF)
        return super().resolve(ip, mac)


def test_a_remembered_decision_ends_with_its_window_a_reload_or_a_new_client(tmp_path: Path) -> None:
    clock = FixedClock(datetime(2026, 11, 18, 11, 59, 30, tzinfo=UTC))  # a minute before lunch
    policy = ReloadablePolicy()
    identities = MovingIdentities()
    fast_resolver, fast_sink = resolver(policy, clock, identities)
    chain_resolver, chain_sink = resolver(policy, clock, identities)
    fast = QueryHandler(fast_resolver.head, fast_resolver.fast.answer)
    chain = QueryHandler(chain_resolver.head)

    def both(name: str, rdtype: str = "TXT") -> dns.message.Message:
        data = packet(name, rdtype)
        got = answers(fast, data, PUPIL)
        assert got == answers(chain, data, PUPIL), name
        assert fast_sink.events == chain_sink.events
        return dns.message.from_wire(got or b"")

    def blocked(message: dns.message.Message) -> bool:
        return any(option.code == 17 or option.code == 15 for option in message.options)

    for name in ("www.games.test", "www.facebook.com"):
        both(name)  # decided and remembered (games: a no-data block; facebook: blocked)
    assert blocked(both("www.games.test")) and fast_resolver.fast.answered == 3
    clock.instant = datetime(2026, 11, 18, 12, 0, 5, tzinfo=UTC)  # lunch: games open to pupils
    assert not blocked(both("www.games.test"))
    assert blocked(both("www.facebook.com"))
    text = (DATA / "policy.toml").read_text(encoding="utf-8")
    opened = tmp_path / "policy.toml"
    opened.write_text(text.replace('roles = ["pupil", "guest", "supervised"]', 'roles = ["guest", "supervised"]'),
                      encoding="utf-8")
    policy.reload(load_policy(opened))
    assert not blocked(both("www.facebook.com"))  # the reload opened it
    policy.reload(POLICY)
    assert blocked(both("www.facebook.com"))
    identities.staff_ips.add(PUPIL)  # the register now says this address is a staff laptop
    assert not blocked(both("www.facebook.com", "TXT"))
    identities.staff_ips.clear()
    assert blocked(both("www.facebook.com"))
    assert blocked(both("timed.example.test")) and blocked(both("timed.example.test"))
    clock.instant = datetime(2026, 11, 18, 12, 0, 25, tzinfo=UTC)  # the same minute, after valid_until
    assert not blocked(both("timed.example.test"))
    fast_resolver.events.flush()
    chain_resolver.events.flush()
    assert fast_sink.events == chain_sink.events


def test_the_udp_listener_answers_through_the_chain_when_the_fast_path_fails(caplog: pytest.LogCaptureFixture) -> None:
    built, _ = resolver()

    def broken(data: bytes, client_ip: str) -> bytes | None:
        raise RuntimeError("a bug in the fast path")

    handler = QueryHandler(built.head, broken)
    chain = QueryHandler(resolver()[0].head)
    expected = answers(chain, packet("www.facebook.com"), PUPIL)

    async def ask() -> bytes:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        listener = UdpListener(server, handler)
        listener.start()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((PUPIL, 0))
        client.setblocking(False)
        try:
            client.sendto(packet("www.facebook.com"), server.getsockname())
            return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 4096), 5)
        finally:
            listener.close()
            client.close()

    assert asyncio.run(ask()) == expected
    assert handler.counters.queries == 1 and handler.counters.internal_errors == 0
    assert "the fast path failed" in caplog.text


def test_remembered_decisions_hold_one_minute_of_pairs_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FixedClock(TEN)
    built, _ = resolver(ReloadablePolicy(), clock)
    handler = QueryHandler(built.head, built.fast.answer)
    for name in ("a.facebook.com", "b.facebook.com", "c.facebook.com"):
        answers(handler, packet(name), PUPIL)
    assert len(built.fast._decided) == 3
    clock.instant = datetime(2026, 11, 18, 10, 1, tzinfo=UTC)
    answers(handler, packet("d.facebook.com"), PUPIL)
    assert list(built.fast._decided) == [(PUPIL, b"\x01d\x08facebook\x03com\x00")]
    monkeypatch.setattr(fastpath, "DECIDED_LIMIT", 2)
    for name in ("e.facebook.com", "f.facebook.com", "g.facebook.com"):
        answers(handler, packet(name), PUPIL)
    assert len(built.fast._decided) <= 2
    assert built.fast.answered == 7


class MovingBlockAddress(ReloadablePolicy):
    """The test policy, whose block addresses a reload can move."""

    def __init__(self) -> None:
        super().__init__()
        self.block_ipv4 = "10.99.0.1"
        self.block_ipv6: str | None = "fd99::1"

    def move(self, ipv4: str, ipv6: str | None) -> None:
        self.block_ipv4, self.block_ipv6 = ipv4, ipv6
        self.generation += 1


def test_the_block_answer_follows_a_reload_that_moves_the_block_address() -> None:
    """The fast path remembers a blocked answer's record per policy generation: a policy that
    moves the block address (or drops the IPv6 one) is answered with at once, as the chain does."""
    clock = FixedClock(datetime(2026, 11, 18, 10, 0, tzinfo=UTC))
    policy = MovingBlockAddress()
    fast_resolver, fast_sink = resolver(policy, clock)
    chain_resolver, chain_sink = resolver(policy, clock)
    fast = QueryHandler(fast_resolver.head, fast_resolver.fast.answer)
    chain = QueryHandler(chain_resolver.head)

    def addresses(rdtype: str) -> list[str]:
        data = packet("www.facebook.com", rdtype)
        got = answers(fast, data, PUPIL)
        assert got == answers(chain, data, PUPIL), rdtype
        return [item.address for rrset in dns.message.from_wire(got or b"").answer for item in rrset]

    assert (addresses("A"), addresses("AAAA")) == (["10.99.0.1"], ["fd99::1"])
    answered = fast_resolver.fast.answered
    policy.move("10.98.0.7", None)
    assert (addresses("A"), addresses("AAAA")) == (["10.98.0.7"], [])
    assert fast_resolver.fast.answered == answered + 2  # the fast path's answers, not the chain's
    fast_resolver.events.flush()
    chain_resolver.events.flush()
    assert fast_sink.events == chain_sink.events


class CountingClock(FixedClock):
    def __init__(self, now: datetime) -> None:
        super().__init__(now)
        self.reads = 0

    def now(self) -> datetime:
        self.reads += 1
        return self.instant


class CountingIdentities(Identities):
    def __init__(self) -> None:
        self.asked: list[str] = []

    def resolve(self, ip: str, mac: str | None = None) -> Client:
        self.asked.append(ip)
        return super().resolve(ip, mac)


def test_one_wake_ups_queries_share_one_clock_reading_policy_and_identity_and_answer_as_the_chain_does() -> None:
    """The UDP listener takes the fast path per wake-up (FastPath.drain): every query of the
    table, a few to a wake-up, gets the chain's answer and event, while the clock and each
    client's identity are read once per wake-up."""
    clock = CountingClock(TEN)
    identities = CountingIdentities()
    fast_resolver, fast_sink = resolver(clock=clock, identities=identities)
    chain_resolver, chain_sink = resolver()
    chain = QueryHandler(chain_resolver.head)
    fast = QueryHandler(fast_resolver.head, fast_resolver.fast.answer, fast_resolver.fast.drain)
    assert fast.drain is not None
    for name in WARM:
        for rdtype in ("A", 99):
            for handler in (fast, chain):
                answers(handler, packet(name, rdtype), PUPIL)
    per_wake_up = 5
    for start in range(0, len(CASES), per_wake_up):
        clock.reads = 0
        identities.asked.clear()
        answer_fast = fast.drain()
        for what, client_ip, data, expect_fast in CASES[start:start + per_wake_up]:
            before = fast_resolver.fast.answered
            got = answer_fast(data, client_ip)
            if got is None:
                got = answers(fast, data, client_ip)  # declined: the chain answers, as the listener does
            assert got == answers(chain, data, client_ip), what
            assert (fast_resolver.fast.answered > before) is expect_fast, what
            assert fast_sink.events == chain_sink.events, what
    # A wake-up of queries the fast path answers: one clock reading, one identity per client.
    clock.reads = 0
    identities.asked.clear()
    answer_fast = fast.drain()
    for _what, client_ip, data, expect_fast in CASES * 2:
        if expect_fast:
            assert answer_fast(data, client_ip) is not None
    assert clock.reads == 1
    assert sorted(identities.asked) == sorted({case[1] for case in CASES if case[3]})


def test_a_reload_takes_effect_from_the_next_wake_up() -> None:
    clock = FixedClock(datetime(2026, 11, 18, 10, 0, tzinfo=UTC))
    policy = MovingBlockAddress()
    built, _ = resolver(policy, clock)
    data = packet("www.facebook.com")
    answer_fast = built.fast.drain()
    first = answer_fast(data, PUPIL)
    policy.move("10.99.0.2", None)
    assert answer_fast(data, PUPIL) == first  # the same wake-up: the policy it began with
    moved = dns.message.from_wire(built.fast.drain()(data, PUPIL) or b"")
    assert [rd.address for rrset in moved.answer for rd in rrset] == ["10.99.0.2"]
