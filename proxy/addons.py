"""The proxy's mitmproxy addons: one concern each, added to the master in the order of `build_addons`.

    IdentifyClient   client_connected     who is this (IP -> MAC -> device -> person -> role)
    TlsGate          tls_clienthello      judge the SNI and the dialled address: pass, kill, intercept
    SearchTerms      request              note the search term of a visible search-engine request
    HttpGate         request              judge plain HTTP; answer blocked requests with the block page
    UpsetButton      request              the pupil block page's "this upset me": checked, thanked, flagged
    UpstreamGate     server_connect       refuse every server connection a verdict does not allow
    Rejudge          running (a task)     close passed-through connections whose verdict has expired
                                          and now blocks (the end of lunch ends the YouTube stream)
    EventLog         tls_clienthello, request, client_disconnected   one event per decision
    Counters         (observes all)       connections seen, passed through, killed, intercepted...
    Forget           client_disconnected  drop the per-connection state

The daemon adds them to mitmproxy behind one `Pipeline`, which offers each hook only to the
members that handle it and, in transparent mode, gives them a TLS connection's ClientHello
before mitmproxy stacks its TLS layers (see `Pipeline.next_layer`).

How a blocked TLS connection is killed without decryption: TlsGate marks it `ignore_connection`
(mitmproxy will not decrypt it) and UpstreamGate then refuses the server connection that the
passthrough would open (`server.error`); the client connection is closed. No byte reaches the
real server. With `connection_strategy = "lazy"` nothing is dialled before the ClientHello (TLS)
or the request (HTTP) has been judged; a server connection that no verdict allows (an unjudged
protocol, or eager dialling by mistake) is refused too: the gate fails closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from mitmproxy import connection, ctx, exceptions, http, tls
from mitmproxy.addons.next_layer import stack_match
from mitmproxy.net.http import url
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer, layers, server_hooks
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import modes

from schoolgate.policy.types import Client, Decision, Role, Target
from schoolgate.proxy import blockpage
from schoolgate.proxy.addresses import AddressBook
from schoolgate.proxy.allowed import is_plain_allow
from schoolgate.proxy.catrust import CaTrustObserver
from schoolgate.proxy.hello import FastClientHello, parse_client_hello
from schoolgate.proxy.judge import (
    FLAG_FRONTING,
    FLAG_NO_SNI,
    NO_SNI_CLAUSE,
    Action,
    Decide,
    Judgement,
    OperatorOf,
    judge_http,
    judge_tls,
    normalise_name,
    own_operator,
)
from schoolgate.proxy.search import search_term
from schoolgate.proxy.upset import UPSET_PATH, UpsetNote, UpsetSigner
from schoolgate.store.events import EventRecord
from schoolgate.store.events.record import Ask, decision_facts

log = logging.getLogger(__name__)

META_JUDGEMENT = "schoolgate.judgement"
META_SEARCH = "schoolgate.search_term"
META_BLOCK_PAGE = "schoolgate.block_page"
META_UPSET = "schoolgate.upset"  # an UpsetNote: the pupil said the blocked page upset them
FLAG_UPSET = "upset"  # on the event of that post: what the DSL's case is raised from
MAX_UPSET_BODY = 8192
UPSET_LIMIT = 5  # "this upset me" posts logged per address ...
UPSET_WINDOW_S = 600.0  # ... per this many seconds (the DSL's case folds repeats anyway)
REFUSED = "refused by the school's filtering policy"
OptionsError: type[Exception] = exceptions.OptionsError  # mitmproxy's class is untyped


@dataclass(slots=True)
class ConnState:
    """What the proxy knows about one client connection."""

    client: Client
    judgement: Judgement | None = None
    requests_logged: int = 0
    sni: str | None = None
    dialled_ip: str | None = None
    dialled_name: str | None = None  # regular mode: the CONNECT target, where mitmproxy connects
    passthrough: bool = False  # TLS forwarded undecrypted: no later request will be judged


class Connections:
    """Per-connection state shared by the addons, keyed by mitmproxy's client connection id."""

    def __init__(self) -> None:
        self._states: dict[str, ConnState] = {}

    def put(self, conn_id: str, state: ConnState) -> None:
        self._states[conn_id] = state

    def get(self, conn_id: str) -> ConnState | None:
        return self._states.get(conn_id)

    def pop(self, conn_id: str) -> ConnState | None:
        return self._states.pop(conn_id, None)

    def __len__(self) -> int:
        return len(self._states)

    def items(self) -> list[tuple[str, ConnState]]:
        return list(self._states.items())


@dataclass
class ProxyCounters:
    """Counters the e2e tests read to prove ordinary traffic never reaches the proxy."""

    connections_seen: int = 0
    tls_seen: int = 0
    passed_through: int = 0
    killed: int = 0
    intercepted: int = 0
    inspected: int = 0
    http_requests: int = 0
    http_forwarded: int = 0
    block_pages_served: int = 0
    upstream_refused: int = 0
    fronting_blocked: int = 0
    no_sni_blocked: int = 0
    passthroughs_closed: int = 0
    identity_errors: int = 0
    judge_errors: int = 0
    upset_reports: int = 0  # "this upset me" posts logged for the DSL
    upset_refused: int = 0  # ... refused: no genuine token for this device and site
    upset_limited: int = 0  # ... thanked but not logged again (over UPSET_LIMIT)
    events_submitted: int = 0
    events_refused: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def _wall_clock() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)


@dataclass
class Services:
    """What the addons need from the daemon; tests pass their own."""

    decide: Decide
    identify: Callable[[str], Client]
    book: AddressBook
    now: Callable[[], datetime]
    site: str
    submit_full: Callable[[EventRecord], bool]  # blocked, flagged and search events, one row each
    submit_allowed: Callable[[EventRecord], bool]  # plain allowed traffic (aggregated per minute)
    # `submit_full`'s sink for an event as an ask (record.Ask: its time, name, type and count,
    # and the facts of its decision and client), or None: records. An ask costs a tuple where a
    # record cost several microseconds, and repeats share their facts tuple on the way to the
    # writer. With it, the front door also kills a repeat of a connection it killed this minute
    # from memory (schoolgate.proxy.door_verdicts).
    submit_ask: Callable[[Ask], bool] | None = None
    # A passed-through connection's plain allowed decision, counted per client, name and minute
    # without a record of its own (schoolgate.proxy.allowed.AllowedPasses.add, which hands its
    # minutes to `submit_allowed`); None: a record each, to `submit_allowed`.
    fold_allowed: Callable[[Decision, Client, str, datetime], None] | None = None
    inspect: Callable[[str], bool] | None = None
    close: Callable[[str], bool] | None = None  # close a client connection by id (the daemon's)
    explain: Callable[[Decision, datetime], str] | None = None  # plain words for the block page
    policy_version: Callable[[], object] | None = None  # changes when the policy or overlay does
    # A recent answer of `identify` that the event loop may use without a thread hop, or None.
    identify_cached: Callable[[str], Client | None] | None = None
    # The lookup of an address off the loop, shared by every connection from it that arrives
    # while it is under way (RecentClients.lookup); None: each connection asks `identify` in a
    # thread of its own.
    identify_shared: Callable[[str], asyncio.Future[Client]] | None = None
    # A category id -> (display name, published rationale), for the block page; None: not known.
    category: Callable[[str], tuple[str, str] | None] | None = None
    # Signs the pupil page's "this upset me" button; None: the page has no button.
    upset: UpsetSigner | None = None
    # A catalogue service -> who runs it, for the fronting check (judge.decide_name).
    operator_of: OperatorOf = own_operator
    # What the proxy's own refusals (a connection hiding its site) cite: the school's policy's
    # `[dynamic] circumvention_clause`; None: the judge's "not in the school's policy" wording.
    refusal_clause: Callable[[], str] | None = None
    # The school's time zone (the policy's `[school] timezone`), for times on the block page.
    zone: Callable[[], tzinfo] = lambda: UTC
    connections: Connections = field(default_factory=Connections)
    counters: ProxyCounters = field(default_factory=ProxyCounters)
    # What the proxy learns about each device's trust in the school CA (the coverage page).
    ca_trust: CaTrustObserver = field(default_factory=lambda: CaTrustObserver(_wall_clock))


def _refusal_clause(services: Services) -> str:
    return services.refusal_clause() if services.refusal_clause is not None else NO_SNI_CLAUSE


def _ip_of(address: Any) -> str | None:
    """The IP literal of a (host, port) address, or None if it is a name or missing."""
    if not address:
        return None
    return _canonical_ip(str(address[0]))


@functools.lru_cache(maxsize=4096)
def _canonical_ip(host: str) -> str | None:
    # Cached: parsing an address is a noticeable part of a connection's cost in Python, and
    # a school's clients and the addresses they dial repeat all day. Bounded, so a flood
    # of distinct addresses only evicts.
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _name_of(address: Any) -> str | None:
    """The host name of a (host, port) address when it is a name (regular mode), else None."""
    if not address or not address[0] or _ip_of(address) is not None:
        return None
    return str(address[0])


def _request_names(request: http.Request) -> list[str]:
    """Every name the request gives for its site, `pretty_host` first.

    They need not agree: an HTTP/1 request line in absolute form names a site that the
    server must prefer to the Host header (RFC 9112 §3.2.2), and an HTTP/2 request may carry
    a Host header besides its :authority, which a server behind an HTTP/1 hop would read.
    Each is judged; if any is blocked, the request is."""
    names = [request.pretty_host]
    for authority in (request.headers.get("Host"), request.authority):
        if authority:
            host, _port = url.parse_authority(authority, check=False)
            names.append(host)
    seen: dict[str, None] = {}
    for name in names:
        key = normalise_name(name)
        if key or not seen:
            seen.setdefault(key, None)
    return list(seen)


def _state(services: Services, client: connection.Client) -> ConnState:
    state = services.connections.get(client.id)
    if state is None:  # a hook before client_connected (should not happen): identify now
        state = ConnState(client=_identify(services, client))
        services.connections.put(client.id, state)
    return state


def _identify(services: Services, client: connection.Client) -> Client:
    ip = _ip_of(client.peername) or "0.0.0.0"
    try:
        return services.identify(ip)
    except Exception:
        return _unidentified(services, ip)


def _unidentified(services: Services, ip: str) -> Client:
    """The client when identifying `ip` failed (called in the handler of that error). The
    register being unreadable must not open the filter: an unknown device gets the strictest
    role of its network from the policy."""
    services.counters.identity_errors += 1
    log.exception("identifying %s failed; treating it as an unknown device", ip)
    return Client(ip=ip)


class IdentifyClient:
    def __init__(self, services: Services) -> None:
        self.s = services

    def client_connected(self, client: connection.Client) -> Awaitable[None] | None:
        """Identified at once from a recent answer; otherwise the lookup to await."""
        cached = self.s.identify_cached
        identified = cached(_ip_of(client.peername) or "0.0.0.0") if cached is not None else None
        if identified is None:
            return self._look_up(client)
        self.s.connections.put(client.id, ConnState(client=identified))
        return None

    async def _look_up(self, client: connection.Client) -> None:
        # Off the loop: the neighbour table is read over netlink, which must neither block the
        # proxy's loop nor run inside it.
        shared = self.s.identify_shared
        if shared is None:
            identified = await asyncio.to_thread(_identify, self.s, client)
        else:
            ip = _ip_of(client.peername) or "0.0.0.0"
            try:
                identified = await asyncio.shield(shared(ip))
            except Exception:
                identified = _unidentified(self.s, ip)
        self.s.connections.put(client.id, ConnState(client=identified))


def judge_hello(
    services: Services, client: Client, sni: str | None, address: Any, now: datetime | None = None
) -> Judgement:
    """The judgement of a TLS ClientHello naming `sni`, sent by `client` to `address` (where
    mitmproxy will connect: the original destination, or regular mode's CONNECT target) at
    `now` (None: the services' clock now): the one judge (judge_tls) as TlsGate asks it, and
    as the front door asks it (schoolgate.proxy.door_verdicts, with its wake-up's instant)."""
    dialled_ip = _ip_of(address)
    return judge_tls(
        services.decide,
        client,
        sni,
        dialled_ip=dialled_ip,
        dialled_name=_name_of(address) if dialled_ip is None else None,
        book=services.book,
        operator_of=services.operator_of,
        now=services.now() if now is None else now,
        inspect=services.inspect,
        refusal_clause=_refusal_clause(services),
    )


class TlsGate:
    def __init__(self, services: Services) -> None:
        self.s = services

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        state = _state(self.s, data.context.client)
        state.sni = data.client_hello.sni
        address = data.context.server.address
        state.dialled_ip = _ip_of(address)
        state.dialled_name = _name_of(address) if state.dialled_ip is None else None
        try:
            judgement = judge_hello(self.s, state.client, state.sni, address)
        except Exception:
            # No verdict: never decrypt, and UpstreamGate refuses the unjudged connection.
            log.exception("judging the TLS connection to %r failed; closing it", state.sni)
            self.s.counters.judge_errors += 1
            data.ignore_connection = True
            return
        state.judgement = judgement
        state.passthrough = judgement.action is Action.PASS
        # PASS: forward the encrypted bytes untouched. KILL: also never decrypt; UpstreamGate
        # refuses the server connection, which closes the client's.
        if judgement.action in (Action.PASS, Action.KILL):
            data.ignore_connection = True


class SearchTerms:
    def request(self, flow: http.HTTPFlow) -> None:
        term = search_term(flow.request.pretty_host, flow.request.pretty_url)
        if term:
            flow.metadata[META_SEARCH] = term


class HttpGate:
    def __init__(self, services: Services) -> None:
        self.s = services

    def load(self, loader: Any) -> None:
        loader.add_option("schoolgate_school_name", str, "Our School", "The school's name on the block page.")
        loader.add_option(
            "schoolgate_console_url",
            str,
            "https://schoolgate.lan:8443",
            "The console's base URL; the block page links to <url>/request?url=...&device=...",
        )

    def configure(self, updated: set[str]) -> None:
        if "schoolgate_console_url" in updated:
            parts = urlsplit(ctx.options.schoolgate_console_url)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                raise OptionsError(
                    f"schoolgate_console_url: {ctx.options.schoolgate_console_url!r} is not a base URL "
                    "like https://schoolgate.lan:8443"
                )
        if "schoolgate_school_name" in updated and not ctx.options.schoolgate_school_name.strip():
            raise OptionsError("schoolgate_school_name: the block page needs the school's name")

    def request(self, flow: http.HTTPFlow) -> None:
        try:
            self._judge(flow)
        except Exception:
            log.exception("judging %s failed; refusing it", flow.request.pretty_url)
            self.s.counters.judge_errors += 1
            self._refuse(flow)

    def _refuse(self, flow: http.HTTPFlow) -> None:
        body = "The school's filter could not check this request, so it was refused. Please try again."
        headers = {**blockpage.HEADERS, "Content-Type": "text/plain; charset=utf-8"}
        flow.response = http.Response.make(503, body.encode("utf-8"), headers)
        flow.metadata.pop(META_JUDGEMENT, None)

    def _judge(self, flow: http.HTTPFlow) -> None:
        state = _state(self.s, flow.client_conn)
        judged = state.judgement
        if flow.client_conn.tls and (judged is None or judged.action not in (Action.BLOCK_PAGE, Action.INSPECT)):
            self._refuse(flow)  # decrypted without a verdict that allows it: cannot happen, fail closed
            return
        if flow.client_conn.tls and judged is not None and judged.action is Action.BLOCK_PAGE:
            # Decrypted to show the block page: every request on it shares the ClientHello's
            # verdict, with the URL now visible.
            judgement = Judgement(
                judged.decision,
                Target(host=judged.target.host, url=flow.request.pretty_url),
                judged.action,
                judged.fronted_host,
            )
        else:
            # Plain HTTP, or an inspected search engine: each request is judged on its own Host
            # (inside an allowed TLS connection the Host may name a blocked site). mitmproxy
            # connects to `request.host`: the original address in transparent mode, but in
            # regular mode the absolute-form URL's or CONNECT's name, which the Host header
            # need not match; that name is judged too.
            destination = (flow.request.host, flow.request.port)
            now = self.s.now()
            judgements = (
                judge_http(
                    self.s.decide,
                    state.client,
                    Target(host=name, url=flow.request.pretty_url),
                    dialled_ip=_ip_of(destination) or _ip_of(flow.server_conn.address),
                    dialled_name=_name_of(destination),
                    book=self.s.book,
                    operator_of=self.s.operator_of,
                    now=now,
                    refusal_clause=_refusal_clause(self.s),
                )
                for name in _request_names(flow.request)
            )
            first = next(judgements)
            judgement = next((j for j in judgements if j.blocked), first) if not first.blocked else first
            if flow.client_conn.tls and not judgement.blocked:
                judgement = Judgement(judgement.decision, judgement.target, Action.INSPECT, None)
            else:
                state.judgement = judgement
        flow.metadata[META_JUDGEMENT] = judgement
        if judgement.action is Action.BLOCK_PAGE:
            self._answer(flow, state.client, judgement)

    def _answer(self, flow: http.HTTPFlow, client: Client, judgement: Judgement) -> None:
        decision = judgement.decision
        now = self.s.now()
        pupil = is_pupil(client, decision)
        category = self._category(decision)
        token = None
        if pupil and self.s.upset is not None:
            token = self.s.upset.issue(
                UpsetNote(client.ip, judgement.target.host, judgement.target.url, decision.rule_id, now)
            )
        info = blockpage.BlockInfo(
            school=ctx.options.schoolgate_school_name,
            host=judgement.target.host,
            url=judgement.target.url,
            rule_id=decision.rule_id,
            clause=decision.clause,
            reason=decision.reason,
            at=now,
            device=client.device_id,
            device_name=client.device_name,
            service_name=decision.service_name,
            circumvention=FLAG_FRONTING in decision.flags or FLAG_NO_SNI in decision.flags,
            explanation=self._explain(decision, now),
            category_name=category[0] if category else None,
            rationale=category[1] if category else None,
            pupil=pupil,
            upset_token=token,
            zone=self.s.zone(),
        )
        body = blockpage.render(info, ctx.options.schoolgate_console_url)
        flow.response = http.Response.make(403, body.encode("utf-8"), blockpage.headers_for(info))
        flow.metadata[META_BLOCK_PAGE] = True

    def _category(self, decision: Decision) -> tuple[str, str] | None:
        if self.s.category is None or not decision.category:
            return None
        try:
            return self.s.category(decision.category)
        except Exception:  # the page must still be served without the rationale
            log.exception("looking up category %r failed", decision.category)
            return None

    def _explain(self, decision: Decision, now: datetime) -> str | None:
        if self.s.explain is None:
            return None
        try:
            return self.s.explain(decision, now)
        except Exception:  # the page must still be served, with the rule's own reason
            log.exception("explaining a decision failed")
            return None


def is_pupil(client: Client, decision: Decision) -> bool:
    """Whether the block page is for a child: the device is a pupil's (by the register, or by
    the pupils' network for an unregistered one), banned or not (a ban makes the decision's role
    supervised; its `own_role` is the role the device had before)."""
    if client.role is not None:
        return client.role is Role.PUPIL
    return (decision.own_role or decision.role) is Role.PUPIL


class UpsetButton:
    """The pupil block page's "this upset me" button (see schoolgate.proxy.upset).

    The post arrives on the blocked site's own origin, so HttpGate has already judged it
    blocked and answered it with the block page; here a genuine post (a token this proxy issued
    to this address for this site, within the hour) is answered with a thank-you instead, and
    its event carries FLAG_UPSET and the blocked page's URL: the alert rules raise the DSL's
    case from it. A post without a genuine token is refused: it cannot say which page upset the
    child, and a page on another site must not be able to raise cases about a pupil."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self._recent: dict[str, list[float]] = {}

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.path.partition("?")[0] != UPSET_PATH or flow.request.method != "POST":
            return
        judgement = flow.metadata.get(META_JUDGEMENT)
        state = self.s.connections.get(flow.client_conn.id)
        if not flow.metadata.get(META_BLOCK_PAGE) or not isinstance(judgement, Judgement) or state is None:
            return  # not a blocked site: the post is the site's own business
        school = ctx.options.schoolgate_school_name
        note = self._note(flow, state, judgement)
        if note is None:
            self.s.counters.upset_refused += 1
            body = blockpage.render_upset_failed(school)
            flow.response = http.Response.make(403, body.encode("utf-8"), blockpage.PUPIL_HEADERS)
            return
        flow.response = http.Response.make(
            200, blockpage.render_upset_thanks(school).encode("utf-8"), blockpage.PUPIL_HEADERS
        )
        if not self._allow(state.client.ip):
            self.s.counters.upset_limited += 1
            flow.metadata.pop(META_JUDGEMENT, None)  # thanked; the open case already holds the first posts
            return
        self.s.counters.upset_reports += 1
        flow.metadata[META_UPSET] = note
        # The event is the evidence: the page the child was on, not this post's address.
        flow.metadata[META_JUDGEMENT] = Judgement(
            judgement.decision,
            Target(host=judgement.target.host, url=note.url),
            judgement.action,
            judgement.fronted_host,
        )

    def _note(self, flow: http.HTTPFlow, state: ConnState, judgement: Judgement) -> UpsetNote | None:
        if self.s.upset is None or len(flow.request.raw_content or b"") > MAX_UPSET_BODY:
            return None
        if flow.request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return None
        try:
            token = flow.request.urlencoded_form.get("token", "")
        except (ValueError, UnicodeDecodeError):
            return None
        return self.s.upset.check(token, client_ip=state.client.ip, host=judgement.target.host, now=self.s.now())

    def _allow(self, ip: str) -> bool:
        now = time.monotonic()
        recent = [t for t in self._recent.get(ip, ()) if now - t < UPSET_WINDOW_S]
        if len(self._recent) > 10_000:
            self._recent.clear()  # bounded: a flood of addresses only forgets
        if len(recent) >= UPSET_LIMIT:
            self._recent[ip] = recent
            return False
        recent.append(now)
        self._recent[ip] = recent
        return True


class UpstreamGate:
    def __init__(self, services: Services) -> None:
        self.s = services

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        state = self.s.connections.get(data.client.id)
        judgement = state.judgement if state is not None else None
        if judgement is None or judgement.action not in (Action.PASS, Action.INSPECT):
            data.server.error = REFUSED


class Rejudge:
    """A passed-through TLS connection carries no further names to judge, so a verdict that was
    "allow until 13:00" would otherwise last as long as the connection. Once a second, every
    passed-through connection is judged again if its decision has reached its `valid_until`, or
    if the policy or the database overlay changed since (a new ban, a revoked exception); if it
    is blocked now, it is closed and the block is logged."""

    def __init__(self, services: Services, interval: float = 1.0) -> None:
        self.s = services
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._version: object = self._current_version()

    def _current_version(self) -> object:
        return self.s.policy_version() if self.s.policy_version is not None else None

    def running(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="schoolgate-rejudge")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sweep()
            except Exception:
                log.exception("re-judging open connections failed")

    def sweep(self) -> int:
        """Re-judge the passthroughs that are due; returns how many were closed."""
        now = self.s.now()
        version = self._current_version()
        changed = version != self._version
        self._version = version
        closed = 0
        for conn_id, state in self.s.connections.items():
            judgement = state.judgement
            if not state.passthrough or judgement is None:
                continue
            until = judgement.decision.valid_until
            if not changed and (until is None or until > now):
                continue
            fresh = judge_tls(
                self.s.decide,
                state.client,
                state.sni,
                dialled_ip=state.dialled_ip,
                dialled_name=state.dialled_name,
                book=self.s.book,
                operator_of=self.s.operator_of,
                now=now,
                refusal_clause=_refusal_clause(self.s),
            )
            if not fresh.blocked:
                state.judgement = fresh
                continue
            state.passthrough = False
            state.judgement = Judgement(fresh.decision, fresh.target, Action.KILL, fresh.fronted_host)
            if self.s.close is not None and self.s.close(conn_id):
                closed += 1
                self.s.counters.passthroughs_closed += 1
            EventLog(self.s).submit(state, state.judgement)
        return closed


class EventLog:
    """One event per decision, with the DfE fields (from EventRecord.from_decision)."""

    observes_only = True  # see Pipeline.judge_hello_first

    def __init__(self, services: Services) -> None:
        self.s = services

    def record(self, state: ConnState, judgement: Judgement, ts: datetime, search: str | None = None) -> EventRecord:
        """The event of `judgement` on `state`'s connection at `ts`."""
        return EventRecord.from_decision(
            judgement.decision,
            state.client,
            judgement.target,
            site=self.s.site,
            source="proxy",
            ts=ts,
            search_term=search,
        )

    def facts(self, client: Client, judgement: Judgement, search: str | None = None, *, upset: bool = False
              ) -> tuple[Any, ...]:
        """The facts of the ask for `judgement` on `client`'s connection (record.decision_facts):
        what `record` makes but the time, name, type and count."""
        decision = judgement.decision
        return decision_facts(
            decision, client, site=self.s.site, source="proxy", url=judgement.target.url, search_term=search,
            flags=decision.flags | {FLAG_UPSET} if upset else None,
        )

    def submit(self, state: ConnState, judgement: Judgement, search: str | None = None, *, upset: bool = False) -> None:
        submit_ask = self.s.submit_ask
        if submit_ask is not None and (search or upset or not is_plain_allow(judgement.decision)):
            self.s.counters.events_submitted += 1
            ask = (self.s.now().timestamp(), judgement.target.host, None, 1, self.facts(state.client, judgement, search,
                                                                                  upset=upset))
            if not submit_ask(ask):
                self.s.counters.events_refused += 1
            return
        record = self.record(state, judgement, self.s.now(), search)
        if upset:
            record = dataclasses.replace(record, flags=record.flag_set | {FLAG_UPSET})
        if search or not record.is_plain_allow:
            sink = self.s.submit_full
        else:
            # Allowed traffic is kept at domain level (folded per minute); blocked, flagged and
            # search events keep the URL.
            sink = self.s.submit_allowed
            if record.url is not None:  # a TLS connection's target has none: no copy to make
                record = dataclasses.replace(record, url=None)
        self.s.counters.events_submitted += 1
        if not sink(record):
            self.s.counters.events_refused += 1

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        state = self.s.connections.get(data.context.client.id)
        judgement = state.judgement if state is not None else None
        if state is None or judgement is None:
            return
        if judgement.action is Action.PASS:
            fold = self.s.fold_allowed
            if fold is not None and is_plain_allow(judgement.decision):
                # Most connections: counted in their minute, no record made (the record
                # submit() would make is what the fold makes of its minute).
                self.s.counters.events_submitted += 1
                fold(judgement.decision, state.client, judgement.target.host, self.s.now())
                return
            self.submit(state, judgement)
        elif judgement.action is Action.KILL:
            self.submit(state, judgement)

    def request(self, flow: http.HTTPFlow) -> None:
        state = self.s.connections.get(flow.client_conn.id)
        judgement = flow.metadata.get(META_JUDGEMENT)
        if state is None or not isinstance(judgement, Judgement):
            return
        state.requests_logged += 1
        self.submit(state, judgement, flow.metadata.get(META_SEARCH), upset=META_UPSET in flow.metadata)

    def client_disconnected(self, client: connection.Client) -> None:
        state = self.s.connections.get(client.id)
        if state is None or state.judgement is None or state.requests_logged:
            return
        if state.judgement.action in (Action.BLOCK_PAGE, Action.INSPECT) and client.tls:
            # Intercepted but no request came (e.g. the device did not trust the CA after all):
            # the attempt is still recorded, by host.
            self.submit(state, state.judgement)


class Counters:
    observes_only = True  # see Pipeline.judge_hello_first

    def __init__(self, services: Services) -> None:
        self.c = services.counters
        self.s = services

    def client_connected(self, client: connection.Client) -> None:
        self.c.connections_seen += 1

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        self.c.tls_seen += 1
        state = self.s.connections.get(data.context.client.id)
        if state is None or state.judgement is None:
            return
        judgement = state.judgement
        if judgement.action is Action.PASS:
            self.c.passed_through += 1
        elif judgement.action is Action.KILL:
            self.c.killed += 1
        elif judgement.action is Action.BLOCK_PAGE:
            self.c.intercepted += 1
        elif judgement.action is Action.INSPECT:
            self.c.inspected += 1
        self._count_flags(judgement)

    def request(self, flow: http.HTTPFlow) -> None:
        self.c.http_requests += 1
        if flow.metadata.get(META_BLOCK_PAGE):
            self.c.block_pages_served += 1
            judgement = flow.metadata.get(META_JUDGEMENT)
            if isinstance(judgement, Judgement) and not flow.client_conn.tls:
                self._count_flags(judgement)
        else:
            self.c.http_forwarded += 1

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.error == REFUSED:
            self.c.upstream_refused += 1

    def _count_flags(self, judgement: Judgement) -> None:
        if not judgement.blocked:
            return
        if FLAG_FRONTING in judgement.decision.flags:
            self.c.fronting_blocked += 1
        if FLAG_NO_SNI in judgement.decision.flags:
            self.c.no_sni_blocked += 1


class Forget:
    def __init__(self, services: Services) -> None:
        self.s = services

    def client_disconnected(self, client: connection.Client) -> None:
        self.s.connections.pop(client.id)


def build_addons(services: Services) -> list[object]:
    """The schoolgate addons in their one order (see the module docstring)."""
    return [
        IdentifyClient(services),
        TlsGate(services),
        SearchTerms(),
        HttpGate(services),
        UpsetButton(services),
        UpstreamGate(services),
        Rejudge(services),
        EventLog(services),
        Counters(services),
        services.ca_trust,
        Forget(services),
    ]


class Pipeline:
    """The schoolgate addons behind one entry in mitmproxy's addon chain.

    mitmproxy offers every hook to every addon in its chain, each call wrapped in its own
    error guard and coroutine, whether the addon handles that hook or not. With the nine
    addons above that was a sizeable part of a killed connection's cost. Here each hook
    calls, in `build_addons` order, only the members that handle it, with the same
    guarantee mitmproxy gives: one member's error is logged and the next still runs (Forget
    must run whatever EventLog did). `load` and `configure` errors are not caught: a bad
    option must stop the proxy, as it would without the pipeline.
    """

    HOOKS = (
        "load",
        "configure",
        "running",
        "done",
        "client_connected",
        "client_disconnected",
        "tls_clienthello",
        "request",
        "server_connect",
        "tls_established_client",
        "tls_failed_client",
    )

    def __init__(self, members: list[object], connections: Connections | None = None) -> None:
        from mitmproxy.hooks import all_hooks

        self.members = members
        for member in members:
            unhandled = [
                name for name in all_hooks if name not in self.HOOKS and callable(getattr(member, name, None))
            ]
            if unhandled:
                raise TypeError(f"{type(member).__name__} handles {unhandled}, which the pipeline does not pass on")
        self._handlers: dict[str, list[Callable[..., Any]]] = {
            name: [getattr(m, name) for m in members if callable(getattr(m, name, None))] for name in self.HOOKS
        }
        # The ClientHello's hooks split for judge_hello_first: the members that decide, and
        # after them those that only observe (which build_addons puts last for these hooks).
        self._deciding = {hook: [h for h in self._handlers[hook] if not _observes_only(h)] for hook in _SPLIT_HOOKS}
        self._observing = {hook: [h for h in self._handlers[hook] if _observes_only(h)] for hook in _SPLIT_HOOKS}
        for hook in _SPLIT_HOOKS:
            if self._deciding[hook] + self._observing[hook] != self._handlers[hook]:
                raise TypeError(f"{hook}: a member that only observes is ordered before one that decides")
        self._early_hellos: set[str] = set()  # connections whose ClientHello next_layer handled
        self._early_connects: set[str] = set()  # ... and whose server connection it allowed
        self.relayed_early = 0  # connections passed or killed before mitmproxy's TLS layers
        self._adopted: dict[tuple[str, int], str] = {}  # peer -> the front door's connection id
        self._connections = connections

    def _each(self, hook: str, *args: Any) -> None:
        for handler in self._handlers[hook]:
            try:
                handler(*args)
            except Exception:
                log.exception("%s failed in %s", hook, _owner(handler))

    def load(self, loader: Any) -> None:
        for handler in self._handlers["load"]:
            handler(loader)

    def configure(self, updated: set[str]) -> None:
        for handler in self._handlers["configure"]:
            handler(updated)

    def running(self) -> None:
        self._each("running")

    def done(self) -> None:
        self._each("done")

    async def client_connected(self, client: connection.Client) -> None:
        front_id = self._adopted.pop(_peer_key(client.peername), None) if self._adopted else None
        if front_id is not None:
            state = self._connections.pop(front_id) if self._connections is not None else None
            if state is not None and self._connections is not None:
                self._connections.put(client.id, state)
            if front_id in self._early_hellos:
                self._early_hellos.discard(front_id)
                self._early_hellos.add(client.id)
            return
        pending = self.begin_client(client)
        if pending is not None:
            await pending

    def begin_client(self, client: connection.Client, start: int = 0) -> Awaitable[None] | None:
        """`client_connected` for the members, as far as it goes without waiting: None once every
        member has been told (the front door then goes on in the same callback), or what is left
        to await (a member's lookup off the loop, then the members after it)."""
        handlers = self._handlers["client_connected"]
        for index in range(start, len(handlers)):
            handler = handlers[index]
            try:
                result = handler(client)
            except Exception:
                log.exception("client_connected failed in %s", _owner(handler))
                continue
            if result is not None and inspect.isawaitable(result):
                return self._finish_client(client, handler, result, index + 1)
        return None

    async def _finish_client(
        self, client: connection.Client, handler: Callable[..., Any], waiting: Awaitable[Any], after: int
    ) -> None:
        try:
            await waiting
        except Exception:
            log.exception("client_connected failed in %s", _owner(handler))
        rest = self.begin_client(client, after)
        if rest is not None:
            await rest

    def client_disconnected(self, client: connection.Client) -> None:
        self._early_hellos.discard(client.id)
        self._early_connects.discard(client.id)
        self._each("client_disconnected", client)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        """A transparent TLS connection's ClientHello, handled before mitmproxy stacks its TLS
        layers on the connection.

        mitmproxy would wrap the connection in its two TLS layers, parse the ClientHello
        there and only then offer `tls_clienthello`; for a connection that is passed through
        or killed, those layers only carry the bytes to a plain TCP relay. Here the same
        hook is given to the members as soon as the whole ClientHello is in, and a
        connection they pass gets that relay at once, and one they kill (UpstreamGate refuses
        its server connection) is closed at once. Anything else (intercepted for the block
        page, a ClientHello not all in the first read or not parsable, not transparent mode)
        is left to mitmproxy, as if this hook were not here; an intercepted connection's
        `tls_clienthello` is not given to the members twice.
        """
        context = nextlayer.context
        if (
            nextlayer.layer is not None
            or context.client.transport_protocol != "tcp"
            or not stack_match(context, [modes.TransparentProxy])
            or ctx.options.ignore_hosts
            or ctx.options.allow_hosts
            or context.client.id in self._early_hellos  # judged by the front door already
        ):
            return
        data: bytes = nextlayer.data_client()  # type: ignore[no-untyped-call]
        verdict = self.judge_hello(context, data)
        if verdict is EarlyHello.PASS:
            self._early_connects.add(context.client.id)
            nextlayer.layer = layers.TCPLayer(context, ignore=True)
        elif verdict is EarlyHello.REFUSE:
            nextlayer.layer = RefusedConnection(context)

    def judge_hello(self, context: Context, data: bytes, hello: FastClientHello | None = None) -> EarlyHello:
        """Give the members a transparent connection's first bytes as its ClientHello (`hello`:
        the caller's parse of `data`, if it has one: not parsed twice): `judge_hello_first`, its
        observers told at once."""
        verdict, observe = self.judge_hello_first(context, data, hello)
        if observe is not None:
            observe()
        return verdict

    def judge_hello_first(
        self, context: Context, data: bytes, hello: FastClientHello | None = None
    ) -> tuple[EarlyHello, Callable[[], None] | None]:
        """The verdict on a transparent connection's first bytes, from the members that decide;
        and what tells the members that only observe (`observes_only`: the event log and the
        counters), for the caller to call once it has carried the verdict out (the kill closed,
        the server dialled), before anything else of that connection: the device and the
        server wait for no event being written. None: nothing to tell (not judged).

        UNJUDGED: not a whole, parsable ClientHello; mitmproxy's TLS layer takes it (and
        refuses what it cannot parse). INTERCEPT: judged and logged; mitmproxy intercepts it and
        its `tls_clienthello` is not given to the members again. PASS: judged, logged, and its
        server connection put to the members and allowed (once: the caller relays the bytes).
        REFUSE: judged, logged, and its server connection refused (never dialled): the caller
        closes the client at once, as mitmproxy would after the refusal, minus the relay.
        """
        if hello is None:
            if not starts_like_tls_record(data):
                return EarlyHello.UNJUDGED, None
            try:
                hello = parse_client_hello(data)
            except ValueError:
                return EarlyHello.UNJUDGED, None
        if hello is None:
            # Not all in yet (a large ClientHello may span TCP segments): mitmproxy's TLS
            # layer gathers the rest and offers `tls_clienthello` as usual.
            return EarlyHello.UNJUDGED, None
        context.client.sni = hello.sni
        context.client.alpn_offers = hello.alpn_protocols
        hello_data = tls.ClientHelloData(context, hello)
        self._each_deciding("tls_clienthello", hello_data)
        if not hello_data.ignore_connection:
            self._early_hellos.add(context.client.id)
            return EarlyHello.INTERCEPT, functools.partial(self._observe_hello, hello_data, None)
        relay = server_hooks.ServerConnectionHookData(server=context.server, client=context.client)
        self._each_deciding("server_connect", relay)
        self.relayed_early += 1
        verdict = EarlyHello.REFUSE if context.server.error else EarlyHello.PASS
        return verdict, functools.partial(self._observe_hello, hello_data, relay)

    def _each_deciding(self, hook: str, *args: Any) -> None:
        for handler in self._deciding[hook]:
            try:
                handler(*args)
            except Exception:
                log.exception("%s failed in %s", hook, _owner(handler))

    def _observe_hello(
        self, hello_data: tls.ClientHelloData, relay: server_hooks.ServerConnectionHookData | None
    ) -> None:
        for hook, args in (("tls_clienthello", hello_data), ("server_connect", relay)):
            if args is None:
                continue
            for handler in self._observing[hook]:
                try:
                    handler(args)
                except Exception:
                    log.exception("%s failed in %s", hook, _owner(handler))

    def adopt(self, peername: Any, front_id: str) -> None:
        """The next connection mitmproxy reports from `peername` is one the front door
        (schoolgate.proxy.front) accepted, identified and maybe judged as `front_id`: its
        state carries over, and the members are not told of it a second time."""
        self._adopted[_peer_key(peername)] = front_id

    def forget_adoption(self, peername: Any) -> bool:
        """Drop an adoption mitmproxy never claimed (it refused the connection before telling
        the addons); True if there was one: the caller ends the front's connection itself."""
        return self._adopted.pop(_peer_key(peername), None) is not None

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if data.context.client.id in self._early_hellos:
            self._early_hellos.discard(data.context.client.id)
            return  # judged and logged in next_layer; mitmproxy now intercepts it
        self._each("tls_clienthello", data)

    def request(self, flow: http.HTTPFlow) -> None:
        self._each("request", flow)

    def tls_established_client(self, data: tls.TlsData) -> None:
        self._each("tls_established_client", data)

    def tls_failed_client(self, data: tls.TlsData) -> None:
        self._each("tls_failed_client", data)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.client.id in self._early_connects:
            self._early_connects.discard(data.client.id)
            return  # allowed in next_layer already
        self._each("server_connect", data)


_SPLIT_HOOKS = ("tls_clienthello", "server_connect")


def _observes_only(handler: Callable[..., Any]) -> bool:
    """Whether a hook's member only records (the `observes_only` mark): it changes no verdict,
    no flow and no connection, so it may be told after the verdict is carried out."""
    return bool(getattr(getattr(handler, "__self__", None), "observes_only", False))


class EarlyHello(Enum):
    """What `Pipeline.judge_hello` made of a connection's first bytes."""

    UNJUDGED = "unjudged"
    INTERCEPT = "intercept"
    PASS = "pass"  # noqa: S105 (not a password)
    REFUSE = "refuse"


def _peer_key(peername: Any) -> tuple[str, int]:
    """A client's address as both asyncio and mitmproxy give it (IPv6 adds flow and scope)."""
    return (str(peername[0]), int(peername[1])) if peername else ("", 0)


class RefusedConnection(layer.Layer):
    """Closes the client's connection at once, without a server connection: a TLS connection
    killed at its ClientHello."""

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.CloseConnection(self.context.client)
        # The buffered ClientHello and the close that follow need nothing.


def _owner(handler: Callable[..., Any]) -> str:
    return type(getattr(handler, "__self__", handler)).__name__
