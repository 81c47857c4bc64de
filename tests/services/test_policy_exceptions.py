"""Listing and revoking exceptions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from schoolgate.services import policy_exceptions as px
from schoolgate.services.actor import Actor
from schoolgate.services.errors import Forbidden, InvalidTransition, NotFound
from schoolgate.store.models import PolicyExceptionRow
from schoolgate.store.overlay import load_overlay, read_generation

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)


def exception(session: Session, starts: datetime, expires: datetime, **fields: object) -> PolicyExceptionRow:
    row = PolicyExceptionRow(
        site=SITE,
        scope="device",
        subject="A",
        domain="a.example",
        starts=starts,
        expires=expires,
        created_by="head",
        **fields,
    )
    session.add(row)
    session.flush()
    return row


def test_states_and_revoke(session: Session, technician: Actor, dsl: Actor) -> None:
    active = exception(session, NOW - timedelta(days=1), NOW + timedelta(days=1))
    upcoming = exception(session, NOW + timedelta(days=1), NOW + timedelta(days=2))
    ended = exception(session, NOW - timedelta(days=3), NOW - timedelta(days=2))
    exception(session, NOW - timedelta(days=1), NOW + timedelta(days=1), revoked_at=NOW - timedelta(hours=1))
    assert [r.id for r in px.list_exceptions(session, SITE, now=NOW).items] == [active.id]
    assert [r.id for r in px.list_exceptions(session, SITE, now=NOW, state=px.UPCOMING).items] == [upcoming.id]
    assert px.list_exceptions(session, SITE, now=NOW, state=px.ENDED).total == 2
    assert px.list_exceptions(session, SITE, now=NOW, state=px.ALL).total == 4
    assert px.exception_state(ended, NOW) == px.ENDED

    with pytest.raises(Forbidden):
        px.revoke_exception(session, site=SITE, now=NOW, actor=dsl, exception_id=active.id, reason="x")
    before = read_generation(session, SITE)
    px.revoke_exception(session, site=SITE, now=NOW, actor=technician, exception_id=active.id, reason="misused")
    assert active.revoked_at == NOW and read_generation(session, SITE) == before + 1
    assert [e.id for e in load_overlay(session, SITE, NOW).exceptions] == [upcoming.id]
    with pytest.raises(InvalidTransition):
        px.revoke_exception(session, site=SITE, now=NOW, actor=technician, exception_id=active.id, reason="x")
    with pytest.raises(InvalidTransition):
        px.revoke_exception(session, site=SITE, now=NOW, actor=technician, exception_id=ended.id, reason="x")
    with pytest.raises(NotFound):
        px.revoke_exception(session, site=SITE, now=NOW, actor=technician, exception_id=9999, reason="x")
