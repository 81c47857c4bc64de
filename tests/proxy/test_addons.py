"""The addons, driven through mitmproxy's own test master (taddons) with tflow connections,
real TLS ClientHello bytes from Python's ssl module, the real policy and real SQLite events."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy import commands, layers
from mitmproxy.proxy import events as proxy_events
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.http import HttpRequestHook
from mitmproxy.test import taddons, tflow
from proxy_testkit import (
    FACEBOOK_IP,
    OTHER_IP,
    PUPIL,
    SITE,
    STAFF,
    TRUSTED_PUPIL,
    Harness,
    client_hello_bytes,
    events,
)
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy.types import Client
from schoolgate.proxy.addons import (
    REFUSED,
    HttpGate,
    Pipeline,
    RefusedConnection,
    Rejudge,
    Services,
)
from schoolgate.proxy.search import is_search_engine
from schoolgate.store.events import EventWriter


@pytest.fixture
def known_clients() -> dict[str, Client]:
    return {c.ip: c for c in (PUPIL, TRUSTED_PUPIL, STAFF)}


# --------------------------------------------------------------------------------------- TLS


def test_allowed_sni_is_passed_through_without_decryption(harness: Harness, services: Services) -> None:
    ctx = harness.connect(PUPIL, OTHER_IP)
    data = harness.hello(ctx, "www.example.org")
    assert data.ignore_connection is True
    server = harness.server_connect(ctx)
    assert server.error is None
    assert services.counters.passed_through == 1
    assert services.counters.killed == services.counters.intercepted == 0


def test_blocked_sni_from_untrusted_device_is_killed(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(PUPIL, FACEBOOK_IP)
    data = harness.hello(ctx, "www.facebook.com")
    # Not decrypted (no certificate is ever shown) and the passthrough's server connection refused:
    assert data.ignore_connection is True
    server = harness.server_connect(ctx)
    assert server.error == REFUSED
    assert services.counters.killed == 1
    assert services.counters.upstream_refused == 1
    harness.disconnect(ctx)
    (event,) = events(sessions, writer)
    assert (event.verdict, event.rule_id, event.host, event.service) == (
        "block",
        "social-media",
        "www.facebook.com",
        "facebook",
    )
    assert (event.client_ip, event.mac, event.device_id, event.device_name) == (
        PUPIL.ip,
        PUPIL.mac,
        PUPIL.device_id,
        PUPIL.device_name,
    )
    assert (event.person_id, event.person_name, event.role, event.source, event.site) == (
        PUPIL.person_id,
        PUPIL.person_name,
        "pupil",
        "proxy",
        SITE,
    )
    assert event.clause == "Social Media Policy §9"
    assert event.url is None


def test_blocked_sni_from_trusting_device_is_intercepted_and_answered(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(TRUSTED_PUPIL, FACEBOOK_IP)
    data = harness.hello(ctx, "www.facebook.com")
    assert data.ignore_connection is False  # mitmproxy will terminate TLS with the school CA
    ctx.client.tls = True
    ctx.client.sni = "www.facebook.com"
    flow = harness.request(ctx, "https://www.facebook.com/groups/some?q=1")
    assert flow.response is not None and flow.response.status_code == 403
    page = flow.response.get_text()
    assert page is not None
    # A pupil's device: the page written for children, with the adults' facts below it.
    assert "This website is blocked" in page and "at Test Primary" in page
    assert "Social Media Policy §9" in page
    assert "pupils may not use them at school" in page  # the category's published rationale
    assert "filtered and monitored" in page
    assert "https://console.test:8443/request?url=https%3A%2F%2Fwww.facebook.com%2Fgroups%2Fsome%3Fq%3D1" in (
        html.unescape(page)
    )
    assert "device=LAP-006" in page
    assert flow.response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    # No server is dialled for an answered request; any attempt would be refused.
    assert harness.server_connect(ctx).error == REFUSED
    assert services.counters.intercepted == 1
    assert services.counters.block_pages_served == 1
    (event,) = events(sessions, writer)
    assert event.url == "https://www.facebook.com/groups/some?q=1"
    assert event.verdict == "block"


def test_intercepted_connection_without_request_is_still_logged(
    harness: Harness, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(TRUSTED_PUPIL, FACEBOOK_IP)
    harness.hello(ctx, "www.facebook.com")
    ctx.client.tls = True
    harness.disconnect(ctx)
    (event,) = events(sessions, writer)
    assert (event.host, event.verdict, event.url) == ("www.facebook.com", "block", None)


def test_staff_allowed_service_passes(harness: Harness, services: Services) -> None:
    ctx = harness.connect(STAFF, OTHER_IP)
    data = harness.hello(ctx, "web.whatsapp.com")
    assert data.ignore_connection is True
    assert harness.server_connect(ctx).error is None


# ---------------------------------------------------------------------------------- fronting


def test_innocent_sni_to_a_watched_address_is_fronting(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(PUPIL, FACEBOOK_IP)
    data = harness.hello(ctx, "innocent.example.org")
    assert data.ignore_connection is True
    assert harness.server_connect(ctx).error == REFUSED
    assert services.counters.fronting_blocked == 1
    (event,) = events(sessions, writer)
    assert event.host == "innocent.example.org"
    assert event.verdict == "block"
    assert event.service == "facebook"
    assert set(event.flags.split(",")) == {"circumvention", "fronting"}


def test_innocent_sni_to_an_ordinary_address_passes(harness: Harness) -> None:
    ctx = harness.connect(PUPIL, OTHER_IP)
    data = harness.hello(ctx, "innocent.example.org")
    assert data.ignore_connection is True
    assert harness.server_connect(ctx).error is None


def test_catalogued_service_sharing_an_operators_address_is_not_fronting(harness: Harness) -> None:
    # Meta serves WhatsApp from the same edges as Facebook: staff may use WhatsApp.
    ctx = harness.connect(STAFF, FACEBOOK_IP)
    data = harness.hello(ctx, "web.whatsapp.com")
    assert data.ignore_connection is True
    assert harness.server_connect(ctx).error is None


def test_another_operators_catalogued_name_at_a_blocked_address_is_fronting(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    """The exemption covers one operator's own names, not every catalogued service: Google is
    catalogued and open to pupils, but not at Facebook's address."""
    ctx = harness.connect(PUPIL, FACEBOOK_IP)
    data = harness.hello(ctx, "www.google.com")
    assert data.ignore_connection is True
    assert harness.server_connect(ctx).error == REFUSED
    assert services.counters.fronting_blocked == 1
    (event,) = events(sessions, writer)
    assert (event.host, event.service) == ("www.google.com", "facebook")
    assert {"circumvention", "fronting"} <= set(event.flags.split(","))


def test_a_support_site_at_a_blocked_services_address_is_not_fronting(harness: Harness, services: Services) -> None:
    """Support is always open: a help service on a CDN edge that also serves a blocked service
    is reached, not refused as fronting (only a locked block outranks support)."""
    for sni in ("www.childline.org.uk", "www.kooth.com"):
        ctx = harness.connect(PUPIL, FACEBOOK_IP)
        assert harness.hello(ctx, sni).ignore_connection is True
        assert harness.server_connect(ctx).error is None
    assert services.counters.fronting_blocked == 0


def test_no_sni_to_a_watched_address_is_refused_and_flagged(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(TRUSTED_PUPIL, FACEBOOK_IP)
    data = harness.hello(ctx, None)
    assert data.ignore_connection is True  # no name to mint a certificate for: killed, not intercepted
    assert harness.server_connect(ctx).error == REFUSED
    assert services.counters.no_sni_blocked == 1
    (event,) = events(sessions, writer)
    assert event.verdict == "block"
    assert {"circumvention", "no_sni"} <= set(event.flags.split(","))


def test_no_sni_refusal_cites_the_schools_own_clause(
    harness: Harness, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    """The proxy's own refusal names the clause the school's policy gives for it ([dynamic]
    circumvention_clause), not a clause of some other school's policy."""
    ctx = harness.connect(TRUSTED_PUPIL, OTHER_IP)
    harness.hello(ctx, None)
    assert harness.server_connect(ctx).error == REFUSED
    (event,) = events(sessions, writer)
    assert (event.verdict, event.rule_id) == ("block", "proxy.no-sni")
    assert event.clause == "Acceptable Use Policy §7: connections that hide where they go are refused"


def test_ipv6_dialled_address_is_judged_too(harness: Harness) -> None:
    ctx = harness.connect(PUPIL, "2001:db8::10")
    harness.hello(ctx, "innocent.example.org")
    assert harness.server_connect(ctx).error == REFUSED


# -------------------------------------------------------------------------------------- HTTP


XSS = "/<script>alert(1)</script>\"'><img src=x onerror=alert(2)>"


def test_blocked_http_host_gets_the_escaped_block_page(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(PUPIL, FACEBOOK_IP, 80)
    flow = harness.request(ctx, "http://www.facebook.com" + XSS.replace(" ", "%20"))
    assert flow.response is not None and flow.response.status_code == 403
    page = flow.response.get_text()
    assert page is not None
    assert "<script>" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;" in page
    assert "<img" not in page
    link = html.unescape(page.split('id="request-link" href="', 1)[1].split('"', 1)[0])
    assert link.startswith("https://console.test:8443/request?url=http%3A%2F%2Fwww.facebook.com%2F%3Cscript%3E")
    assert "&device=LAP-005&at=2026-11-18T11%3A00%3A00%2B00%3A00&rule=social-media" in link
    assert services.counters.block_pages_served == 1
    (event,) = events(sessions, writer)
    assert event.url is not None and event.url.startswith("http://www.facebook.com/<script>")


def test_allowed_http_is_forwarded_and_logged_by_domain(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(PUPIL, OTHER_IP, 80)
    flow = harness.request(ctx, "http://www.example.org/private/page?token=1")
    assert flow.response is None
    assert harness.server_connect(ctx).error is None
    assert services.counters.http_forwarded == 1
    (event,) = events(sessions, writer)
    assert (event.host, event.verdict, event.url) == ("www.example.org", "allow", None)


def test_http_fronting_by_host_header(harness: Harness, services: Services) -> None:
    ctx = harness.connect(PUPIL, FACEBOOK_IP, 80)
    flow = harness.request(ctx, f"http://{FACEBOOK_IP}/", host_header="innocent.example.org")
    assert flow.response is not None and flow.response.status_code == 403
    assert services.counters.fronting_blocked == 1


def test_search_terms_are_captured_and_logged_in_full(
    harness: Harness, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(PUPIL, OTHER_IP, 80)
    harness.request(ctx, "http://www.bing.com/search?q=how+to+get+round+the+filter&form=QBLH")
    ctx2 = harness.connect(TRUSTED_PUPIL, FACEBOOK_IP)
    harness.hello(ctx2, "www.facebook.com")
    ctx2.client.tls = True
    harness.request(ctx2, "https://www.facebook.com/search/top?q=%3Cb%3Ebold%3C%2Fb%3E")
    bing, facebook = events(sessions, writer)
    assert (bing.verdict, bing.search_term) == ("allow", "how to get round the filter")
    assert facebook.search_term is None  # facebook's own search is not a search engine's
    ctx3 = harness.connect(PUPIL, OTHER_IP, 80)
    harness.request(ctx3, "http://www.youtube.com/results?search_query=minecraft+%3Cscript%3E")
    *_, youtube = events(sessions, writer)
    assert youtube.search_term == "minecraft <script>"  # stored as text; never rendered as HTML


def test_unjudged_server_connections_fail_closed(harness: Harness) -> None:
    ctx = harness.connect(PUPIL, OTHER_IP)
    assert harness.server_connect(ctx).error == REFUSED  # e.g. a protocol that is neither


def test_options_are_checked_in_configure(services: Services) -> None:
    gate = HttpGate(services)
    with taddons.context(gate) as tctx:
        with pytest.raises(OptionsError):
            tctx.configure(gate, schoolgate_console_url="javascript:alert(1)")
        with pytest.raises(OptionsError):
            tctx.configure(gate, schoolgate_school_name="  ")
        tctx.configure(gate, schoolgate_console_url="https://schoolgate.lan:8443")
    pipeline = Pipeline([HttpGate(services)])  # a bad option must still stop the proxy
    with taddons.context(pipeline) as tctx, pytest.raises(OptionsError):
        tctx.configure(pipeline, schoolgate_console_url="ftp://console")


# --------------------------------------------------------------------- verdicts that expire


def test_passthrough_is_closed_when_its_verdict_expires(
    harness: Harness, services: Services, clock: Any, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    closed: list[str] = []
    services.close = lambda conn_id: closed.append(conn_id) is None
    clock.instant = datetime(2026, 11, 18, 12, 59, 30, tzinfo=UTC)  # lunch: YouTube allowed
    ctx = harness.connect(PUPIL, OTHER_IP)
    staff_ctx = harness.connect(STAFF, OTHER_IP)
    assert harness.hello(ctx, "www.youtube.com").ignore_connection
    harness.hello(staff_ctx, "www.youtube.com")
    rejudge = Rejudge(services)
    assert rejudge.sweep() == 0  # still lunch
    clock.instant = datetime(2026, 11, 18, 13, 0, 1, tzinfo=UTC)
    assert rejudge.sweep() == 1
    assert closed == [ctx.client.id]  # the pupil's stream ends; staff carry on
    assert services.counters.passthroughs_closed == 1
    assert rejudge.sweep() == 0  # judged once
    youtube = [e for e in events(sessions, writer) if e.verdict == "block"]
    assert [(e.host, e.rule_id, e.client_ip) for e in youtube] == [("www.youtube.com", "pupils-video", PUPIL.ip)]


# ---------------------------------------------------------------------- inspecting searches


def test_allowed_search_engine_is_inspected_on_trusting_devices(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    services.inspect = is_search_engine
    ctx = harness.connect(TRUSTED_PUPIL, OTHER_IP)
    assert harness.hello(ctx, "www.bing.com").ignore_connection is False  # decrypted
    ctx.client.tls = True
    flow = harness.request(ctx, "https://www.bing.com/search?q=am+i+safe")
    assert flow.response is None  # forwarded to the real server
    assert harness.server_connect(ctx).error is None
    untrusted = harness.connect(PUPIL, OTHER_IP)
    assert harness.hello(untrusted, "www.bing.com").ignore_connection is True  # never for other devices
    assert services.counters.inspected == 1
    fronted = harness.request(ctx, "https://www.bing.com/", host_header="www.facebook.com")
    assert fronted.response is not None and fronted.response.status_code == 403  # a blocked Host inside
    assert harness.server_connect(ctx).error == REFUSED
    (search,) = [e for e in events(sessions, writer) if e.search_term]
    assert (search.verdict, search.search_term, search.url) == (
        "allow",
        "am i safe",
        "https://www.bing.com/search?q=am+i+safe",
    )


def test_fronting_through_an_address_shared_with_an_allowed_service(harness: Harness, services: Services) -> None:
    # Staff may use WhatsApp but not Facebook; the edge serves both. The last name learnt for
    # the address is WhatsApp's, yet an innocent SNI sent there is still fronting.
    services.book.learn("whatsapp.com", [FACEBOOK_IP], 3600)
    ctx = harness.connect(STAFF, FACEBOOK_IP)
    harness.hello(ctx, "innocent.example.org")
    assert harness.server_connect(ctx).error == REFUSED
    assert services.counters.fronting_blocked == 1


def test_block_page_says_when_the_verdict_changes(harness: Harness) -> None:
    ctx = harness.connect(PUPIL, OTHER_IP, 80)
    flow = harness.request(ctx, "http://www.youtube.com/watch?v=abc")  # 11:00: video is for lunchtime
    assert flow.response is not None
    page = flow.response.get_text() or ""
    assert "Blocked: video sites are for lunchtime only (Acceptable Use Policy §4). YouTube. Changes at 12:00." in page


def test_a_failing_policy_fails_closed(harness: Harness, services: Services) -> None:
    def broken(*_: object) -> Any:
        raise RuntimeError("policy engine bug")

    services.decide = broken
    ctx = harness.connect(TRUSTED_PUPIL, OTHER_IP)
    data = harness.hello(ctx, "www.example.org")
    assert data.ignore_connection is True  # never decrypted
    assert harness.server_connect(ctx).error == REFUSED
    plain = harness.connect(PUPIL, OTHER_IP, 80)
    flow = harness.request(plain, "http://www.example.org/")
    assert flow.response is not None and flow.response.status_code == 503
    assert harness.server_connect(plain).error == REFUSED
    assert services.counters.judge_errors == 2


@pytest.mark.parametrize("sni", ["com", "facebook.com.evil.example", "book.com", "example"])
def test_names_that_merely_overlap_a_watched_name_are_fronting(
    harness: Harness, services: Services, sni: str
) -> None:
    services.book.learn("www.facebook.com", [FACEBOOK_IP], 3600)
    ctx = harness.connect(PUPIL, FACEBOOK_IP)
    harness.hello(ctx, sni)
    assert harness.server_connect(ctx).error == REFUSED


def test_a_policy_change_rejudges_open_passthroughs_but_not_plain_http(
    harness: Harness, services: Services, policy: Any
) -> None:
    from schoolgate.policy.engine import decide

    closed: list[str] = []
    services.close = lambda conn_id: closed.append(conn_id) is None
    version = [1]
    services.policy_version = lambda: version[0]
    current = [policy]
    services.decide = lambda client, target, now: decide(current[0], client, target, now)
    tls_ctx = harness.connect(STAFF, OTHER_IP)
    harness.hello(tls_ctx, "web.whatsapp.com")  # staff may use WhatsApp (no end time)
    http_ctx = harness.connect(STAFF, OTHER_IP, 80)
    harness.request(http_ctx, "http://www.example.org/")
    rejudge = Rejudge(services)
    assert rejudge.sweep() == 0
    # A ban for the staff device arrives through the overlay: the device is now supervised.
    from schoolgate.policy.types import Ban

    ban = Ban(id=1, device_id=STAFF.device_id, person_id=None, mac=None,
              starts=datetime(2026, 1, 1, tzinfo=UTC), until=datetime(2027, 1, 1, tzinfo=UTC))
    current[0] = policy.with_overlay(bans=[ban])
    assert rejudge.sweep() == 0  # no version change, no valid_until: not re-judged yet
    version[0] = 2
    assert rejudge.sweep() == 1
    assert closed == [tls_ctx.client.id]  # the plain-HTTP connection is judged per request instead


# ------------------------------------------------------------------ regular mode: named destinations


@pytest.mark.parametrize(
    ("destination", "sni", "refused"),
    [
        ("www.facebook.com", "www.example.org", True),  # CONNECT to a blocked site, innocent SNI
        ("WWW.FACEBOOK.COM.", "www.example.org", True),  # any case, trailing dot
        ("facebook.com", "facebook.com", True),  # honest and blocked
        ("www.example.org", "www.facebook.com", True),  # innocent CONNECT, blocked SNI
        ("www.example.org", "www.example.org", False),
        ("www.example.org", "static.example.org", False),  # both allowed
    ],
)
def test_regular_mode_connect_target_is_judged_as_well_as_the_sni(
    harness: Harness, destination: str, sni: str, refused: bool
) -> None:
    # In regular mode mitmproxy connects to the CONNECT target by name, whatever the SNI says.
    ctx = harness.connect(PUPIL, "127.0.0.1", 8080)
    ctx.server.address = (destination, 443)
    harness.hello(ctx, sni)
    server = harness.server_connect(ctx)
    assert (server.error == REFUSED) is refused


@pytest.mark.parametrize(
    ("url", "host_header", "blocked"),
    [
        ("http://www.facebook.com/", "www.example.org", True),  # absolute form names the real destination
        ("http://www.example.org/", "www.facebook.com", True),
        ("http://www.example.org/", "www.example.org", False),
    ],
)
def test_regular_mode_absolute_url_is_judged_as_well_as_the_host_header(
    harness: Harness, services: Services, url: str, host_header: str, blocked: bool
) -> None:
    ctx = harness.connect(PUPIL, "127.0.0.1", 8080)
    ctx.server.address = None  # regular mode: mitmproxy connects to request.host after the hook
    flow = harness.request(ctx, url, host_header=host_header)
    if blocked:
        assert flow.response is not None and flow.response.status_code == 403
    else:
        assert flow.response is None
        assert harness.server_connect(ctx).error is None


@pytest.mark.parametrize(
    ("http_version", "authority", "host_header", "blocked"),
    [
        # HTTP/1 absolute form: the server must prefer the request line's name to Host.
        ("HTTP/1.1", "www.facebook.com", "www.example.org", True),
        ("HTTP/1.1", "www.example.org", "www.facebook.com", True),
        ("HTTP/1.1", "", "www.example.org", False),
        # HTTP/2: :authority and a stray Host header that an HTTP/1 hop would read.
        ("HTTP/2.0", "www.example.org", "www.facebook.com", True),
        ("HTTP/2.0", "www.facebook.com", "www.example.org", True),
        ("HTTP/2.0", "WWW.Example.org.", "www.example.org", False),
    ],
)
def test_every_name_a_request_gives_is_judged(
    harness: Harness, services: Services, http_version: str, authority: str, host_header: str, blocked: bool
) -> None:
    # Transparent mode on an inspected connection: mitmproxy has set request.host to the
    # address the device dialled; the names are the client's to choose.
    services.inspect = is_search_engine
    ctx = harness.connect(TRUSTED_PUPIL, OTHER_IP)
    harness.hello(ctx, "www.bing.com")
    ctx.client.tls = True
    flow = tflow.tflow(client_conn=ctx.client)
    flow.server_conn.address = ctx.server.address
    flow.request = http.Request.make("GET", f"https://{OTHER_IP}/search?q=x")
    flow.request.headers["Host"] = host_header
    flow.request.http_version = http_version
    flow.request.authority = authority
    harness.trigger(HttpRequestHook(flow))
    if blocked:
        assert flow.response is not None and flow.response.status_code == 403
    else:
        assert flow.response is None


# ---------------------------------------------- the ClientHello, judged before mitmproxy's TLS layers


def test_a_killed_hello_gets_a_bare_relay_whose_server_is_refused(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(PUPIL, FACEBOOK_IP)
    nextlayer = harness.next_layer(ctx, client_hello_bytes("www.facebook.com"))
    # Never decrypted, never dialled: the client is closed as soon as the layer starts.
    assert isinstance(nextlayer.layer, RefusedConnection)
    assert ctx.client.sni == "www.facebook.com" and ctx.server.error == REFUSED
    (command,) = nextlayer.layer.handle_event(proxy_events.Start())
    assert isinstance(command, commands.CloseConnection) and command.connection is ctx.client
    counters = services.counters
    assert (counters.tls_seen, counters.killed, counters.upstream_refused) == (1, 1, 1)
    harness.disconnect(ctx)
    (event,) = events(sessions, writer)
    assert (event.verdict, event.host, event.device_id) == ("block", "www.facebook.com", PUPIL.device_id)


def test_a_passed_hello_gets_a_bare_relay_to_its_server(harness: Harness, services: Services) -> None:
    ctx = harness.connect(PUPIL, OTHER_IP)
    nextlayer = harness.next_layer(ctx, client_hello_bytes("www.example.org"))
    assert isinstance(nextlayer.layer, layers.TCPLayer) and nextlayer.layer.flow is None  # never decrypted
    assert ctx.server.error is None
    assert harness.server_connect(ctx).error is None  # allowed once, in next_layer
    counters = services.counters
    assert (counters.tls_seen, counters.passed_through, counters.upstream_refused) == (1, 1, 0)


def test_an_intercepted_hello_is_left_to_mitmproxy_and_judged_once(
    harness: Harness, services: Services, sessions: sessionmaker[Session], writer: EventWriter
) -> None:
    ctx = harness.connect(TRUSTED_PUPIL, FACEBOOK_IP)
    nextlayer = harness.next_layer(ctx, client_hello_bytes("www.facebook.com"))
    assert nextlayer.layer is None  # mitmproxy stacks its TLS layers to show the block page
    assert (services.counters.tls_seen, services.counters.intercepted) == (1, 1)
    data = harness.hello(ctx, "www.facebook.com")  # its TLS layer offers the hook again
    assert data.ignore_connection is False
    assert (services.counters.tls_seen, services.counters.intercepted) == (1, 1)
    state = services.connections.get(ctx.client.id)
    assert state is not None and state.judgement is not None and state.judgement.blocked
    ctx.client.tls = True  # the device trusted the school CA, but sent no request
    harness.disconnect(ctx)
    (event,) = events(sessions, writer)  # the attempt, logged once
    assert (event.verdict, event.host) == ("block", "www.facebook.com")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(client_hello_bytes("www.facebook.com")[:40], id="hello-not-all-in"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: www.facebook.com\r\n\r\n", id="plain-http"),
        pytest.param(b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", id="not-a-client-hello"),
    ],
)
def test_anything_but_a_whole_client_hello_is_left_to_mitmproxy(
    harness: Harness, services: Services, data: bytes
) -> None:
    ctx = harness.connect(PUPIL, FACEBOOK_IP)
    assert harness.next_layer(ctx, data).layer is None
    assert services.counters.tls_seen == 0
    assert harness.server_connect(ctx).error == REFUSED  # and nothing unjudged gets through


def test_regular_mode_hellos_are_left_to_mitmproxy(harness: Harness, services: Services) -> None:
    ctx = harness.connect(PUPIL, FACEBOOK_IP)
    modes.HttpProxy(ctx)  # an explicit proxy's stack: the hello comes inside a CONNECT tunnel
    assert harness.next_layer(ctx, client_hello_bytes("www.facebook.com")).layer is None
    assert services.counters.tls_seen == 0


EVENT_CASES = [
    # who, the name, where it was dialled, a search term, the upset button
    (PUPIL, "www.facebook.com", FACEBOOK_IP, None, False),  # killed at the SNI
    (PUPIL, "allowed.test", FACEBOOK_IP, None, False),  # fronting: flagged
    (PUPIL, "", FACEBOOK_IP, None, False),  # no SNI: refused, flagged
    (TRUSTED_PUPIL, "www.youtube.com", OTHER_IP, "cats", False),  # blocked, with a search term
    (TRUSTED_PUPIL, "www.facebook.com", FACEBOOK_IP, None, True),  # the pupil said it upset them
    (STAFF, "www.google.com", OTHER_IP, "cats", False),  # allowed, with a search term
    (STAFF, "allowed.test", OTHER_IP, None, False),  # plain allowed: kept per minute, as a record
]


@pytest.mark.parametrize(("who", "sni", "dialled", "search", "upset"), EVENT_CASES)
def test_the_event_log_hands_over_asks_that_stand_for_its_records(
    services: Services, who: Client, sni: str, dialled: str, search: str | None, upset: bool
) -> None:
    """An ask (the daemon's form) makes the row the record (the form without submit_ask) makes."""
    from schoolgate.proxy.addons import ConnState, EventLog
    from schoolgate.proxy.judge import judge_tls
    from schoolgate.store.events.record import from_ask, from_compact

    judgement = judge_tls(services.decide, who, sni or None, dialled_ip=dialled, book=services.book,
                          now=services.now(), operator_of=services.operator_of)
    state = ConnState(client=who, judgement=judgement)
    full: list[Any] = []
    allowed: list[Any] = []
    asks: list[Any] = []
    services.submit_full, services.submit_allowed = full.append, allowed.append  # type: ignore[assignment]
    EventLog(services).submit(state, judgement, search, upset=upset)
    as_records = [record.row() for record in full]  # what the writer stores
    full.clear()
    services.submit_ask = asks.append  # type: ignore[assignment]
    EventLog(services).submit(state, judgement, search, upset=upset)
    assert [from_compact(from_ask(ask)).row() for ask in asks] == as_records
    assert full == []
    assert len(allowed) == (0 if as_records else 2)  # plain allowed traffic: records either way
    assert services.counters.events_submitted == 2


def test_a_judgement_and_a_connections_state_take_no_other_attributes(services: Services) -> None:
    """A judgement is an immutable value (remembered verdicts share it across connections); a
    connection's state holds its listed fields only (slots: no dictionary per connection)."""
    from schoolgate.proxy.addons import ConnState
    from schoolgate.proxy.judge import Action, judge_tls

    judgement = judge_tls(services.decide, PUPIL, "www.facebook.com", dialled_ip=FACEBOOK_IP, book=services.book,
                          now=services.now(), operator_of=services.operator_of)
    assert judgement.action is Action.KILL and judgement.blocked
    with pytest.raises(AttributeError):
        judgement.action = Action.PASS  # type: ignore[misc]
    state = ConnState(client=PUPIL, judgement=judgement)
    state.passthrough = True
    with pytest.raises(AttributeError):
        state.verdict = "pass"  # type: ignore[attr-defined]
