"""Access requests as seed 001 §9 has them: the technician forwards every request (an unfit one
with a recommendation to decline), the DSL adds the safeguarding risks of one that opens a site
to pupils, and the headteacher decides, reading what the approval would really open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.policy import CompiledPolicy
from schoolgate.policy.types import ExceptionScope
from schoolgate.services import access_requests as ar
from schoolgate.services.actor import Actor, Signature
from schoolgate.services.approval_scope import Coverage, EnforcedScope, enforced_scope, opens_to_pupils
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition
from schoolgate.store.models import AuditEntry, Device, Person, PolicyExceptionRow

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)
PAGE = "https://www.facebook.com/groups/school-eco-club"


@pytest.fixture
def register(session: Session) -> None:
    """6B: one pupil with a laptop that trusts the school CA, one with an iPad that does not."""
    ada = Person(site=SITE, external_id="P1", name="Ada", role="pupil", year_group=6, groups="6B")
    ben = Person(site=SITE, external_id="P2", name="Ben", role="pupil", year_group=6, groups="6B")
    green = Person(site=SITE, external_id="T1", name="Mr Green", role="staff", groups="teachers")
    session.add_all([ada, ben, green])
    session.flush()
    session.add_all([
        Device(site=SITE, device_id="LAP-1", name="Laptop 1", mac="02:00:00:00:00:01", person_id=ada.id,
               trusts_school_ca=True),
        Device(site=SITE, device_id="IPAD-2", name="iPad 2", mac="02:00:00:00:00:02", person_id=ben.id),
        Device(site=SITE, device_id="LAP-T1", name="Teacher laptop", person_id=green.id, trusts_school_ca=True),
        Device(site=SITE, device_id="CLASS-IPAD", name="Class iPad", role="pupil"),
    ])
    session.flush()


def sign(actor: Actor) -> Signature:
    assert actor.user_id is not None
    return Signature(user_id=actor.user_id, username=actor.name, name=actor.display_name, signed_at=NOW,
                     method="password+totp")


def submit(session: Session, policy: CompiledPolicy) -> int:
    form = ar.RequestForm(requester="Ada (6B)", url=PAGE, reasons="Our eco club's page", device_id="LAP-1",
                          client_ip="10.20.0.1")
    return ar.submit_request(session, site=SITE, now=NOW, form=form, policy=policy).request.id


def triage(
    session: Session, policy: CompiledPolicy, actor: Actor, request_id: int, **fields: object
) -> ar.AccessRequest:
    values: dict[str, object] = {
        "technician_notes": "A closed group run by the eco club's teacher.",
        "risks_and_controls": "Comments from strangers: the teacher supervises.",
        "target": "domain", "value": "facebook.com", "scope": "group", "subject": "6B",
        "starts": NOW, "expires": NOW + timedelta(days=7),
    }
    values.update(fields)
    return ar.triage_request(session, site=SITE, now=NOW, actor=actor, request_id=request_id, policy=policy,
                             form=ar.TriageForm(**values))  # type: ignore[arg-type]


def decide(session: Session, policy: CompiledPolicy, actor: Actor, request_id: int, *, approve: bool = True,
           reasons: str = "", scope_seen: str | None = None) -> ar.AccessRequest:
    # Decided as from the page: with the fingerprint of the proposal the page showed.
    read = ar.proposal_fingerprint(ar.get_request(session, SITE, request_id))
    return ar.decide_request(session, site=SITE, now=NOW, actor=actor, request_id=request_id, policy=policy,
                             decision=ar.DecisionForm(approve, reasons, sign(actor), proposal=read,
                                                      scope_seen=scope_seen))


# ------------------------------------------------------------------------------ the statement


@pytest.mark.parametrize(
    ("coverage", "opening", "says"),
    [
        (None, True, "This opens the whole of example.org and its subdomains, on every device it covers."),
        (Coverage(seen=2, unseen=0, unregistered=False), True,
         "This opens only pages under https://www.example.org/a: every device it covers (2 devices) trusts"),
        (Coverage(seen=0, unseen=3, unregistered=False), True,
         "This opens the whole of www.example.org, not only pages under https://www.example.org/a: the devices"),
        (Coverage(seen=1, unseen=1, unregistered=False), True,
         "This opens pages under https://www.example.org/a on the 1 device that trust the school's certificate, "
         "but the whole of www.example.org on 1 other registered device"),
        (Coverage(seen=4, unseen=0, unregistered=True), False,
         "This closes pages under https://www.example.org/a on the 4 devices that trust the school's certificate, "
         "but the whole of www.example.org on any device the register does not know"),
        (Coverage(seen=0, unseen=0, unregistered=False), True, "No registered device is covered today."),
    ],
)
def test_the_statement_never_says_less_than_is_enforced(coverage: Coverage | None, opening: bool, says: str) -> None:
    target = "domain" if coverage is None else "url"
    value = "example.org" if coverage is None else "https://www.example.org/a"
    statement = EnforcedScope(target=target, value=value, host="www.example.org" if coverage else "example.org",
                              coverage=coverage)
    assert statement.sentence(opening=opening).startswith(says), statement.sentence(opening=opening)
    whole = coverage is not None and not (coverage.seen and not coverage.unseen and not coverage.unregistered)
    assert statement.whole_site_somewhere is whole


@pytest.mark.parametrize(
    ("scope", "subject", "seen", "unseen", "unregistered"),
    [
        (ExceptionScope.DEVICE, "LAP-1", 1, 0, False),
        (ExceptionScope.DEVICE, "02:00:00:00:00:02", 0, 1, False),  # by MAC, as the policy matches it
        (ExceptionScope.PERSON, "P2", 0, 1, False),
        (ExceptionScope.GROUP, "6B", 1, 1, False),
        (ExceptionScope.ROLE, "pupil", 1, 2, True),  # the class iPad's own role counts
        (ExceptionScope.ROLE, "staff", 1, 0, True),
    ],
)
def test_which_devices_a_scope_covers(
    session: Session, register: None, scope: ExceptionScope, subject: str, seen: int, unseen: int, unregistered: bool
) -> None:
    statement = enforced_scope(session, SITE, target="url", value=PAGE, scope=scope, subject=subject)
    assert statement.coverage == Coverage(seen=seen, unseen=unseen, unregistered=unregistered)


@pytest.mark.parametrize(
    ("scope", "subject", "pupils"),
    [
        (ExceptionScope.ROLE, "pupil", True), (ExceptionScope.ROLE, "staff", False),
        (ExceptionScope.GROUP, "6B", True), (ExceptionScope.GROUP, "teachers", False),
        (ExceptionScope.PERSON, "P1", True), (ExceptionScope.PERSON, "T1", False),
        (ExceptionScope.DEVICE, "IPAD-2", True), (ExceptionScope.DEVICE, "CLASS-IPAD", True),
        (ExceptionScope.DEVICE, "LAP-T1", False), (ExceptionScope.DEVICE, "NOT-REGISTERED", False),
    ],
)
def test_which_proposals_open_a_site_to_pupils(
    session: Session, register: None, scope: ExceptionScope, subject: str, pupils: bool
) -> None:
    assert opens_to_pupils(session, SITE, scope, subject) is pupils


# ------------------------------------------------------------------------------- the journey


def test_a_page_for_some_devices_that_cannot_be_held_at_the_prefix_must_be_confirmed(
    session: Session, policy: CompiledPolicy, register: None, technician: Actor, headteacher: Actor, dsl: Actor
) -> None:
    request_id = submit(session, policy)
    with pytest.raises(InvalidInput) as refused:
        triage(session, policy, technician, request_id, target="url", value=PAGE, scope="group", subject="6B")
    assert refused.value.field == "scope_confirmed"
    assert "the whole of www.facebook.com on 1 other registered device" in refused.value.message
    assert ar.get_request(session, SITE, request_id).status == ar.SUBMITTED
    request = triage(session, policy, technician, request_id, target="url", value=PAGE, scope="group",
                     subject="6B", scope_confirmed=True)
    assert request.needs_dsl and ar.awaits_dsl(request)
    shown = request.enforced_scope
    assert shown.startswith("This opens pages under " + PAGE)
    # The headteacher cannot approve before the DSL has added the safeguarding risks.
    with pytest.raises(InvalidTransition, match="the DSL adds the safeguarding risks"):
        decide(session, policy, headteacher, request_id, scope_seen=shown)
    with pytest.raises(Forbidden):
        ar.review_safeguarding(session, site=SITE, now=NOW, actor=technician, request_id=request_id, notes="x")
    ar.review_safeguarding(session, site=SITE, now=NOW, actor=dsl, request_id=request_id,
                           notes="Pupils could see strangers' comments: the teacher checks the group first.")
    approved = decide(session, policy, headteacher, request_id, scope_seen=shown)
    exception = session.get(PolicyExceptionRow, approved.exception_id)
    assert exception is not None and exception.enforced_scope == shown == approved.enforced_scope
    assert approved.dsl_reviewed_by == "Ms D Shah" and "strangers' comments" in approved.safeguarding_notes
    actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))
    assert actions[-4:] == ["request.triage", "request.safeguarding", "request.approve", "exception.create"]


def test_an_approval_is_refused_when_what_it_opens_changed_after_the_page_was_read(
    session: Session, policy: CompiledPolicy, register: None, technician: Actor, headteacher: Actor, dsl: Actor
) -> None:
    request_id = submit(session, policy)
    request = triage(session, policy, technician, request_id, target="url", value=PAGE, scope="device",
                     subject="LAP-1")
    ar.review_safeguarding(session, site=SITE, now=NOW, actor=dsl, request_id=request_id, notes="Closed group.")
    shown = request.enforced_scope
    assert shown.startswith("This opens only pages under")  # the one device trusts the certificate
    laptop = session.scalars(select(Device).where(Device.device_id == "LAP-1")).one()
    laptop.trusts_school_ca = False  # the laptop was reset since
    session.flush()
    with pytest.raises(InvalidTransition, match="has changed since you opened the page: This opens the whole of"):
        decide(session, policy, headteacher, request_id, scope_seen=shown)
    assert ar.get_request(session, SITE, request_id).status == ar.FORWARDED


def test_a_request_the_technician_judges_unfit_goes_to_the_headteacher(
    session: Session, policy: CompiledPolicy, technician: Actor, headteacher: Actor
) -> None:
    request_id = submit(session, policy)
    request = triage(session, policy, technician, request_id, recommendation=ar.DECLINE, risks_and_controls="",
                     target="", value="", scope="", subject="", starts=None, expires=None)
    assert (request.status, request.technician_recommendation, request.proposed_scope) == (
        ar.FORWARDED, ar.DECLINE, None)
    with pytest.raises(Forbidden):  # no closing it: the headteacher decides
        ar.withdraw_request(session, site=SITE, now=NOW, actor=technician, request_id=request_id, reason="unfit")
    with pytest.raises(InvalidTransition, match="recommends declining"):
        decide(session, policy, headteacher, request_id)
    declined = decide(session, policy, headteacher, request_id, approve=False, reasons="As the technician advises")
    assert declined.status == ar.DECLINED


def test_a_changed_proposal_goes_back_to_the_dsl(
    session: Session, policy: CompiledPolicy, register: None, technician: Actor, dsl: Actor
) -> None:
    request_id = submit(session, policy)
    triage(session, policy, technician, request_id)
    ar.review_safeguarding(session, site=SITE, now=NOW, actor=dsl, request_id=request_id, notes="Closed group.")
    same = triage(session, policy, technician, request_id, technician_notes="Checked again: unchanged.")
    assert not ar.awaits_dsl(same)  # the notes changed, the proposal did not
    wider = triage(session, policy, technician, request_id, scope="role", subject="pupil")
    assert ar.awaits_dsl(wider) and wider.dsl_reviewed_at is None
    staff_only = triage(session, policy, technician, request_id, scope="role", subject="staff")
    assert not staff_only.needs_dsl and not ar.awaits_dsl(staff_only)
    with pytest.raises(InvalidTransition, match="does not wait for the DSL"):
        ar.review_safeguarding(session, site=SITE, now=NOW, actor=dsl, request_id=request_id, notes="x")
