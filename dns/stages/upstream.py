"""The end of the chain: ask the upstream resolvers (see schoolgate.dns.upstream.UpstreamPool)."""

from __future__ import annotations

from schoolgate.dns.chain import Result, Stage
from schoolgate.dns.upstream import UpstreamPool, question_wire
from schoolgate.dns.wire import Query


class UpstreamStage(Stage):
    name = "upstream"

    def __init__(self, pool: UpstreamPool) -> None:
        super().__init__()
        self.pool = pool

    def resolve(self, query: Query) -> Result:
        question = question_wire(query.qname_wire, query.qtype, query.qclass)
        return self.pool.resolve(question, query.flags, query.dnssec_ok)
