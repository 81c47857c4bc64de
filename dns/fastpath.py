"""The two commonest queries answered in one call: a blocked name, and an allowed name in the cache.

Walking the chain costs a call and a few attribute writes per stage, and a `Query` with twenty
fields, for answers that need the header, the one question, the client, the policy's decision
and (for an allowed name) the cached bytes. `FastPath.answer` reads just those from the packet
and answers with the stages' own parts: the identify stage's client resolver, the policy stage's
policy, clock and block addresses, the cache stage's cache, the events stage's logging. It takes
the chain's decision by construction, never a second rule set.

Anything else returns None, and the caller hands the packet to the chain, which parses it in
full and answers it as always: a packet the full parser would refuse or drop, a second or an
unusual additional record, a name the special-names stage answers, a name whose answer the
watch, safe-search or alias checks shape, a cache miss, an answer that would be truncated.
`tests/dns/test_fastpath.py` runs both on the same table of queries and compares the bytes and
the events.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from datetime import datetime
from functools import partial
from typing import Any

from schoolgate.dns._question import plain_query, reply
from schoolgate.dns.cache import AnswerCache
from schoolgate.dns.stages.cache import decision_key
from schoolgate.dns.stages.events import EventsStage
from schoolgate.dns.stages.identify import IdentifyStage
from schoolgate.dns.stages.policy import BLOCK_TTL, MAX_CEILING, PolicyStage, ede_for
from schoolgate.dns.stages.special import NODATA_ZONES, NXDOMAIN_NAMES, SpecialNamesStage
from schoolgate.dns.wire import (
    CD,
    CLASS_IN,
    EDNS_UDP_SIZE,
    HEADER,
    QR,
    QUESTION_PTR,
    RA,
    RD,
    RR_FIXED,
    TYPE_A,
    TYPE_AAAA,
    edns_opt,
    encode_name,
)
from schoolgate.policy.types import Client, Decision, Target, Verdict

_ECHOED = RD | CD
_OPT_CACHE_LIMIT = 1024
_NEVER = float("inf")
# Module globals: in Python 3.11 an enum member read through its class costs about 60 ns, and
# the fast path reads one or two per query.
_BLOCK = Verdict.BLOCK
_ALLOW = Verdict.ALLOW
_PLAIN_OPT_SIZE = len(edns_opt(False))  # our OPT record without an Extended DNS Error
# A Target for the question's name, made through its slots' setters: a dataclass's __init__
# costs twice as much, on the path of every name this worker has not seen this minute.
_new_target = object.__new__
_put_host = vars(Target)["host"].__set__
_put_url = vars(Target)["url"].__set__
# The reply header after the ID (flags and the four counts), per (flags, answer count, OPT or not).
_REPLY_HEADS = {
    (flags, answers, edns): HEADER.pack(0, flags, 1, answers, 0, 1 if edns else 0)[2:]
    for flags in (QR | RA, QR | RA | RD, QR | RA | CD, QR | RA | RD | CD)
    for answers in (0, 1)
    for edns in (False, True)
}
# (client IP, name) pairs whose decision is remembered within one minute; a full table starts
# over (a miss costs one policy decision). The table is emptied when a new minute's first
# decision is stored, so it holds one minute's pairs at most, not everything ever asked.
DECIDED_LIMIT = 8192


class Drain:
    """What the datagrams of one wake-up share: the policy clock's instant, the policy in force
    and its generation, and each client's identity.

    A wake-up drains at most a few dozen datagrams that arrived together, within a millisecond;
    reading the clock, the policy and the client once for them, rather than once per datagram,
    answers each as of the moment the batch was taken, as if they had arrived a fraction of a
    millisecond later or earlier. Decisions stand for whole minutes (the policy's windows change
    on whole minutes), and a reload or a new client takes effect from the next wake-up.
    """

    __slots__ = ("clients", "generation", "live", "minute", "now", "ts")

    def __init__(self, now: datetime, live: Any) -> None:
        self.now = now
        self.ts = now.timestamp()
        self.minute = self.ts // 60
        self.live = live
        self.generation: int | None = getattr(live, "generation", None)  # read before deciding
        self.clients: dict[str, Client] = {}


class FastPath:
    """Answers blocked names and cache hits straight from the packet; None means "use the chain"."""

    def __init__(
        self,
        *,
        identify: IdentifyStage,
        events: EventsStage,
        special: SpecialNamesStage,
        policy: PolicyStage,
        cache: AnswerCache,
    ) -> None:
        self.identify = identify
        self.events = events
        self.policy = policy
        self.cache = cache
        # The special-names stage answers these names (and resolver.arpa's subdomains) before
        # the policy is asked: their wire forms, lower-case, send a packet to the chain.
        self._special_names = frozenset(
            encode_name(name) for name in (*NXDOMAIN_NAMES, *special.own_names, *NODATA_ZONES)
        )
        self._special_suffixes = tuple(encode_name(zone) for zone in NODATA_ZONES)
        self._opts: dict[tuple[bool, tuple[int, str] | None], bytes] = {}
        # (client IP, wire name) -> (client, policy generation, UTC minute, when decided, valid
        # until, decision, its cache key, dotted name). A remembered decision stands while the
        # identify stage gives the same client, the policy in force is the same (a reload moves
        # its generation), the clock is in the same minute (the policy's windows change on
        # whole minutes: the engine caches its own decisions per minute too) and before the
        # decision's valid_until (exceptions and bans end when they end). Without a
        # generation to watch, nothing is remembered.
        self._decided: dict[tuple[str, bytes], tuple[Client, int, float, float, float, Decision, Hashable, str]] = {}
        self._decided_minute = -1.0
        # The blocked answer after the question (its record, or none, and the OPT record), per
        # (type, TTL, policy generation, rule and lock for the Extended DNS Error, EDNS, DO).
        self._block_tails: dict[tuple[int, int, int | None, bool, str, bool, bool], tuple[int, bytes]] = {}
        self.answered = 0

    def _opt(self, dnssec_ok: bool, ede: tuple[int, str] | None) -> bytes:
        key = (dnssec_ok, ede)
        opt = self._opts.get(key)
        if opt is None:
            if len(self._opts) >= _OPT_CACHE_LIMIT:
                self._opts.clear()
            opt = self._opts[key] = edns_opt(dnssec_ok, ede)
        return opt

    def drain(self) -> FastAnswer:
        """The fast path for the datagrams of one wake-up: one instant, one policy, one
        identity per client for all of them (see Drain)."""
        return partial(self.answer_in, Drain(self.policy.clock.now(), self.policy.policy))

    def answer(self, data: bytes, client_ip: str) -> bytes | None:
        """The answer to a UDP query, or None for the chain to answer it."""
        return self.answer_in(Drain(self.policy.clock.now(), self.policy.policy), data, client_ip)

    def answer_in(self, drain: Drain, data: bytes, client_ip: str) -> bytes | None:
        """The answer to a UDP query of a wake-up's `drain`, or None for the chain to answer it."""
        # The query, if it is a plain one, in one compiled pass (dns/_question.c): a QUERY
        # with one question, class IN, an ordinary type, no answer or authority records, at
        # most one OPT record (EDNS version 0, inside the packet), and a plain name (labels
        # only, ASCII, no dot inside a label: for those the wire form and the dotted name the
        # stages compare say the same thing), read as wire.parse_query reads it. Anything
        # else (TSIG, a bad EDNS version, a short record, a pointer) is the full parser's.
        query = plain_query(data, EDNS_UDP_SIZE)
        if query is None:
            return None
        ident, flags, question_end, name_wire, dotted, qtype, edns, dnssec_ok, max_size = query
        if name_wire in self._special_names or name_wire.endswith(self._special_suffixes):
            return None
        # identify -> policy, as the stages do it; the decision for this client and name is
        # remembered while nothing it depends on can have moved (see _decided).
        client = drain.clients.get(client_ip)
        if client is None:
            resolver = self.identify.resolver
            client = Client(ip=client_ip) if resolver is None else resolver.resolve(client_ip)
            drain.clients[client_ip] = client
        ts = drain.ts
        generation = drain.generation
        decided = self._decided.get((client_ip, name_wire))
        if (
            decided is not None
            and decided[1] == generation
            and decided[2] == drain.minute
            and decided[3] <= ts < decided[4]
            and (decided[0] is client or decided[0] == client)
        ):
            _, _, _, _, until, decision, dkey, qname = decided
        else:
            qname = dotted
            target: Target = _new_target(Target)
            _put_host(target, qname)
            _put_url(target, None)
            # Unnamed: nothing here reads `matched` (the answer, its EDE and the event leave it
            # out), and naming a copy for each new listed name costs about a microsecond.
            decision = drain.live.decide(client, target, drain.now, named=False)
            # The answer cache's key: only an allowed answer is read from the cache.
            dkey = None if decision.verdict is _BLOCK else decision_key(decision)
            until = decision.valid_until.timestamp() if decision.valid_until is not None else _NEVER
            if generation is not None:
                minute = drain.minute
                if minute != self._decided_minute or len(self._decided) >= DECIDED_LIMIT:
                    self._decided.clear()
                    self._decided_minute = minute
                self._decided[(client_ip, name_wire)] = (client, generation, minute, ts, until, decision, dkey, qname)
        # policy.ceiling_seconds, from the remembered instant
        ceiling = 0 if until <= ts else MAX_CEILING if until == _NEVER else min(int(until - ts), MAX_CEILING)
        policy = self.policy
        verdict = decision.verdict
        reply_flags = QR | (flags & _ECHOED) | RA
        answer: bytes
        if verdict is _BLOCK:
            # policy.blocked: the block address for A and AAAA, no data otherwise; the rule in
            # an Extended DNS Error when the client speaks EDNS. What follows the question is
            # remembered per policy generation (the policy in force says the block addresses).
            ttl = min(BLOCK_TTL, ceiling)
            tail_key = (qtype, ttl, generation, decision.locked, decision.rule_id, edns, dnssec_ok)
            known = self._block_tails.get(tail_key) if generation is not None else None
            if known is None:
                address = policy.block_address(qtype)
                record = b"" if address is None else (
                    QUESTION_PTR + RR_FIXED.pack(qtype, CLASS_IN, ttl, len(address)) + address
                )
                opt = self._opt(dnssec_ok, ede_for(decision)) if edns else b""
                known = (1 if record else 0, record + opt)
                if generation is not None:
                    if len(self._block_tails) >= _OPT_CACHE_LIMIT:
                        self._block_tails.clear()
                    self._block_tails[tail_key] = known
            answer = reply(data, question_end, _REPLY_HEADS[reply_flags, known[0], edns], known[1])
        elif verdict is _ALLOW:
            if (decision.service is not None or decision.url_scoped) and qtype in (TYPE_A, TYPE_AAAA):
                return None  # the watch stage feeds these answers' addresses to the gateway
            # The cached bytes with this client's ID, question and TTLs, and our OPT record
            # when the client spoke EDNS (the entry is stored without one).
            out = self.cache.render_fresh(
                (name_wire, qtype, CLASS_IN, dkey, dnssec_ok), ident, data[12:question_end], ceiling=ceiling,
                room=max_size - _PLAIN_OPT_SIZE if edns else max_size,
            )
            if out is None:
                return None  # upstream, the policy's check of CNAME targets, or TC=1: the chain's
            if edns:
                arcount = (out[10] << 8 | out[11]) + 1
                out[10] = arcount >> 8
                out[11] = arcount & 0xFF
                out += self._opt(dnssec_ok, None)
            answer = bytes(out)
        else:
            return None  # safe search: the chain rewrites the name
        if len(answer) > max_size:
            return None  # the chain answers TC=1
        self.events.record(decision, client, client_ip, qname, qtype, ts=ts)
        self.answered += 1
        return answer


FastAnswer = Callable[[bytes, str], bytes | None]
