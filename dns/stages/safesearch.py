"""Safe search: answer a search engine's name with a CNAME to its safe host, and that host's records.

The policy says which names and which host (decision.verdict SAFE_SEARCH, decision.rewrite_to:
Google -> forcesafesearch.google.com, Bing -> strict.bing.com, YouTube -> restrict.youtube.com,
DuckDuckGo -> safe.duckduckgo.com). The target is resolved through the rest of the chain (cache,
upstream) and its address records are copied behind the CNAME, so the client needs one query.
Every type is rewritten, HTTPS included: an HTTPS record's address hints would otherwise lead
the browser to the unrestricted servers.
"""

from __future__ import annotations

from schoolgate.dns.chain import Answer, Result, Stage, then
from schoolgate.dns.message import ANSWER, Message, MessageError
from schoolgate.dns.wire import (
    NOERROR,
    RR_FIXED,
    SERVFAIL,
    TYPE_CNAME,
    TYPE_OPT,
    Query,
    encode_name,
    read_name,
    reply,
    rr,
)
from schoolgate.policy.types import Verdict

# Record types whose data is a name that must be written out again (the target's answer used
# compression relative to its own message).
_NAME_RDATA = {TYPE_CNAME}


class SafeSearchStage(Stage):
    name = "safe-search"

    def resolve(self, query: Query) -> Result:
        decision = query.decision
        if decision is None or decision.verdict is not Verdict.SAFE_SEARCH or not decision.rewrite_to:
            return self.pass_on(query)
        target = decision.rewrite_to.lower().rstrip(".")
        if target == query.qname:
            return self.pass_on(query)
        try:
            sub = query.derive(target)
        except ValueError:
            return reply(query, SERVFAIL)
        return then(self.pass_on(sub), lambda answer: self._combine(query, target, answer))

    def _combine(self, query: Query, target: str, answer: Answer) -> Answer:
        if answer is None:
            return None
        ttl_cap = min(300, query.ttl_ceiling)
        records = [rr(TYPE_CNAME, ttl_cap, encode_name(target))]
        rcode = NOERROR
        try:
            message = Message(answer)
            rcode = message.rcode
            for record in message.records:
                if record.section != ANSWER or record.rtype == TYPE_OPT:
                    continue
                owner = encode_name(message.name_at(record.start))
                ttl = min(record.ttl, ttl_cap)
                if record.rtype in _NAME_RDATA:
                    rdata = encode_name(read_name(answer, record.rdata_offset)[0])
                else:
                    rdata = answer[record.rdata_offset : record.end]
                records.append(owner + RR_FIXED.pack(record.rtype, record.rclass, ttl, len(rdata)) + rdata)
        except (MessageError, ValueError):
            return reply(query, SERVFAIL)
        if rcode == SERVFAIL:
            return reply(query, SERVFAIL)
        if rcode != NOERROR:
            # The rewrite stands even if the safe host has no record of this type.
            records, rcode = records[:1], NOERROR
        return reply(query, rcode, b"".join(records), len(records))
