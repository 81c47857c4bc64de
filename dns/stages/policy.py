"""Decide every query with the school's policy; answer blocked names with the block address.

Blocked A/AAAA queries get the block address (so the browser reaches the block page), other
types an empty answer. Either way an Extended DNS Error (RFC 8914) names the rule. The TTL is
short and never longer than the decision stays valid.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Protocol

from schoolgate.clock import Clock
from schoolgate.dns.chain import Result, Stage
from schoolgate.dns.wire import EDE_BLOCKED, EDE_FILTERED, NOERROR, TYPE_A, TYPE_AAAA, Query, reply, rr
from schoolgate.policy.engine import SUPPORT_RULE_ID
from schoolgate.policy.types import Client, Decision, Target, Verdict

BLOCK_TTL = 10
MAX_CEILING = 86_400


class PolicyView(Protocol):
    """The live policy as the resolver needs it (schoolgate.live.LivePolicy)."""

    @property
    def block_ipv4(self) -> str | None: ...

    @property
    def block_ipv6(self) -> str | None: ...

    def decide(self, client: Client, target: Target, now: datetime, *, named: bool = True) -> Decision:
        """`named=False`: the decision's `matched` may name another listed domain of the same
        kind (schoolgate.policy.engine.decide); only the fast path, which never reads it, asks so."""
        ...


def ede_for(decision: Decision) -> tuple[int, str]:
    """15 Blocked for hard blocks (circumvention, illegal content lists: nobody may pass);
    17 Filtered for blocks that depend on who is asking and when (role, time, ban)."""
    return (EDE_BLOCKED if decision.locked else EDE_FILTERED, decision.rule_id)


def ceiling_seconds(decision: Decision, now: datetime | float) -> int:
    """Seconds from `now` (a datetime, or POSIX seconds) until the decision may change."""
    until = decision.valid_until
    if until is None:
        return MAX_CEILING
    ts = now if isinstance(now, float) else now.timestamp()
    seconds = int(until.timestamp() - ts)
    return max(0, min(seconds, MAX_CEILING))


class PolicyStage(Stage):
    name = "policy"

    def __init__(self, policy: PolicyView, clock: Clock) -> None:
        super().__init__()
        self.policy = policy
        self.clock = clock
        self._packed: dict[str, bytes] = {}

    def resolve(self, query: Query) -> Result:
        now = self.clock.now()
        client = query.client
        if client is None:
            client = Client(ip=query.client_ip)
        decision = self.policy.decide(client, Target(query.qname), now)
        query.decision = decision
        query.now = now
        query.ts = ts = now.timestamp()
        query.ttl_ceiling = ceiling_seconds(decision, ts)
        if decision.verdict is not Verdict.BLOCK:
            return self.pass_on(query)
        return self.blocked(query, decision)

    def check_aliases(self, query: Query, names: tuple[str, ...]) -> bytes | None:
        """Block an allowed name whose answer leads, through CNAMEs, to a name blocked for this client.

        Without this a blocked site is one CNAME away: any name pointed at it would resolve.
        The cache stage calls it for every answer it serves that holds CNAME records. A support
        site (always open; only illegal content outranks it) is blocked here only by a locked
        block: its CDN's name may sit in a list for another site it serves.
        """
        client = query.client if query.client is not None else Client(ip=query.client_ip)
        now = query.now or self.clock.now()
        support = query.decision is not None and query.decision.rule_id == SUPPORT_RULE_ID
        for name in names:
            decision = self.policy.decide(client, Target(name), now)
            if decision.verdict is Verdict.BLOCK and (decision.locked or not support):
                query.ttl_ceiling = min(query.ttl_ceiling, ceiling_seconds(decision, now))
                return self.blocked(query, decision)
        return None

    def blocked(self, query: Query, decision: Decision) -> bytes:
        query.decision = decision
        query.answered_by = "policy"
        ttl = min(BLOCK_TTL, query.ttl_ceiling)
        address = self.block_address(query.qtype)
        if address is None:
            return reply(query, NOERROR, ede=ede_for(decision))
        return reply(query, NOERROR, rr(query.qtype, ttl, address), 1, ede=ede_for(decision))

    def block_address(self, qtype: int) -> bytes | None:
        """The packed block address a blocked query of this type is answered with, if any."""
        if qtype == TYPE_A:
            return self._address(self.policy.block_ipv4)
        if qtype == TYPE_AAAA:
            return self._address(self.policy.block_ipv6)
        return None

    def _address(self, text: str | None) -> bytes | None:
        if not text:
            return None
        packed = self._packed.get(text)
        if packed is None:
            packed = self._packed[text] = ipaddress.ip_address(text).packed
        return packed
