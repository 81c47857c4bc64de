"""The dashboard never shows a stale picture as current: as of when, and whether the scheduler runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from console_testkit import SITE, Console, add_event

from schoolgate.services import rollups
from schoolgate.store.models import DaemonStatus


def _heartbeat(console: Console, age: timedelta) -> None:
    wall = datetime.now(UTC)
    with console.session() as session:
        row = session.get(DaemonStatus, (SITE, "scheduler"))
        if row is None:
            row = DaemonStatus(site=SITE, name="scheduler", pid=1, started_at=wall, stats="{}")
            session.add(row)
        row.heartbeat_at = wall - age
        session.commit()


def test_figures_say_as_of_when_and_a_dead_scheduler_is_named(console: Console) -> None:
    client = console.login("headteacher")
    page = client.get("/dashboard").get_data(as_text=True)
    assert 'id="scheduler-down"' in page and "never run" in page and "No figures counted yet" in page
    now = console.clock.now()
    with console.session() as session:
        add_event(session, ts=now - timedelta(minutes=2))
        rollups.catch_up(session, SITE, now, zone=ZoneInfo("Europe/London"))  # the example's zone
        rollups.mark_ran(session, SITE, now)
        session.commit()
    _heartbeat(console, timedelta(seconds=10))
    page = client.get("/dashboard").get_data(as_text=True)
    assert 'id="scheduler-down"' not in page
    assert "Figures as of today, 10:35 am" in page  # the school's time, in words
    assert '<span class="value" id="today-blocked">1</span>' in page
    # The scheduler stops: the same figures are now shown as of then, under a warning.
    _heartbeat(console, timedelta(minutes=10))
    console.clock.advance(minutes=10)
    page = client.get("/dashboard").get_data(as_text=True)
    assert 'id="scheduler-down"' in page and "The scheduler is not running" in page
    assert "The figures below are as of today, 10:35 am, not now." in page


def test_content_lists_that_need_attention_are_named(console: Console) -> None:
    from schoolgate.lists.state import ListState, state_dir_of

    client = console.login("headteacher")
    page = client.get("/dashboard").get_data(as_text=True)
    assert 'id="list-warnings"' in page and "ut1: no version installed yet" in page
    state = ListState(state_dir_of(console.config))
    now = console.clock.now()
    fresh = {"version": "ut1-1.sgl", "installed_at": now.isoformat(), "verified_at": now.isoformat(),
             "entries": {"gambling": 100}}
    state.write_manifest({"lists": {"ut1": fresh}})
    assert 'id="list-warnings"' not in client.get("/dashboard").get_data(as_text=True)
    console.clock.advance(days=4)
    page = console.login("headteacher").get("/dashboard").get_data(as_text=True)  # a new sign-in
    assert 'id="list-warnings"' in page and "(STALE)" in page
