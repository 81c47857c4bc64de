"""The one permission table: its safety properties, and the services checking it for every role.

The console's routes are checked against the same table in tests/console/test_access.py; here
every service entry point that changes something is called by someone holding each role, and
must refuse exactly those the table refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from schoolgate.services import (
    access_requests,
    alerts,
    bans,
    checklog,
    policy_exceptions,
    register,
    reports,
    site_blocks,
)
from schoolgate.services.actor import Actor, Signature
from schoolgate.services.errors import Forbidden, ServiceError
from schoolgate.services.permissions import (
    GRANTS,
    POLICY_GRANTS,
    ROLES,
    ConsoleRole,
    Permission,
    holders_text,
    permissions_of,
)

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)  # a Tuesday in term, 10:00 in London
MISSING = 987_654  # no record has this id: a permitted call gets as far as "not found"


def test_every_permission_has_holders_and_every_role_a_description() -> None:
    assert set(GRANTS) == set(Permission)
    assert all(GRANTS[p] for p in Permission), "a permission nobody holds is dead code"
    assert set(ROLES) == set(ConsoleRole)


@pytest.mark.parametrize(
    ("permission", "only"),
    [
        # Seed 001 §9: the headteacher approves; §3: the headteacher authorises social media access.
        (Permission.DECIDE_REQUEST, {ConsoleRole.HEADTEACHER}),
        (Permission.AUTHORISE_ACCESS, {ConsoleRole.HEADTEACHER}),
        (Permission.GRANT_GUARDED_ROLES, {ConsoleRole.HEADTEACHER}),
        (Permission.TRIAGE_REQUEST, {ConsoleRole.TECHNICIAN}),
        # Safeguarding cases and detail name children.
        (Permission.VIEW_ALERTS, {ConsoleRole.DSL, ConsoleRole.HEADTEACHER}),
        (Permission.MANAGE_ALERTS, {ConsoleRole.DSL, ConsoleRole.HEADTEACHER}),
        (Permission.BAN_DEVICE, {ConsoleRole.DSL, ConsoleRole.HEADTEACHER}),
        (Permission.READ_SAFEGUARDING_DETAIL, {ConsoleRole.DSL}),
        (Permission.MANAGE_USERS, {ConsoleRole.ADMIN}),
    ],
)
def test_the_powers_that_protect_children_are_held_by_the_right_people(
    permission: Permission, only: set[ConsoleRole]
) -> None:
    assert set(GRANTS[permission]) == only


def test_no_role_both_proposes_and_approves_an_exception() -> None:
    assert not GRANTS[Permission.TRIAGE_REQUEST] & GRANTS[Permission.DECIDE_REQUEST]


def test_trust_wide_roles_only_read() -> None:
    for spec in ROLES.values():
        if spec.trust_wide:
            held = permissions_of({spec.role})
            reads = {Permission.SWITCH_SCHOOL, Permission.REVIEW_PACK}
            assert all(p.value.startswith("view_") or p in reads for p in held), held
            assert Permission.VIEW_ALERTS not in held and Permission.READ_SAFEGUARDING_DETAIL not in held


def test_guarded_and_approving_roles_need_a_second_factor() -> None:
    for spec in ROLES.values():
        if spec.guarded or Permission.DECIDE_REQUEST in permissions_of({spec.role}):
            assert spec.second_factor, spec.role


def test_a_policy_can_widen_only_what_the_table_lets_it() -> None:
    wide = {Permission.READ_SAFEGUARDING_DETAIL: frozenset({"headteacher", "technician", "trust_admin"}),
            Permission.DECIDE_REQUEST: frozenset({"technician"})}
    assert Permission.READ_SAFEGUARDING_DETAIL in permissions_of({"headteacher"}, wide)
    assert Permission.READ_SAFEGUARDING_DETAIL not in permissions_of({"headteacher"})
    for role in ("technician", "trust_admin", "admin"):
        assert Permission.READ_SAFEGUARDING_DETAIL not in permissions_of({role}, wide)
    assert Permission.DECIDE_REQUEST not in permissions_of({"technician"}, wide)
    assert set(POLICY_GRANTS) == {Permission.READ_SAFEGUARDING_DETAIL}


def test_refusals_name_who_may() -> None:
    assert holders_text(Permission.DECIDE_REQUEST) == "the headteacher"
    assert holders_text(Permission.REVOKE_EXCEPTION) == "the ICT technician or the headteacher"
    with pytest.raises(Forbidden, match="Only the headteacher can approve"):
        Actor("t", "T", frozenset({"technician"})).require(Permission.DECIDE_REQUEST, doing="approve requests")


# -- the services check the table ---------------------------------------------------------------


def _signature(actor: Actor, now: Any) -> Signature:
    return Signature(user_id=actor.user_id or 0, username=actor.name, name=actor.display_name, signed_at=now,
                     method="password+totp")


Call = Callable[[Session, Actor, Any, Any], object]
CALLS: list[tuple[str, Permission, Call]] = [
    ("triage a request", Permission.TRIAGE_REQUEST, lambda s, a, now, policy: access_requests.triage_request(
        s, site=SITE, now=now, actor=a, request_id=MISSING, policy=policy,
        form=access_requests.TriageForm(technician_notes="n", risks_and_controls="r", target="domain",
                                        value="example.org", scope="role", subject="pupil", starts=now,
                                        expires=now + timedelta(days=1)))),
    ("decide a request", Permission.DECIDE_REQUEST, lambda s, a, now, policy: access_requests.decide_request(
        s, site=SITE, now=now, actor=a, request_id=MISSING, policy=policy,
        decision=access_requests.DecisionForm(approve=False, reasons="no", signature=_signature(a, now)))),
    ("withdraw a request", Permission.WITHDRAW_REQUEST, lambda s, a, now, policy: access_requests.withdraw_request(
        s, site=SITE, now=now, actor=a, request_id=MISSING, reason="not needed")),
    ("edit a device", Permission.EDIT_REGISTERS, lambda s, a, now, policy: register.update_device(
        s, site=SITE, now=now, actor=a, device_pk=MISSING, form=register.DeviceForm(device_id="D1", name="D"))),
    ("edit a person", Permission.EDIT_REGISTERS, lambda s, a, now, policy: register.update_person(
        s, site=SITE, now=now, actor=a, person_pk=MISSING,
        form=register.PersonForm(external_id="P1", name="P", role="pupil"))),
    ("delete a device", Permission.EDIT_REGISTERS, lambda s, a, now, policy: register.delete_device(
        s, site=SITE, now=now, actor=a, device_pk=MISSING)),
    ("authorise a person", Permission.AUTHORISE_ACCESS, lambda s, a, now, policy: register.set_person_authorised(
        s, site=SITE, now=now, actor=a, person_pk=MISSING, authorised=True, reason="runs the page")),
    ("authorise a device", Permission.AUTHORISE_ACCESS, lambda s, a, now, policy: register.set_device_authorised(
        s, site=SITE, now=now, actor=a, device_pk=MISSING, authorised=True, reason="runs the page")),
    ("remove a site block", Permission.EDIT_POLICY, lambda s, a, now, policy: site_blocks.remove_site_block(
        s, site=SITE, now=now, actor=a, block_id=MISSING, reason="x")),
    ("revoke an exception", Permission.REVOKE_EXCEPTION, lambda s, a, now, policy:
        policy_exceptions.revoke_exception(s, site=SITE, now=now, actor=a, exception_id=MISSING, reason="x")),
    ("action a report", Permission.ACTION_REPORT, lambda s, a, now, policy: reports.action_report(
        s, site=SITE, now=now, actor=a, report_id=MISSING, action_taken="blocked")),
    ("close a report", Permission.ACTION_REPORT, lambda s, a, now, policy: reports.close_report(
        s, site=SITE, now=now, actor=a, report_id=MISSING, note="done")),
    ("lift a ban", Permission.BAN_DEVICE, lambda s, a, now, policy: bans.lift_ban(
        s, site=SITE, now=now, actor=a, ban_id=MISSING, reason="served")),
    ("record a check fix", Permission.RECORD_CHECK, lambda s, a, now, policy: checklog.record_fix(
        s, site=SITE, actor=a, check_id=MISSING, action="reloaded the lists", now=now)),
    ("note on a case", Permission.MANAGE_ALERTS, lambda s, a, now, policy: alerts.add_note(
        s, site=SITE, now=now, actor=a, alert_id=MISSING, text="spoke to parents")),
]


@pytest.mark.parametrize("role", list(ConsoleRole))
@pytest.mark.parametrize(("what", "permission", "call"), CALLS, ids=[c[0] for c in CALLS])
def test_services_refuse_exactly_whom_the_table_refuses(
    session: Session, policy: Any, role: ConsoleRole, what: str, permission: Permission, call: Call
) -> None:
    actor = Actor(name=f"{role.value}-user", display_name="Someone", roles=frozenset({role.value}), user_id=7)
    try:
        call(session, actor, NOW, policy)
    except Forbidden:
        refused = True
    except ServiceError:
        refused = False  # got past the permission check, to "there is no such record"
    else:
        refused = False
    assert refused == (permission not in permissions_of({role})), (what, role)
