"""Serve answers from the cache; on a miss, fetch once (however many clients ask) and store.

The key is the question plus the identity of the policy decision (verdict, rule, rewrite) and
the DO bit, never the client: two clients whose decisions agree share an answer, two roles
whose decisions differ never do. TTLs are clamped to the query's `ttl_ceiling` (the seconds
until its decision may change) every time an answer is served, fresh or cached.

When every upstream fails, an expired answer is served with TTL 30 (RFC 8767) and an Extended
DNS Error "Stale Answer"; with nothing to serve, SERVFAIL comes back within the upstream budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable

from schoolgate.dns.cache import AnswerCache, CacheKey, Entry, render
from schoolgate.dns.chain import Answer, Result, Stage, settle
from schoolgate.dns.message import Message, MessageError
from schoolgate.dns.upstream import UpstreamFailure
from schoolgate.dns.wire import EDE_STALE, NOERROR, NXDOMAIN, Query, append_opt, servfail
from schoolgate.policy.types import Decision, Verdict

log = logging.getLogger(__name__)

EDE_NO_REACHABLE_AUTHORITY = 22
AliasCheck = Callable[[Query, tuple[str, ...]], bytes | None]
NEGATIVE_CAP = 3600


_DECISION_KEYS: dict[tuple[str, str, str | None], tuple[str, str, str | None]] = {}
_DECISION_KEYS_LIMIT = 4096


def decision_key(decision: Decision | None) -> Hashable:
    if decision is None:
        return None
    key = (decision.verdict.value, decision.rule_id, decision.rewrite_to)
    # One shared tuple per distinct key (there are few: one per rule and rewrite), not one
    # per cached answer.
    shared = _DECISION_KEYS.get(key)
    if shared is None:
        if len(_DECISION_KEYS) >= _DECISION_KEYS_LIMIT:
            _DECISION_KEYS.clear()
        shared = _DECISION_KEYS[key] = key
    return shared


def lifetime_of(message: Message) -> int:
    """How long an answer may be cached: the smallest TTL; RFC 2308 for negative answers."""
    rcode = message.rcode
    has_answer = any(r.section == 1 for r in message.records)
    if rcode == NXDOMAIN or (rcode == NOERROR and not has_answer):
        negative = message.negative_ttl()
        return min(negative, NEGATIVE_CAP) if negative is not None else 0
    if rcode != NOERROR:
        return 0
    ttls = [ttl for _, ttl in message.ttl_offsets()]
    return min(ttls) if ttls else 0


class CacheStage(Stage):
    name = "cache"

    def __init__(self, cache: AnswerCache, alias_check: AliasCheck | None = None) -> None:
        super().__init__()
        self.cache = cache
        self.alias_check = alias_check
        self._inflight: dict[CacheKey, asyncio.Future[Entry | None]] = {}
        self.upstream_failures = 0

    def key(self, query: Query) -> CacheKey:
        return (query.qname_wire, query.qtype, query.qclass, decision_key(query.decision), query.dnssec_ok)

    def resolve(self, query: Query) -> Result:
        key = self.key(query)
        entry = self.cache.lookup(key)
        if entry is not None:
            return self.serve(query, entry, self.cache.age(entry))
        return self._fetch(query, key)

    def serve(self, query: Query, entry: Entry, age: int, stale: bool = False) -> bytes:
        if entry.aliases and self.alias_check is not None:
            blocked = self.alias_check(query, entry.aliases)
            if blocked is not None:
                return blocked
        out = render(entry, query.ident, query.question, age, ceiling=query.ttl_ceiling, stale=stale)
        return bytes(append_opt(out, query, (EDE_STALE, "") if stale else None))

    async def _fetch(self, query: Query, key: CacheKey) -> Answer:
        waiting = self._inflight.get(key)
        if waiting is not None:
            entry = await asyncio.shield(waiting)
        else:
            future: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
            self._inflight[key] = future
            try:
                entry = await self._upstream(query, key)
                future.set_result(entry)
            except BaseException as err:
                future.set_exception(err)
                future.exception()  # mark retrieved: followers may not exist
                raise
            finally:
                del self._inflight[key]
        if entry is None:
            stale = self.cache.lookup_stale(key)
            if stale is not None:
                return self.serve(query, stale, 0, stale=True)
            return servfail(query, (EDE_NO_REACHABLE_AUTHORITY, ""))
        return self.serve(query, entry, 0)

    async def _upstream(self, query: Query, key: CacheKey) -> Entry | None:
        """The fresh answer as an entry (stored when cacheable), or None when upstream failed."""
        try:
            answer = await settle(self.pass_on(query))
        except UpstreamFailure as err:
            self.upstream_failures += 1
            log.debug("upstream failed for %s: %s", query.qname, err)
            return None
        if answer is None:
            return None
        try:
            message = Message(answer)
        except MessageError:
            return None
        ttls = message.ttl_offsets()
        lifetime = lifetime_of(message)
        dependent = query.decision is not None and query.decision.verdict is not Verdict.ALLOW
        try:
            aliases = tuple(name for name in message.answer_names() if name != query.qname)
        except ValueError:
            return None
        self.cache.store(key, answer, ttls, lifetime, policy_dependent=dependent, aliases=aliases)
        return Entry(answer, tuple(ttls), 0.0, float(lifetime), dependent, aliases)
