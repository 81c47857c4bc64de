"""Where the resolver chain is put together, in one place and in one order.

    validate (wire.parse_query, in the listener) -> identify -> events -> special names
    -> policy -> watched services -> safe search -> cache -> HTTPS/SVCB filter -> upstream

and, beside it, the fast path (schoolgate.dns.fastpath) made of the same stages' parts: it
answers a blocked name or a cache hit in one call and hands every other query to the chain.

The events stage sits early so it sees every answer the later stages give; it reads what
they decided (query.decision, query.answered_by), which is always known before the answer is.
The watch stage sits after policy so cached and fresh answers alike refresh @watched.
"""

from __future__ import annotations

from dataclasses import dataclass

from schoolgate.clock import Clock
from schoolgate.dns.cache import AnswerCache
from schoolgate.dns.chain import Stage, link
from schoolgate.dns.fastpath import FastPath
from schoolgate.dns.stages.cache import CacheStage
from schoolgate.dns.stages.events import EventSink, EventsStage
from schoolgate.dns.stages.https import HttpsFilterStage
from schoolgate.dns.stages.identify import ClientResolver, IdentifyStage
from schoolgate.dns.stages.policy import PolicyStage, PolicyView
from schoolgate.dns.stages.safesearch import SafeSearchStage
from schoolgate.dns.stages.special import SpecialNamesStage
from schoolgate.dns.stages.upstream import UpstreamStage
from schoolgate.dns.stages.watch import WatchedFeeder, WatchStage
from schoolgate.dns.upstream import UpstreamPool


@dataclass
class Resolver:
    """The assembled chain and handles on the stages the daemon talks to."""

    head: Stage
    identify: IdentifyStage
    events: EventsStage
    special: SpecialNamesStage
    policy: PolicyStage
    watch: WatchStage
    cache: CacheStage
    upstream: UpstreamStage
    fast: FastPath

    def stages(self) -> list[Stage]:
        out = []
        stage: Stage | None = self.head
        while stage is not None:
            out.append(stage)
            stage = stage.next
        return out


def build_resolver(
    *,
    policy: PolicyView,
    clock: Clock,
    pool: UpstreamPool,
    cache: AnswerCache,
    sink: EventSink,
    site: str,
    feeder: WatchedFeeder,
    identities: ClientResolver | None = None,
    own_names: list[str] | None = None,
    own_ipv4: str = "",
    own_ipv6: str = "",
) -> Resolver:
    identify = IdentifyStage(identities)
    events = EventsStage(sink, site, getattr(policy, "role_for", None), clock=clock)
    special = SpecialNamesStage(own_names or [], own_ipv4, own_ipv6)
    policy_stage = PolicyStage(policy, clock)
    watch = WatchStage(feeder)
    safe_search = SafeSearchStage()
    cache_stage = CacheStage(cache, alias_check=policy_stage.check_aliases)
    https = HttpsFilterStage()
    upstream = UpstreamStage(pool)
    head = link([identify, events, special, policy_stage, watch, safe_search, cache_stage, https, upstream])
    fast = FastPath(identify=identify, events=events, special=special, policy=policy_stage, cache=cache)
    return Resolver(head, identify, events, special, policy_stage, watch, cache_stage, upstream, fast)
