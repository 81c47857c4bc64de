"""Appendix A end to end: submit -> triage -> approve/decline, duplicates, limits, locks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.policy import Client, CompiledPolicy, Role, Target, Verdict, decide
from schoolgate.services import access_requests as ar
from schoolgate.services.actor import Actor, Signature
from schoolgate.services.errors import (
    Forbidden,
    InvalidInput,
    InvalidTransition,
    LockedTarget,
    NotFound,
    ProposalChanged,
    RateLimited,
)
from schoolgate.store import audit as store_audit
from schoolgate.store.models import AuditEntry, PolicyExceptionRow
from schoolgate.store.overlay import load_overlay, read_generation

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)  # a Tuesday in term, 10:00 in London


def form(**overrides: object) -> ar.RequestForm:
    values: dict[str, object] = {
        "requester": "Amira (Year 5)",
        "url": "https://www.facebook.com/groups/school-eco-club?ref=bookmark",
        "reasons": "Our eco club posts its litter-pick photos there",
        "site_content": "the eco club's group page",
        "device_id": "LAPTOP-12",
        "client_ip": "10.20.0.12",
        "blocked_at": NOW - timedelta(minutes=2),
        "rule_id": "social-media",
    }
    values.update(overrides)
    return ar.RequestForm(**values)  # type: ignore[arg-type]


def triage_form(**overrides: object) -> ar.TriageForm:
    values: dict[str, object] = {
        "technician_notes": "Checked: a closed group run by Mrs Ade; no adverts shown to logged-out users.",
        "risks_and_controls": "Contact with strangers: group is closed; supervised use in club time only.",
        "target": "domain",
        "value": "facebook.com",
        "scope": "device",
        "subject": "LAPTOP-12",
        "starts": NOW,
        "expires": NOW + timedelta(days=14),
    }
    values.update(overrides)
    return ar.TriageForm(**values)  # type: ignore[arg-type]


def sign(actor: Actor, at=NOW) -> Signature:  # type: ignore[no-untyped-def]
    assert actor.user_id is not None
    return Signature(
        user_id=actor.user_id, username=actor.name, name=actor.display_name, signed_at=at, method="password+totp"
    )


def audit_actions(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEntry.action).where(AuditEntry.site == SITE).order_by(AuditEntry.seq)))


def test_submit_triage_approve_creates_exception(
    session: Session, policy: CompiledPolicy, technician: Actor, headteacher: Actor
) -> None:
    submitted = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy)
    assert submitted.reference == ar.reference_for(submitted.request.id)
    assert submitted.request.status == ar.SUBMITTED
    assert submitted.request.host == "www.facebook.com"
    assert submitted.merged_into is None
    status = ar.request_status(session, SITE, submitted.reference, submitted.token)
    assert status.status == ar.SUBMITTED and status.access_expires is None

    ar.triage_request(
        session,
        site=SITE,
        now=NOW,
        actor=technician,
        request_id=submitted.request.id,
        form=triage_form(),
        policy=policy,
    )
    assert submitted.request.status == ar.FORWARDED
    generation_before = read_generation(session, SITE)

    decided_at = NOW + timedelta(hours=3)
    request = ar.decide_request(
        session,
        site=SITE,
        now=decided_at,
        actor=headteacher,
        request_id=submitted.request.id,
        decision=ar.DecisionForm(
            approve=True, reasons="Supports the eco club; supervised.", signature=sign(headteacher, decided_at),
            proposal=ar.proposal_fingerprint(submitted.request),
        ),
        policy=policy,
    )
    session.commit()
    assert request.status == ar.APPROVED and request.approved is True
    assert request.authoriser == "Mrs H Okafor" and request.signature and "password+totp" in request.signature
    exception = session.get(PolicyExceptionRow, request.exception_id)
    assert exception is not None
    assert (exception.scope, exception.subject, exception.domain, exception.url_prefix) == (
        "device",
        "LAPTOP-12",
        "facebook.com",
        None,
    )
    assert exception.starts == NOW and exception.expires == NOW + timedelta(days=14)
    assert exception.request_id == request.id
    assert read_generation(session, SITE) == generation_before + 1
    assert audit_actions(session) == ["request.submit", "request.triage", "request.approve", "exception.create"]
    assert store_audit.verify(session, SITE).ok
    approve = session.scalars(select(AuditEntry).where(AuditEntry.action == "request.approve")).one()
    assert approve.actor == "head" and json.loads(approve.detail)["exception_id"] == exception.id

    # The overlay the daemons load now allows the device, and only it, until expiry.
    overlay = load_overlay(session, SITE, decided_at)
    layered = policy.with_overlay(exceptions=overlay.exceptions)
    laptop = Client(ip="10.20.0.12", device_id="LAPTOP-12", role=Role.PUPIL)
    other = Client(ip="10.20.0.13", device_id="LAPTOP-13", role=Role.PUPIL)
    target = Target(host="www.facebook.com")
    assert decide(layered, laptop, target, decided_at).verdict is Verdict.ALLOW
    assert decide(layered, other, target, decided_at).verdict is Verdict.BLOCK
    assert decide(layered, laptop, target, NOW + timedelta(days=15)).verdict is Verdict.BLOCK

    status = ar.request_status(session, SITE, submitted.reference, submitted.token)
    assert status.status == ar.APPROVED and status.access_expires == NOW + timedelta(days=14)
    assert status.decision_reasons == "Supports the eco club; supervised."


def test_decline_needs_reasons_and_creates_nothing(
    session: Session, policy: CompiledPolicy, headteacher: Actor
) -> None:
    submitted = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy)
    decision = ar.DecisionForm(approve=False, reasons="", signature=sign(headteacher))
    with pytest.raises(InvalidInput) as err:
        ar.decide_request(
            session,
            site=SITE,
            now=NOW,
            actor=headteacher,
            request_id=submitted.request.id,
            decision=decision,
            policy=policy,
        )
    assert err.value.field == "reasons"
    generation = read_generation(session, SITE)
    ar.decide_request(
        session,
        site=SITE,
        now=NOW,
        actor=headteacher,
        request_id=submitted.request.id,
        decision=ar.DecisionForm(approve=False, reasons="Use the school blog instead.", signature=sign(headteacher)),
        policy=policy,
    )
    assert submitted.request.status == ar.DECLINED and submitted.request.approved is False
    assert session.scalars(select(PolicyExceptionRow)).all() == []
    assert read_generation(session, SITE) == generation
    status = ar.request_status(session, SITE, submitted.reference, submitted.token)
    assert status.status == ar.DECLINED and status.decision_reasons == "Use the school blog instead."
    with pytest.raises(InvalidTransition):
        ar.decide_request(
            session,
            site=SITE,
            now=NOW,
            actor=headteacher,
            request_id=submitted.request.id,
            decision=ar.DecisionForm(approve=True, reasons="", signature=sign(headteacher)),
            policy=policy,
        )


def test_approval_requires_triage_headteacher_and_fresh_own_signature(
    session: Session, policy: CompiledPolicy, technician: Actor, headteacher: Actor
) -> None:
    request_id = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy).request.id
    approve = ar.DecisionForm(approve=True, reasons="ok", signature=sign(headteacher))
    with pytest.raises(InvalidTransition, match="triaged"):
        ar.decide_request(
            session, site=SITE, now=NOW, actor=headteacher, request_id=request_id, decision=approve, policy=policy
        )
    ar.triage_request(
        session, site=SITE, now=NOW, actor=technician, request_id=request_id, form=triage_form(), policy=policy
    )
    with pytest.raises(Forbidden):
        ar.decide_request(
            session,
            site=SITE,
            now=NOW,
            actor=technician,
            request_id=request_id,
            decision=ar.DecisionForm(approve=True, reasons="", signature=sign(technician)),
            policy=policy,
        )
    stale = ar.DecisionForm(approve=True, reasons="ok", signature=sign(headteacher, NOW - timedelta(minutes=30)))
    with pytest.raises(Forbidden, match="expired"):
        ar.decide_request(
            session, site=SITE, now=NOW, actor=headteacher, request_id=request_id, decision=stale, policy=policy
        )
    forged = ar.DecisionForm(approve=True, reasons="ok", signature=sign(technician))
    with pytest.raises(Forbidden, match="your own"):
        ar.decide_request(
            session, site=SITE, now=NOW, actor=headteacher, request_id=request_id, decision=forged, policy=policy
        )
    with pytest.raises(Forbidden):
        ar.triage_request(
            session, site=SITE, now=NOW, actor=headteacher, request_id=request_id, form=triage_form(), policy=policy
        )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"target": "domain", "value": "not a domain"}, "value"),
        ({"target": "ip", "value": "1.2.3.4"}, "target"),
        ({"scope": "everyone"}, "scope"),
        ({"scope": "role", "subject": "supervised"}, "subject"),
        ({"scope": "role", "subject": "wizard"}, "subject"),
        ({"expires": NOW - timedelta(days=1), "starts": NOW - timedelta(days=2)}, "expires"),
        ({"expires": NOW + timedelta(days=400)}, "expires"),
        ({"technician_notes": "  "}, "technician_notes"),
    ],
)
def test_triage_validates_scope(
    session: Session, policy: CompiledPolicy, technician: Actor, overrides: dict[str, object], field: str
) -> None:
    request_id = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy).request.id
    with pytest.raises(InvalidInput) as err:
        ar.triage_request(
            session,
            site=SITE,
            now=NOW,
            actor=technician,
            request_id=request_id,
            form=triage_form(**overrides),
            policy=policy,
        )
    assert err.value.field == field


def test_url_prefix_scope_for_a_role(
    session: Session, policy: CompiledPolicy, technician: Actor, headteacher: Actor
) -> None:
    request_id = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy).request.id
    ar.triage_request(
        session,
        site=SITE,
        now=NOW,
        actor=technician,
        request_id=request_id,
        policy=policy,
        form=triage_form(
            target="url", value="https://www.facebook.com/groups/school-eco-club", scope="role", subject="staff",
            scope_confirmed=True,
        ),
    )
    shown = ar.proposal_fingerprint(ar.get_request(session, SITE, request_id))
    request = ar.decide_request(
        session,
        site=SITE,
        now=NOW,
        actor=headteacher,
        request_id=request_id,
        decision=ar.DecisionForm(True, "", sign(headteacher), proposal=shown),
        policy=policy,
    )
    exception = session.get(PolicyExceptionRow, request.exception_id)
    assert exception is not None
    assert (exception.scope, exception.subject, exception.domain) == ("role", "staff", None)
    assert exception.url_prefix == "https://www.facebook.com/groups/school-eco-club"
    # Staff devices the proxy cannot see into get the whole site: the record says so.
    assert "the whole of www.facebook.com" in exception.enforced_scope == request.enforced_scope


@pytest.mark.parametrize("url", ["https://freevpn.example/download", "http://www.FREEVPN.example./", "freevpn.example"])
def test_locked_site_is_refused(session: Session, policy: CompiledPolicy, url: str) -> None:
    with pytest.raises(LockedTarget, match="no approval can override"):
        ar.submit_request(session, site=SITE, now=NOW, form=form(url=url), policy=policy)
    assert session.scalars(select(AuditEntry)).all() == []


def test_locked_domain_refused_at_triage(session: Session, policy: CompiledPolicy, technician: Actor) -> None:
    request_id = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy).request.id
    with pytest.raises(LockedTarget):
        ar.triage_request(
            session,
            site=SITE,
            now=NOW,
            actor=technician,
            request_id=request_id,
            policy=policy,
            form=triage_form(value="freevpn.example"),
        )


def test_duplicates_merge_into_the_open_request(session: Session, policy: CompiledPolicy) -> None:
    first = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy)
    again = ar.submit_request(
        session,
        site=SITE,
        now=NOW + timedelta(minutes=5),
        policy=policy,
        form=form(url="https://www.facebook.com/other", reasons="please!"),
    )
    by_name = ar.submit_request(
        session,
        site=SITE,
        now=NOW + timedelta(minutes=6),
        policy=policy,
        form=form(device_id="LAPTOP-99", client_ip="10.20.0.99", requester="AMIRA (YEAR 5)"),
    )
    # Same verified device: merged. Same typed name on another device: a request of its own
    # (a name is anyone's to type, and merging would show them the other request's outcome).
    assert again.merged_into is first.request and by_name.merged_into is None
    assert again.request.status == ar.MERGED and again.request.merged_into_id == first.request.id
    assert first.request.duplicate_count == 1
    assert [r.id for r in ar.duplicates_of(session, SITE, first.request.id)] == [again.request.id]
    # The merged requester's status follows the open request.
    merged_status = ar.request_status(session, SITE, again.reference, again.token)
    assert merged_status.status == ar.SUBMITTED and merged_status.merged
    # Another host, or another requester on another device, is a request of its own.
    other_host = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=form(url="https://fbcdn.net/x"))
    other_person = ar.submit_request(
        session,
        site=SITE,
        now=NOW,
        policy=policy,
        form=form(requester="Ben", device_id="LAPTOP-2", client_ip="10.20.0.2"),
    )
    assert other_host.merged_into is None and other_person.merged_into is None
    assert audit_actions(session).count("request.merge") == 1


def test_rate_limit_per_device_and_host(session: Session, policy: CompiledPolicy) -> None:
    for minute in range(ar.MAX_REQUESTS_PER_HOST_PER_DAY):
        ar.submit_request(session, site=SITE, now=NOW + timedelta(minutes=minute), form=form(), policy=policy)
    with pytest.raises(RateLimited):
        ar.submit_request(session, site=SITE, now=NOW + timedelta(minutes=10), form=form(), policy=policy)
    # By address when the device is unknown, also limited.
    for minute in range(ar.MAX_REQUESTS_PER_HOST_PER_DAY):
        ar.submit_request(
            session,
            site=SITE,
            now=NOW + timedelta(minutes=minute),
            policy=policy,
            form=form(device_id=None, client_ip="10.20.0.50", requester=f"guest {minute}"),
        )
    with pytest.raises(RateLimited):
        ar.submit_request(
            session,
            site=SITE,
            now=NOW,
            policy=policy,
            form=form(device_id=None, client_ip="10.20.0.50", requester="guest x"),
        )
    # Another host from the same device is fine, and a day later the limit has passed.
    ar.submit_request(session, site=SITE, now=NOW, form=form(url="https://fbcdn.net/a"), policy=policy)
    ar.submit_request(session, site=SITE, now=NOW + timedelta(days=1, minutes=1), form=form(), policy=policy)


def test_status_lookup_needs_the_token(session: Session, policy: CompiledPolicy) -> None:
    submitted = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy)
    for reference, token in [(submitted.reference, "wrong"), ("AR-999999", submitted.token), (submitted.reference, "")]:
        with pytest.raises(NotFound):
            ar.request_status(session, SITE, reference, token)
    with pytest.raises(NotFound):
        ar.request_status(session, "another-school", submitted.reference, submitted.token)
    with pytest.raises(InvalidInput):
        ar.request_status(session, SITE, "DROP TABLE", submitted.token)
    assert ar.request_status(session, SITE, f" {submitted.reference.lower()} ", submitted.token).status == "submitted"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"requester": " "}, "requester"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "ftp://files.example/"}, "url"),
        ({"url": "https://exa mple.com/"}, "url"),
        ({"reasons": ""}, "reasons"),
        ({"reasons": "x" * 5000}, "reasons"),
        ({"site_content": "bell\x07"}, "site_content"),
    ],
)
def test_submit_rejects_bad_fields(
    session: Session, policy: CompiledPolicy, overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        ar.submit_request(session, site=SITE, now=NOW, form=form(**overrides), policy=policy)
    assert err.value.field == field


def test_withdraw_and_listing(
    session: Session, policy: CompiledPolicy, technician: Actor, headteacher: Actor
) -> None:
    a = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy).request
    b = ar.submit_request(
        session,
        site=SITE,
        now=NOW + timedelta(minutes=1),
        policy=policy,
        form=form(url="https://fbcdn.net/", requester="Ben", device_id="D2", client_ip=None),
    ).request
    # Seed 001 §9: a technician cannot close a request without the headteacher's decision.
    with pytest.raises(Forbidden):
        ar.withdraw_request(session, site=SITE, now=NOW, actor=technician, request_id=a.id, reason="not needed")
    ar.withdraw_request(session, site=SITE, now=NOW, actor=headteacher, request_id=a.id, reason="no longer needed")
    page = ar.list_requests(session, SITE, statuses=ar.OPEN_STATUSES)
    assert [r.id for r in page.items] == [b.id] and page.total == 1
    assert ar.list_requests(session, SITE).total == 2
    with pytest.raises(InvalidTransition):
        ar.withdraw_request(session, site=SITE, now=NOW, actor=headteacher, request_id=a.id, reason="again")


def test_a_typed_name_or_unverified_device_never_merges(
    session: Session, policy: CompiledPolicy, technician: Actor
) -> None:
    first = ar.submit_request(
        session, site=SITE, now=NOW, policy=policy, form=form(requester="Zoë Ünal", device_id="D1", client_ip=None)
    )
    same_name = ar.submit_request(
        session, site=SITE, now=NOW, policy=policy, form=form(requester="ZOË ÜNAL", device_id="D2", client_ip=None)
    )
    # The link's device value is only a hint: it merges nothing.
    hinted = ar.submit_request(
        session,
        site=SITE,
        now=NOW,
        policy=policy,
        form=form(requester="Zoë Ünal", device_id=None, device_hint="D1", client_ip="10.20.0.77"),
    )
    assert same_name.merged_into is None and hinted.merged_into is None
    assert ar.device_hint(session, SITE, hinted.request.id) == "D1"
    assert ar.device_hint(session, SITE, first.request.id) is None
    # The same person (verified, e.g. a signed-in member of staff) does merge.
    mine = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=form(device_id=None, person_id="S77"))
    again = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=form(device_id=None, person_id="S77"))
    assert again.merged_into is mine.request
    # So does the same console account asking twice (staff requests carry no device).
    staff = form(device_id=None, client_ip=None, url="https://fbcdn.net/a")
    first_staff = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=staff, actor=technician)
    second_staff = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=staff, actor=technician)
    assert second_staff.merged_into is first_staff.request


def test_merged_requester_sees_the_outcome_only(
    session: Session, policy: CompiledPolicy, technician: Actor, headteacher: Actor
) -> None:
    first = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy)
    later = ar.submit_request(
        session, site=SITE, now=NOW, policy=policy, form=form(requester="Someone Else", reasons="me too")
    )
    assert later.merged_into is first.request
    ar.decide_request(
        session,
        site=SITE,
        now=NOW,
        actor=headteacher,
        request_id=first.request.id,
        decision=ar.DecisionForm(approve=False, reasons="Amira's parents asked us not to", signature=sign(headteacher)),
        policy=policy,
    )
    own = ar.request_status(session, SITE, first.reference, first.token)
    assert own.status == ar.DECLINED and "Amira" in own.decision_reasons and not own.merged
    theirs = ar.request_status(session, SITE, later.reference, later.token)
    assert theirs.status == ar.DECLINED and theirs.merged
    assert theirs.decision_reasons == "" and theirs.decided_at is None and theirs.access_expires is None


@pytest.mark.parametrize("value", ["co.uk", "com", "gov.uk", "sch.uk", "uk", "https://co.uk/bbc/"])
def test_triage_refuses_a_public_suffix(
    session: Session, policy: CompiledPolicy, technician: Actor, value: str
) -> None:
    submitted = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=form(url="https://www.bbc.co.uk/news"))
    target = "url" if value.startswith("https://") else "domain"
    # Single labels (com, uk) are refused as no domain at all; the rest as public suffixes.
    with pytest.raises(InvalidInput, match=r"public suffix|not a valid domain") as caught:
        ar.triage_request(
            session,
            site=SITE,
            now=NOW,
            actor=technician,
            request_id=submitted.request.id,
            form=triage_form(target=target, value=value),
            policy=policy,
        )
    assert caught.value.field == "value"
    # The site's own registrable domain is fine.
    ar.triage_request(
        session,
        site=SITE,
        now=NOW,
        actor=technician,
        request_id=submitted.request.id,
        form=triage_form(value="bbc.co.uk"),
        policy=policy,
    )


@pytest.mark.parametrize(
    ("starts", "expires", "field", "message"),
    [
        (NOW + timedelta(days=400), NOW + timedelta(days=401), "starts", "at most 366 days ahead"),
        (NOW, NOW + timedelta(days=367), "expires", "at most 366 days"),
        (NOW + timedelta(days=300), NOW + timedelta(days=300 + 367), "expires", "at most 366 days"),
    ],
)
def test_triage_bounds_the_dates(
    session: Session,
    policy: CompiledPolicy,
    technician: Actor,
    starts: datetime,
    expires: datetime,
    field: str,
    message: str,
) -> None:
    submitted = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=form())
    with pytest.raises(InvalidInput, match=message) as caught:
        ar.triage_request(
            session,
            site=SITE,
            now=NOW,
            actor=technician,
            request_id=submitted.request.id,
            form=triage_form(starts=starts, expires=expires),
            policy=policy,
        )
    assert caught.value.field == field


def test_triage_max_duration_is_configurable(session: Session, policy: CompiledPolicy, technician: Actor) -> None:
    submitted = ar.submit_request(session, site=SITE, now=NOW, policy=policy, form=form())
    with pytest.raises(InvalidInput, match="at most 30 days"):
        ar.triage_request(
            session,
            site=SITE,
            now=NOW,
            actor=technician,
            request_id=submitted.request.id,
            form=triage_form(expires=NOW + timedelta(days=31)),
            policy=policy,
            max_exception_days=30,
        )


def test_a_made_up_device_id_does_not_escape_the_rate_limit(session: Session, policy: CompiledPolicy) -> None:
    # The block page's link carries the device id, so a requester can edit it; the address
    # comes from the connection and keeps counting.
    for attempt in range(ar.MAX_REQUESTS_PER_HOST_PER_DAY):
        ar.submit_request(
            session,
            site=SITE,
            now=NOW + timedelta(minutes=attempt),
            policy=policy,
            form=form(device_id=f"MADE-UP-{attempt}", requester=f"someone {attempt}"),
        )
    with pytest.raises(RateLimited):
        ar.submit_request(
            session, site=SITE, now=NOW + timedelta(minutes=9), policy=policy,
            form=form(device_id="MADE-UP-X", requester="someone else"),
        )
    with pytest.raises(RateLimited):  # and the overall limit likewise
        for n in range(ar.MAX_REQUESTS_PER_CLIENT_PER_DAY):
            ar.submit_request(
                session, site=SITE, now=NOW + timedelta(minutes=10 + n), policy=policy,
                form=form(device_id=f"D{n}", requester=f"r{n}", url=f"https://site{n}.example.org/"),
            )


@pytest.mark.parametrize(
    ("requested", "target", "value", "allowed"),
    [
        ("https://www.facebook.com/groups/x", "domain", "facebook.com", True),  # the parent domain
        ("https://www.facebook.com/groups/x", "domain", "www.facebook.com", True),
        ("https://facebook.com/", "domain", "m.facebook.com", True),  # a part of it
        ("https://www.facebook.com/groups/x", "url", "https://www.facebook.com/groups/x", True),
        ("https://www.facebook.com/groups/x", "domain", "instagram.com", False),  # another site
        ("https://www.facebook.com/groups/x", "domain", "ebook.com", False),  # a mere suffix
        ("https://www.facebook.com/groups/x", "url", "https://www.instagram.com/x", False),
        ("https://www.facebook.com/groups/x", "domain", "facebook.com.evil.example", False),
    ],
)
def test_triage_must_be_for_the_requested_site(
    session: Session, policy: CompiledPolicy, technician: Actor,
    requested: str, target: str, value: str, allowed: bool,
) -> None:
    request_id = ar.submit_request(session, site=SITE, now=NOW, form=form(url=requested), policy=policy).request.id
    triage = triage_form(target=target, value=value, scope_confirmed=True)
    if allowed:
        request = ar.triage_request(
            session, site=SITE, now=NOW, actor=technician, request_id=request_id, form=triage, policy=policy
        )
        assert request.status == ar.FORWARDED
        return
    with pytest.raises(InvalidInput) as err:
        ar.triage_request(
            session, site=SITE, now=NOW, actor=technician, request_id=request_id, form=triage, policy=policy
        )
    assert err.value.field == "value"
    assert ar.get_request(session, SITE, request_id).status == ar.SUBMITTED


def test_an_approval_of_a_proposal_changed_since_it_was_read_creates_nothing(
    session: Session, policy: CompiledPolicy, technician: Actor, headteacher: Actor
) -> None:
    """The race the console's read-then-sign cannot close alone: the technician re-triages
    between the headteacher's check and her approval being written."""
    request_id = ar.submit_request(session, site=SITE, now=NOW, form=form(), policy=policy).request.id
    narrow = triage_form(target="url", value="https://www.facebook.com/groups/school-eco-club", scope="person",
                         subject="P1042", expires=NOW + timedelta(hours=6), scope_confirmed=True)
    ar.triage_request(session, site=SITE, now=NOW, actor=technician, request_id=request_id, form=narrow, policy=policy)
    read = ar.proposal_fingerprint(ar.get_request(session, SITE, request_id))
    wide = triage_form(target="domain", value="facebook.com", scope="role", subject="staff",
                       expires=NOW + timedelta(days=365))
    ar.triage_request(session, site=SITE, now=NOW, actor=technician, request_id=request_id, form=wide, policy=policy)
    approve = ar.DecisionForm(approve=True, reasons="ok", signature=sign(headteacher), proposal=read)
    with pytest.raises(ProposalChanged, match=r"whole of facebook\.com for role staff"):
        ar.decide_request(session, site=SITE, now=NOW, actor=headteacher, request_id=request_id, decision=approve,
                          policy=policy)
    assert session.scalars(select(PolicyExceptionRow)).all() == []
    assert ar.get_request(session, SITE, request_id).status == ar.FORWARDED
    # Any change to what she reads changes the fingerprint: the dates, the subject, the findings.
    base = ar.get_request(session, SITE, request_id)
    prints = {ar.proposal_fingerprint(base)}
    for field, value in [("proposed_subject", "guest"), ("proposed_expires", NOW + timedelta(days=364)),
                         ("technician_notes", "changed"), ("risks_and_controls", "none"),
                         ("proposed_value", "fb.com"), ("proposed_target", "url")]:
        original = getattr(base, field)
        setattr(base, field, value)
        prints.add(ar.proposal_fingerprint(base))
        setattr(base, field, original)
    assert len(prints) == 7


def test_the_proposal_and_the_request_date_are_in_the_schools_time_and_in_words(
    session: Session, policy: CompiledPolicy, technician: Actor
) -> None:
    from zoneinfo import ZoneInfo

    # 23:30 UTC on Tuesday 6 October is 00:30 on Wednesday 7 October in London (BST).
    late = datetime(2026, 10, 6, 23, 30, tzinfo=UTC)
    request_id = ar.submit_request(session, site=SITE, now=late, form=form(), policy=policy).request.id
    request = ar.get_request(session, SITE, request_id)
    assert str(policy.school.zone) == "Europe/London" and request.request_date.isoformat() == "2026-10-07"
    ar.triage_request(session, site=SITE, now=late, actor=technician, request_id=request_id, policy=policy,
                      form=triage_form(starts=late, expires=datetime(2026, 10, 20, 22, 59, tzinfo=UTC)))
    london, kolkata = ZoneInfo("Europe/London"), ZoneInfo("Asia/Kolkata")
    assert ar.proposal_summary(request, london).endswith(
        "recommends opening the whole of facebook.com for the device LAPTOP-12 until Tue 20 Oct 2026, 11:59 pm.")
    assert ar.proposal_summary(request, kolkata).endswith("until Wed 21 Oct 2026, 4:29 am.")
    assert ar.describe_proposal(request, london) == (
        "the whole of facebook.com for device LAPTOP-12, from Wed 7 Oct 2026, 12:30 am until Tue 20 Oct 2026, 11:59 pm")
