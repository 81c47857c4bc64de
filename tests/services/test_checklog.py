"""The filtering check log: manual checks, fixes and self-test runs, as the DfE standard asks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services import checklog
from schoolgate.services.actor import Actor
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition, NotFound
from schoolgate.store.models import AuditEntry

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)


def form(**changes: object) -> checklog.ManualCheckForm:
    values: dict[str, object] = {
        "device_type": "Class iPad",
        "location": "Year 5 classroom",
        "profile": "pupil (Pupil Wi-Fi)",
        "tried": "Tried a blocked social media site",
        "result": "pass",
    }
    values.update(changes)
    return checklog.ManualCheckForm(**values)  # type: ignore[arg-type]


def test_a_manual_check_is_recorded_with_the_dfe_fields_and_audited(session: Session, technician: Actor) -> None:
    row = checklog.record_manual_check(session, site=SITE, actor=technician, form=form(), now=NOW)
    assert (row.kind, row.at, row.actor, row.actor_name) == ("manual", NOW, "tech", "Mr T Nguyen")
    assert (row.device_type, row.location, row.profile, row.result) == (
        "Class iPad", "Year 5 classroom", "pupil (Pupil Wi-Fi)", "pass",
    )
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "check.record")).one()
    assert entry.object_id == str(row.id) and entry.actor == "tech"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"device_type": " "}, "device_type"),
        ({"location": ""}, "location"),
        ({"profile": ""}, "profile"),
        ({"tried": ""}, "tried"),
        ({"result": "maybe"}, "result"),
        ({"result": "fail"}, "action"),  # a failure needs the action taken
        ({"location": "Hall\x00"}, "location"),
        ({"at": NOW + timedelta(hours=1)}, "at"),
        ({"at": NOW - timedelta(days=40)}, "at"),
        ({"tried": "x" * 4001}, "tried"),
    ],
)
def test_bad_manual_checks_name_the_field(session: Session, technician: Actor, changes: dict[str, object],
                                          field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        checklog.record_manual_check(session, site=SITE, actor=technician, form=form(**changes), now=NOW)
    assert caught.value.field == field


def test_only_staff_who_check_filtering_may_record(session: Session) -> None:
    admin = Actor(name="admin", display_name="Admin", roles=frozenset({"admin"}))
    with pytest.raises(Forbidden):
        checklog.record_manual_check(session, site=SITE, actor=admin, form=form(), now=NOW)


def test_a_fix_answers_a_failed_check_and_clears_it_from_the_unfixed_list(session: Session, technician: Actor,
                                                                          dsl: Actor) -> None:
    failed = checklog.record_manual_check(
        session, site=SITE, actor=dsl, now=NOW,
        form=form(result="fail", action="Passed to the ICT technician", location="Library"),
    )
    passed = checklog.record_manual_check(session, site=SITE, actor=technician, form=form(), now=NOW)
    assert [c.id for c in checklog.unfixed_failures(session, SITE)] == [failed.id]
    with pytest.raises(InvalidTransition):
        checklog.record_fix(session, site=SITE, actor=technician, check_id=passed.id, action="x", now=NOW)
    with pytest.raises(InvalidInput):
        checklog.record_fix(session, site=SITE, actor=technician, check_id=failed.id, action=" ", now=NOW)
    fix = checklog.record_fix(session, site=SITE, actor=technician, check_id=failed.id,
                              action="The library PCs were on the old proxy: moved to schoolgate", now=NOW)
    assert (fix.kind, fix.fixes_id, fix.location, fix.result) == ("fix", failed.id, "Library", "pass")
    assert checklog.unfixed_failures(session, SITE) == []
    with pytest.raises(InvalidTransition):
        checklog.record_fix(session, site=SITE, actor=technician, check_id=fix.id, action="again", now=NOW)


def test_checks_of_another_school_are_not_found(session: Session, technician: Actor) -> None:
    row = checklog.record_manual_check(session, site="otherschool", actor=technician, form=form(), now=NOW)
    with pytest.raises(NotFound):
        checklog.get_check(session, SITE, row.id)
    assert checklog.list_checks(session, SITE).total == 0
    assert checklog.list_checks(session, ("otherschool", SITE)).total == 1


def test_selftests_are_logged_and_listed_by_kind_and_result(session: Session, technician: Actor) -> None:
    outcome = checklog.SelftestOutcome(
        at=NOW, trigger="morning", passed=False, failures=2, filtering_down=True, duration_ms=1234,
        tried="DNS for 5 categories from 3 networks", action="Restart schoolgate-dns", profiles="pupil, staff",
        detail={"results": [{"check": "dns", "status": "fail", "message": "no answer"}]},
    )
    row = checklog.record_selftest(session, site=SITE, outcome=outcome)
    checklog.record_manual_check(session, site=SITE, actor=technician, form=form(), now=NOW + timedelta(minutes=1))
    assert (row.kind, row.result, row.filtering_down, row.actor) == ("selftest", "fail", True, "system:selftest")
    assert checklog.detail_of(row)["results"][0]["message"] == "no answer"
    assert checklog.last_selftest(session, SITE) is row
    assert [c.kind for c in checklog.list_checks(session, SITE).items] == ["manual", "selftest"]
    assert [c.id for c in checklog.list_checks(session, SITE, result="fail").items] == [row.id]
    assert [c.id for c in checklog.list_checks(session, SITE, kind="selftest").items] == [row.id]
    window = checklog.checks_between(session, SITE, NOW, NOW + timedelta(minutes=1))
    assert [c.id for c in window] == [row.id]
    checklog.mark_notified(session, row.id, ["tech@school.example", "dsl@school.example"])
    assert row.notified == "tech@school.example, dsl@school.example"


def test_recent_choices_offer_the_last_places_first(session: Session, technician: Actor) -> None:
    for minutes, place in enumerate(("Hall", "Library", "Hall", "Year 2")):
        checklog.record_manual_check(session, site=SITE, actor=technician, form=form(location=place),
                                     now=NOW + timedelta(minutes=minutes))
    assert checklog.recent_choices(session, SITE)["location"] == ["Year 2", "Hall", "Library"]
