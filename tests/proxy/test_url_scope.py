"""What is approved is what is enforced: a block or exception for pages under a URL prefix, at the
proxy, on a device that trusts the school CA (intercepted, each page judged) and on one that
does not (the whole site, as the approval said)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from proxy_testkit import FACEBOOK_IP, OTHER_IP, PUPIL, TRUSTED_PUPIL, Harness
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy.engine import CompiledPolicy, decide
from schoolgate.policy.types import Client, Decision, ExceptionScope, PolicyException, SiteBlock, Target
from schoolgate.proxy.addons import REFUSED, Services

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)
LATER = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.fixture
def known_clients() -> dict[str, Client]:
    return {c.ip: c for c in (PUPIL, TRUSTED_PUPIL)}


def overlay(services: Services, policy: CompiledPolicy, **parts: object) -> None:
    layered = policy.with_overlay(**parts)  # type: ignore[arg-type]

    def decide_now(client: Client, target: Target, now: datetime) -> Decision:
        return decide(layered, client, target, now)

    services.decide = decide_now


def test_a_page_exception_is_held_at_its_prefix_on_a_trusting_device(
    harness: Harness, services: Services, policy: CompiledPolicy
) -> None:
    exception = PolicyException(
        id=7, scope=ExceptionScope.ROLE, subject="pupil", domain=None,
        url_prefix="https://www.facebook.com/kingswoodpta", starts=LONG_AGO, expires=LATER,
    )
    overlay(services, policy, exceptions=[exception])
    ctx = harness.connect(TRUSTED_PUPIL, FACEBOOK_IP)
    assert harness.hello(ctx, "www.facebook.com").ignore_connection is False  # intercepted, to see pages
    ctx.client.tls = True
    inside = harness.request(ctx, "https://www.facebook.com/kingswoodpta/photos")
    assert inside.response is None and harness.server_connect(ctx).error is None  # forwarded
    outside = harness.request(ctx, "https://www.facebook.com/someone-else")
    assert outside.response is not None and outside.response.status_code == 403  # the block page
    # A device that does not trust the school CA cannot be intercepted: the whole site opens,
    # which is what the triage and decision pages told the headteacher before she signed.
    other = harness.connect(PUPIL, FACEBOOK_IP)
    assert harness.hello(other, "www.facebook.com").ignore_connection is True
    assert harness.server_connect(other).error is None


def test_a_page_block_is_held_at_its_prefix_or_closes_the_site(
    harness: Harness, services: Services, policy: CompiledPolicy, sessions: sessionmaker[Session]
) -> None:
    block = SiteBlock(id=3, domain=None, url_prefix="https://news.example/nasty", roles=frozenset())
    overlay(services, policy, blocks=[block])
    ctx = harness.connect(TRUSTED_PUPIL, OTHER_IP)
    assert harness.hello(ctx, "news.example").ignore_connection is False
    ctx.client.tls = True
    ok = harness.request(ctx, "https://news.example/sport")
    assert ok.response is None
    nasty = harness.request(ctx, "https://news.example/nasty/story")
    assert nasty.response is not None and nasty.response.status_code == 403
    other = harness.connect(PUPIL, OTHER_IP)
    assert harness.hello(other, "news.example").ignore_connection is True
    assert harness.server_connect(other).error == REFUSED  # the whole site is closed to it
