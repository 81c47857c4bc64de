"""valid_until is a promise: the answer holds at every instant before it.

For random clients, hosts, instants and overlays, the decision at any instant in
[now, valid_until) must equal the decision at `now` (sampled, including just before
valid_until); where the decision changes, valid_until must not be later than the change.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schoolgate.policy import Ban, Client, ExceptionScope, PolicyException, Role, SiteBlock, Target, decide
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.types import Decision

START = datetime(2026, 8, 25, tzinfo=UTC)
END = datetime(2027, 8, 1, tzinfo=UTC)
# Instants that matter most: window edges and both clock changes.
HOT = [
    datetime(2026, 10, 24, 20, 0, tzinfo=UTC),
    datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    datetime(2027, 3, 27, 21, 30, tzinfo=UTC),
    datetime(2027, 3, 28, 0, 59, tzinfo=UTC),
    datetime(2026, 11, 23, 10, 29, 59, tzinfo=UTC),
    datetime(2026, 11, 23, 11, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 11, 2, 8, 44, tzinfo=UTC),
    datetime(2026, 12, 18, 15, 14, tzinfo=UTC),
]
HOSTS = [
    "facebook.com",
    "m.facebook.com",
    "www.instagram.com",
    "x.com",
    "example.org",
    "www.youtube.com",
    "www.google.co.uk",
    "www.bbc.co.uk",
    "dns.google",
    "doh.blahdns.com",
    "www.tiktok.com",
    "wiki.example",
]
IPS = ["10.41.20.15", "10.41.10.15", "10.41.30.15", "192.0.2.1", "fd41:0:0:30::5"]

instants = st.one_of(
    st.datetimes(min_value=START.replace(tzinfo=None), max_value=END.replace(tzinfo=None)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
    st.tuples(st.sampled_from(HOT), st.integers(-7200, 7200)).map(lambda p: p[0] + timedelta(seconds=p[1])),
)
clients = st.builds(
    Client,
    ip=st.sampled_from(IPS),
    role=st.one_of(st.none(), st.sampled_from(list(Role))),
    person_id=st.sampled_from([None, "P1", "P2"]),
    device_id=st.sampled_from([None, "D1"]),
    year_group=st.one_of(st.none(), st.integers(0, 6)),
    groups=st.sampled_from([frozenset(), frozenset({"6B"})]),
)


@st.composite
def overlays(draw: st.DrawFn) -> tuple[list[PolicyException], list[Ban], list[SiteBlock]]:
    exceptions = []
    for i in range(draw(st.integers(0, 3))):
        starts = draw(instants)
        exceptions.append(
            PolicyException(
                id=i + 1,
                scope=draw(st.sampled_from(list(ExceptionScope))),
                subject=draw(st.sampled_from(["P1", "D1", "pupil", "staff", "6B"])),
                domain=draw(st.sampled_from(["facebook.com", "x.com", "instagram.com", "wiki.example"])),
                url_prefix=None,
                starts=starts,
                expires=starts + timedelta(minutes=draw(st.integers(1, 60 * 24 * 3))),
            )
        )
    bans = []
    if draw(st.booleans()):
        starts = draw(instants)
        bans.append(
            Ban(id=1, device_id="D1", person_id=None, mac=None, starts=starts, until=starts + timedelta(days=2))
        )
    blocks = [SiteBlock(id=1, domain="wiki.example", url_prefix=None, roles=frozenset({Role.PUPIL}))]
    return exceptions, bans, blocks


def _same(a: Decision, b: Decision) -> bool:
    return (a.verdict, a.rule_id, a.rewrite_to, a.exception_id) == (b.verdict, b.rule_id, b.rewrite_to, b.exception_id)


def _check(policy: CompiledPolicy, client: Client, host: str, now: datetime, fractions: list[float]) -> None:
    first = decide(policy, client, Target(host), now)
    until = first.valid_until
    if until is None:
        probes = [now + timedelta(days=30) * f for f in fractions]
    else:
        assert until > now, (now, until)
        span = until - now
        probes = [now + span * f for f in fractions]
        probes += [until - timedelta(microseconds=1), until - timedelta(seconds=1)]
        probes = [p for p in probes if now <= p < until]
    for probe in probes:
        later = decide(policy, client, Target(host), probe)
        assert _same(first, later), (client, host, now, probe, first, later)
        if until is not None:
            # Any later decision in the interval must not promise beyond the first promise
            # unless its answer is the same (it is, by the assert above).
            assert later.valid_until is not None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    client=clients,
    host=st.sampled_from(HOSTS),
    now=instants,
    fractions=st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=6),
)
def test_static_verdict_holds_until_valid_until(
    example: CompiledPolicy, client: Client, host: str, now: datetime, fractions: list[float]
) -> None:
    _check(example, client, host, now, fractions)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    client=clients,
    host=st.sampled_from(HOSTS),
    now=instants,
    overlay=overlays(),
    fractions=st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=6),
)
def test_overlaid_verdict_holds_until_valid_until(
    example: CompiledPolicy,
    client: Client,
    host: str,
    now: datetime,
    overlay: tuple[list[PolicyException], list[Ban], list[SiteBlock]],
    fractions: list[float],
) -> None:
    exceptions, bans, blocks = overlay
    _check(example.with_overlay(exceptions, bans, blocks), client, host, now, fractions)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(client=clients, host=st.sampled_from(HOSTS), now=instants)
def test_valid_until_is_tight_for_window_edges(
    example: CompiledPolicy, client: Client, host: str, now: datetime
) -> None:
    """At valid_until, the answer may change; when it is a window edge of the static policy,
    walking the timeline shows some window relevant to the decision actually flips there."""
    first = decide(example, client, Target(host), now)
    if first.valid_until is None:
        return
    before = example.timeline.active((first.valid_until - timedelta(microseconds=1)).timestamp())
    at = example.timeline.active(first.valid_until.timestamp())
    assert before != at
