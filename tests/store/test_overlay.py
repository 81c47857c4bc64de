"""The policy overlay read from the database, and the generation counters daemons poll."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy.types import Ban, ExceptionScope, PolicyException, Role, SiteBlock
from schoolgate.store.models import BanRow, PolicyExceptionRow, SiteBlockRow
from schoolgate.store.overlay import POLICY_OVERLAY, bump_generation, load_overlay, read_generation

SITE = "testschool"
NOW = datetime(2026, 11, 23, 11, 0, tzinfo=UTC)
H = timedelta(hours=1)


def exception(**kw: object) -> PolicyExceptionRow:
    values: dict[str, object] = {
        "site": SITE,
        "scope": "person",
        "subject": "p1",
        "domain": "youtube.com",
        "starts": NOW - H,
        "expires": NOW + H,
        "created_by": "head",
    }
    values.update(kw)
    return PolicyExceptionRow(**values)


def ban(**kw: object) -> BanRow:
    values: dict[str, object] = {
        "site": SITE,
        "device_id": "LAP-1",
        "starts": NOW - H,
        "until": NOW + H,
        "created_by": "dsl",
    }
    values.update(kw)
    return BanRow(**values)


def block(**kw: object) -> SiteBlockRow:
    values: dict[str, object] = {"site": SITE, "domain": "bad.example", "created_by": "tech"}
    values.update(kw)
    return SiteBlockRow(**values)


def test_overlay_holds_current_and_future_items_only(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        current = exception(reason="topic work")
        future = exception(subject="p2", starts=NOW + H, expires=NOW + 2 * H)
        s.add_all(
            [
                current,
                future,
                exception(subject="expired", expires=NOW - timedelta(seconds=1)),
                exception(subject="revoked", revoked_at=NOW - H),
                exception(site="elsewhere"),
                exception(subject="bad-scope", scope="planet"),
                exception(subject="no-target", domain=None),
            ]
        )
        live_ban = ban(mac="02:AA:BB:CC:DD:EE", reason="VPN use")
        s.add_all([live_ban, ban(device_id="old", until=NOW - H), ban(device_id="lifted", lifted_at=NOW)])
        s.add_all([ban(device_id=None)])  # names nobody
        every_role = block(reason="report 3")
        pupils = block(domain=None, url_prefix="https://x.example/a", roles="pupil, guest")
        odd = block(domain="odd.example", roles="pupil,wizard")
        s.add_all([every_role, pupils, odd, block(domain="gone.example", removed_at=NOW)])
        bump_generation(s, SITE)
    with sessions() as s:
        overlay = load_overlay(s, SITE, NOW)
    assert overlay.generation == 1
    assert overlay.exceptions == (
        PolicyException(
            id=current.id,
            scope=ExceptionScope.PERSON,
            subject="p1",
            domain="youtube.com",
            url_prefix=None,
            starts=NOW - H,
            expires=NOW + H,
            reason="topic work",
        ),
        PolicyException(
            id=future.id,
            scope=ExceptionScope.PERSON,
            subject="p2",
            domain="youtube.com",
            url_prefix=None,
            starts=NOW + H,
            expires=NOW + 2 * H,
        ),
    )
    assert overlay.bans == (
        Ban(
            id=live_ban.id,
            device_id="LAP-1",
            person_id=None,
            mac="02:aa:bb:cc:dd:ee",
            starts=NOW - H,
            until=NOW + H,
            reason="VPN use",
        ),
    )
    assert overlay.site_blocks == (
        SiteBlock(id=every_role.id, domain="bad.example", url_prefix=None, roles=frozenset(), reason="report 3"),
        SiteBlock(
            id=pupils.id,
            domain=None,
            url_prefix="https://x.example/a",
            roles=frozenset({Role.PUPIL, Role.GUEST}),
        ),
        SiteBlock(id=odd.id, domain="odd.example", url_prefix=None, roles=frozenset({Role.PUPIL})),
    )
    skipped = "\n".join(overlay.skipped)
    for expected in ("unknown scope 'planet'", "neither a domain", "names no device", "wizard"):
        assert expected in skipped


def test_overlay_needs_an_aware_time(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, pytest.raises(ValueError, match="aware"):
        load_overlay(s, SITE, NOW.replace(tzinfo=None))


def test_generations_count_per_site_and_name(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        assert read_generation(s, SITE) == 0
    with sessions.begin() as s:
        assert bump_generation(s, SITE) == 1
        assert bump_generation(s, SITE) == 2
        assert bump_generation(s, "elsewhere") == 1
        assert bump_generation(s, SITE, "devices") == 1
    with sessions() as s:
        assert read_generation(s, SITE, POLICY_OVERLAY) == 2
        assert read_generation(s, "elsewhere") == 1
        assert read_generation(s, SITE, "devices") == 1


def test_a_rolled_back_bump_is_not_seen(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        bump_generation(s, SITE)
    with sessions() as s:
        bump_generation(s, SITE)
        s.rollback()
    with sessions() as s:
        assert read_generation(s, SITE) == 1
