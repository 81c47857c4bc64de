"""Blocked content access requests (seed 001 appendix A), from the form to an exception.

The journey: someone submits the form (from the block page, prefilled with the URL, device and
time, or a member of staff in the console) -> an ICT technician triages it (checks the site,
adds risks and control measures, proposes the scope and dates) and forwards it -> the
headteacher approves or declines with reasons and a signature. Approval creates a
time-limited exception that DNS and the proxy pick up at their next generation poll.

Services flush but never commit: the caller (a console request, a scheduler job) owns the
transaction, so a refusal part-way leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schoolgate.policy.types import Client, ExceptionScope, Role
from schoolgate.services.actor import BLOCK_PAGE, Actor, Signature
from schoolgate.services.common import (
    Page,
    SiteScope,
    audit,
    bump_overlay,
    clean_text,
    in_scope,
    new_status_token,
    normalise_host,
    on_site,
    parse_url,
    token_matches,
)
from schoolgate.services.errors import (
    Forbidden,
    InvalidInput,
    InvalidTransition,
    NotFound,
    ProposalChanged,
    RateLimited,
)
from schoolgate.services.permissions import Permission
from schoolgate.services.policy_gate import refuse_if_locked
from schoolgate.store.models import AccessRequest, PolicyExceptionRow
from schoolgate.timewords import local, short_instant_words

if TYPE_CHECKING:
    from schoolgate.policy import CompiledPolicy as Policy

#: The technician's recommendation to the headteacher.
APPROVE = "approve"
DECLINE = "decline"

# Statuses. "forwarded" means triaged by a technician and awaiting the headteacher.
SUBMITTED = "submitted"
FORWARDED = "forwarded"
APPROVED = "approved"
DECLINED = "declined"
WITHDRAWN = "withdrawn"
MERGED = "merged"
OPEN_STATUSES = (SUBMITTED, FORWARDED)
STATUSES = (SUBMITTED, FORWARDED, APPROVED, DECLINED, WITHDRAWN, MERGED)

#: Requests for one host from one device (or address) per rolling 24 hours.
MAX_REQUESTS_PER_HOST_PER_DAY = 3
#: Requests for any host from one device (or address, an IPv6 client by its /64) per rolling 24
#: hours: fewer from a pupil's device, so that a pupil cannot flood the technicians.
MAX_REQUESTS_PER_CLIENT_PER_DAY = 20
MAX_REQUESTS_PER_PUPIL_DEVICE_PER_DAY = 5
#: The longest an approved exception may last.
MAX_EXCEPTION_DAYS = 366
#: How far ahead an exception may be set to start.
MAX_START_AHEAD = timedelta(days=366)
#: How recent the headteacher's re-authentication must be for the signature to count.
SIGNATURE_MAX_AGE = timedelta(minutes=10)

REFERENCE_PREFIX = "AR-"
#: The audit detail key that keeps the block page link's (unverified) device value.
DEVICE_HINT_KEY = "device_hint_unverified"


@dataclass(frozen=True, slots=True)
class RequestForm:
    """Appendix A, the requester's part, plus what the block page knows about the attempt."""

    requester: str  # who is asking (a pupil's or member of staff's name)
    url: str  # the full URL that was blocked
    reasons: str  # reasons for access
    site_content: str = ""  # what the site contains, in the requester's words
    staff_name: str = ""  # the member of staff supporting the request
    risks_and_controls: str = ""  # identified risks and control measures (if the requester knows)
    device_id: str | None = None  # verified: found from the connection's address, never typed
    client_ip: str | None = None
    device_hint: str | None = None  # the block page link's device value: unverified, shown as such
    person_id: str | None = None
    blocked_at: datetime | None = None  # when the block page was shown
    rule_id: str | None = None  # the rule that blocked it
    client_role: str | None = None  # the device's role, as the appliance knows it (for the limits)


@dataclass(frozen=True, slots=True)
class Submitted:
    """What the requester is told: the reference and the one-time status token."""

    request: AccessRequest  # the new row (status "merged" when it joined an open request)
    reference: str  # e.g. "AR-000042"
    token: str  # shown once; with the reference it lets the requester look up the outcome
    merged_into: AccessRequest | None  # the open request it was merged into, if any


@dataclass(frozen=True, slots=True)
class TriageForm:
    """The technician's part: checks, risks, a recommendation and the proposed scope.

    A technician never closes a request: every request goes to the headteacher, one judged
    unfit with the recommendation "decline" (which needs no proposed scope)."""

    technician_notes: str  # what the technician found when checking the site
    risks_and_controls: str  # identified risks and the control measures proposed
    target: str  # "domain" (the domain and its subdomains) or "url" (a URL prefix)
    value: str  # the domain, or the URL prefix
    scope: str  # "person", "device", "group" or "role"
    subject: str  # person id, device id, group name or role name
    starts: datetime | None  # aware; None only with recommendation "decline"
    expires: datetime | None
    recommendation: str = APPROVE  # APPROVE or DECLINE
    # A URL prefix that some covered device would get as the whole site: the technician has read
    # the statement saying so (approval_scope.EnforcedScope) and forwards it as it is.
    scope_confirmed: bool = False


@dataclass(frozen=True, slots=True)
class DecisionForm:
    """The headteacher's part: approved or not, reasons, and the signature.

    `proposal` is the fingerprint of the proposal the headteacher read (proposal_fingerprint,
    carried by the decision form): an approval is refused if the technician has changed the
    proposal since, so what is signed is exactly what opens."""

    approve: bool
    reasons: str
    signature: Signature | None
    proposal: str | None = None
    # The statement of what the approval opens, as the page showed it (None: not shown, e.g. a
    # command); an approval is refused if it no longer says what would be enforced.
    scope_seen: str | None = None


@dataclass(frozen=True, slots=True)
class RequestStatus:
    """What the block-page requester may see about their request (no account needed)."""

    reference: str
    status: str  # for a merged request: the status of the request it joined
    merged: bool  # joined another request: only its outcome is shown, never its reasons
    host: str
    submitted_at: datetime
    decided_at: datetime | None
    decision_reasons: str  # the headteacher's reasons, once decided
    access_starts: datetime | None  # when approved: the exception's window
    access_expires: datetime | None


def reference_for(request_id: int) -> str:
    return f"{REFERENCE_PREFIX}{request_id:06d}"


def parse_reference(reference: str) -> int:
    """`AR-000042` (or `42`) -> 42; InvalidInput otherwise."""
    text = reference.strip().upper()
    text = text.removeprefix(REFERENCE_PREFIX)
    if not text.isdigit() or len(text) > 12:
        raise InvalidInput("That is not a request reference (it looks like AR-000042).", field="reference")
    return int(text)


def get_request(session: Session, site: SiteScope, request_id: int, *, for_update: bool = False) -> AccessRequest:
    request = session.get(AccessRequest, request_id, with_for_update=for_update or None, populate_existing=for_update)
    if request is None or not in_scope(request.site, site):
        raise NotFound(f"There is no access request {reference_for(request_id)}.")
    return request


def list_requests(
    session: Session,
    site: SiteScope,
    *,
    statuses: Iterable[str] | None = None,
    host: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Page[AccessRequest]:
    """Requests newest first; `statuses` e.g. ("forwarded",) for the headteacher's queue."""
    conditions = [on_site(AccessRequest.site, site)]
    if statuses is not None:
        conditions.append(AccessRequest.status.in_(list(statuses)))
    if host:
        conditions.append(AccessRequest.host == host.strip().lower())
    total = session.scalar(select(func.count()).select_from(AccessRequest).where(*conditions)) or 0
    rows = session.scalars(
        select(AccessRequest)
        .where(*conditions)
        .order_by(AccessRequest.created_at.desc(), AccessRequest.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def duplicates_of(session: Session, site: SiteScope, request_id: int) -> list[AccessRequest]:
    """The requests merged into this one, oldest first."""
    return list(
        session.scalars(
            select(AccessRequest)
            .where(on_site(AccessRequest.site, site), AccessRequest.merged_into_id == request_id)
            .order_by(AccessRequest.id)
        )
    )


def _check_rate(session: Session, site: str, form: RequestForm, host: str, now: datetime) -> None:
    """Refuse a flood from one device or address: per host, and overall, per rolling day.

    The device comes from the connection's address, and the address from the connection: a
    request counts against both (an IPv6 address by its /64), so a device cannot buy a fresh
    allowance by changing either."""
    from schoolgate.services import public_limits

    if not form.device_id and not form.client_ip:
        return  # a member of staff typing into the console: no device to limit
    rows = session.execute(
        select(AccessRequest.device_id, AccessRequest.client_ip, AccessRequest.host).where(
            on_site(AccessRequest.site, site), AccessRequest.created_at > public_limits.since(now),
            or_(AccessRequest.device_id.is_not(None), AccessRequest.client_ip.is_not(None)),
        )
    ).all()
    filer = public_limits.Filer(form.device_id, form.client_ip, form.client_role)
    same_host = [(device, ip) for device, ip, requested in rows if requested == host]
    try:
        public_limits.check(same_host, filer, public_limits.Allowance(MAX_REQUESTS_PER_HOST_PER_DAY,
                                                                     MAX_REQUESTS_PER_HOST_PER_DAY), what="requests")
    except RateLimited:
        raise RateLimited(
            f"{host} has already been requested {MAX_REQUESTS_PER_HOST_PER_DAY} times from this device today. "
            "The ICT technician has your earlier request; please wait for the outcome."
        ) from None
    overall = public_limits.Allowance(MAX_REQUESTS_PER_PUPIL_DEVICE_PER_DAY, MAX_REQUESTS_PER_CLIENT_PER_DAY)
    public_limits.check([(device, ip) for device, ip, _host in rows], filer, overall, what="access requests")


def _find_open_duplicate(
    session: Session, site: str, host: str, form: RequestForm, submitted_by: int | None
) -> AccessRequest | None:
    """The oldest open request for `host` from the same device, person or console account.

    Only identities the appliance verified count (the device found from the connection's
    address, a signed-in account): a typed name or a device id from the link is anyone's to
    copy, and merging on them would let a stranger follow someone else's request."""
    keys = []
    if submitted_by is not None:
        keys.append(AccessRequest.submitted_by_user_id == submitted_by)
    if form.device_id:
        keys.append(AccessRequest.device_id == form.device_id)
    if form.person_id:
        keys.append(AccessRequest.person_id == form.person_id)
    if not keys:
        return None
    return session.scalars(
        select(AccessRequest)
        .where(
            on_site(AccessRequest.site, site),
            AccessRequest.host == host,
            AccessRequest.status.in_(OPEN_STATUSES),
            AccessRequest.merged_into_id.is_(None),
            or_(*keys),
        )
        .order_by(AccessRequest.id)
        .limit(1)
    ).first()


def submit_request(
    session: Session,
    *,
    site: str,
    now: datetime,
    form: RequestForm,
    policy: Policy,
    actor: Actor = BLOCK_PAGE,
) -> Submitted:
    """File an access request. A repeat of an open request (same host from the same verified
    device or person) is recorded but merged into the open one; a flood is refused (RateLimited);
    a hard-blocked site is refused (LockedTarget)."""
    requester = clean_text(form.requester, field="requester", max_len=200, required=True)
    url, host = parse_url(form.url)
    reasons = clean_text(form.reasons, field="reasons", max_len=4000, required=True)
    site_content = clean_text(form.site_content, field="site_content", max_len=4000)
    staff_name = clean_text(form.staff_name, field="staff_name", max_len=200)
    risks = clean_text(form.risks_and_controls, field="risks_and_controls", max_len=4000)
    device_id = clean_text(form.device_id, field="device_id", max_len=100) or None
    person_id = clean_text(form.person_id, field="person_id", max_len=100) or None
    client_ip = clean_text(form.client_ip, field="client_ip", max_len=45) or None
    device_hint = clean_text(form.device_hint, field="device_hint", max_len=100) or None
    rule_id = clean_text(form.rule_id, field="rule_id", max_len=100) or None
    if form.blocked_at is not None and form.blocked_at.tzinfo is None:
        raise InvalidInput("The time of the block must include a time zone.", field="blocked_at")

    client = Client(ip=client_ip or "0.0.0.0", device_id=device_id, person_id=person_id)
    refuse_if_locked(policy, host, url, now, client)
    cleaned = RequestForm(
        requester=requester,
        url=url,
        reasons=reasons,
        device_id=device_id,
        client_ip=client_ip,
        person_id=person_id,
        client_role=form.client_role,
    )
    _check_rate(session, site, cleaned, host, now)
    original = _find_open_duplicate(session, site, host, cleaned, actor.user_id)

    token, stored_hash = new_status_token()
    request = AccessRequest(
        site=site,
        status=MERGED if original is not None else SUBMITTED,
        requester=requester,
        staff_name=staff_name,
        request_date=local(now, policy.school.zone).date(),
        url=url,
        host=host,
        site_content=site_content,
        reasons=reasons,
        risks_and_controls=risks,
        device_id=device_id,
        client_ip=client_ip,
        person_id=person_id,
        blocked_at=form.blocked_at,
        rule_id=rule_id,
        submitted_by_user_id=actor.user_id,
        created_at=now,
        merged_into_id=original.id if original is not None else None,
        duplicate_count=0,
        status_token_hash=stored_hash,
    )
    session.add(request)
    if original is not None:
        original.duplicate_count = (original.duplicate_count or 0) + 1
    session.flush()
    detail = {"host": host, "url": url, "requester": requester, "device_id": device_id}
    if device_hint is not None and device_hint != device_id:
        detail[DEVICE_HINT_KEY] = device_hint
    if original is not None:
        detail["merged_into"] = reference_for(original.id)
    audit(
        session,
        site=site,
        actor=actor,
        action="request.merge" if original is not None else "request.submit",
        object_type="access_request",
        object_id=request.id,
        detail=detail,
        now=now,
    )
    return Submitted(request=request, reference=reference_for(request.id), token=token, merged_into=original)


def request_status(session: Session, site: str, reference: str, token: str) -> RequestStatus:
    """The outcome as the requester may see it; NotFound unless reference and token match.

    A wrong token and a missing request give the same answer, so references cannot be probed.
    """
    request_id = parse_reference(reference)
    request = session.get(AccessRequest, request_id)
    not_found = NotFound("No request matches that reference and code.")
    if request is None or not in_scope(request.site, site) or not token_matches(request.status_token_hash, token):
        raise not_found
    if request.merged_into_id is not None:
        # Someone else's request: its outcome only. Its reasons, names and the exception's
        # subject and window belong to that requester.
        original = session.get(AccessRequest, request.merged_into_id)
        status = original.status if original is not None else request.status
        return RequestStatus(
            reference=reference_for(request.id),
            status=status,
            merged=True,
            host=request.host,
            submitted_at=request.created_at,
            decided_at=None,
            decision_reasons="",
            access_starts=None,
            access_expires=None,
        )
    exception = session.get(PolicyExceptionRow, request.exception_id) if request.exception_id is not None else None
    decided = request.status in (APPROVED, DECLINED)
    live = exception is not None and exception.revoked_at is None
    return RequestStatus(
        reference=reference_for(request.id),
        status=request.status,
        merged=False,
        host=request.host,
        submitted_at=request.created_at,
        decided_at=request.decided_at if decided else None,
        decision_reasons=request.decision_reasons if decided else "",
        access_starts=exception.starts if live and exception is not None else None,
        access_expires=exception.expires if live and exception is not None else None,
    )


def device_hint(session: Session, site: SiteScope, request_id: int) -> str | None:
    """The device value the block page's link carried, when it differs from the verified one.

    Kept in the request's audit entry: the technician may read it as a hint, never as fact."""
    from schoolgate.store.models import AuditEntry

    row = session.scalars(
        select(AuditEntry)
        .where(
            on_site(AuditEntry.site, site),
            AuditEntry.object_type == "access_request",
            AuditEntry.object_id == str(request_id),
            AuditEntry.action.in_(("request.submit", "request.merge")),
        )
        .limit(1)
    ).first()
    if row is None:
        return None
    try:
        value = json.loads(row.detail).get(DEVICE_HINT_KEY)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def is_public_suffix(host: str) -> bool:
    """True for a name under which anyone may register (co.uk, com, gov.uk, github.io...)."""
    return public_suffix_of(host) == host


def public_suffix_of(host: str) -> str | None:
    from publicsuffix2 import get_tld

    # strict: a name whose top level is not on the list (an intranet name) has no suffix.
    suffix = get_tld(host.lower().rstrip("."), strict=True)
    return suffix if isinstance(suffix, str) else None


def _validate_scope(
    form: TriageForm, starts: datetime, expires: datetime, now: datetime, max_days: int = MAX_EXCEPTION_DAYS
) -> tuple[str | None, str | None, ExceptionScope, str]:
    if form.target == "domain":
        domain, url_prefix = normalise_host(form.value, field="value"), None
        host = domain
    elif form.target == "url":
        url_prefix, host = parse_url(form.value, field="value")
        domain = None
    else:
        raise InvalidInput("Choose whether to allow the whole domain or a URL prefix.", field="target")
    if is_public_suffix(host):
        raise InvalidInput(
            f"{host} is a public suffix shared by many unrelated sites (like co.uk or com); "
            "propose the site's own domain instead.",
            field="value",
        )
    try:
        scope = ExceptionScope(form.scope)
    except ValueError as err:
        raise InvalidInput("Choose who the access is for: person, device, group or role.", field="scope") from err
    subject = clean_text(form.subject, field="subject", max_len=100, required=True)
    if scope is ExceptionScope.ROLE:
        try:
            role = Role(subject)
        except ValueError as err:
            names = ", ".join(r.value for r in Role if r is not Role.SUPERVISED)
            raise InvalidInput(f"Unknown role {subject!r} (one of: {names}).", field="subject") from err
        if role is Role.SUPERVISED:
            raise InvalidInput("Supervised devices cannot be given exceptions.", field="subject")
    if starts.tzinfo is None or expires.tzinfo is None:
        raise InvalidInput("Start and expiry must include a time zone.", field="expires")
    if expires <= starts:
        raise InvalidInput("The expiry must be after the start.", field="expires")
    if expires <= now:
        raise InvalidInput("The expiry is already in the past.", field="expires")
    if starts - now > MAX_START_AHEAD:
        raise InvalidInput(
            f"The start may be at most {MAX_START_AHEAD.days} days ahead; propose a nearer date.", field="starts"
        )
    if expires - starts > timedelta(days=max_days):
        raise InvalidInput(
            f"An exception may last at most {max_days} days; ask again when it runs out.", field="expires"
        )
    return domain, url_prefix, scope, subject


def triage_request(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    request_id: int,
    form: TriageForm,
    policy: Policy,
    max_exception_days: int = MAX_EXCEPTION_DAYS,
) -> AccessRequest:
    """The technician's check: findings, risks, a recommendation and (to approve) the proposed
    scope, forwarded to the headteacher. A proposal for pages under a URL prefix that some
    covered device would get as the whole site needs the technician to confirm that statement.

    A forwarded request may be triaged again (e.g. to narrow the scope) until it is decided; a
    changed proposal goes back to the DSL when it opens a site to pupils."""
    from schoolgate.services.approval_scope import enforced_scope, opens_to_pupils

    actor.require(Permission.TRIAGE_REQUEST, doing="triage access requests")
    request = get_request(session, site, request_id)
    if request.status not in OPEN_STATUSES:
        raise InvalidTransition(f"{reference_for(request.id)} is {request.status} and cannot be triaged.")
    if form.recommendation not in (APPROVE, DECLINE):
        raise InvalidInput("Recommend approving or declining it.", field="recommendation")
    notes = clean_text(form.technician_notes, field="technician_notes", max_len=4000, required=True)
    risks = clean_text(
        form.risks_and_controls, field="risks_and_controls", max_len=4000, required=form.recommendation == APPROVE
    )
    before = _proposal_of(request)
    if form.recommendation == APPROVE:
        if form.starts is None or form.expires is None:
            raise InvalidInput("Give the dates the access would run between.", field="starts")
        domain, url_prefix, scope, subject = _validate_scope(
            form, form.starts, form.expires, now, max(1, max_exception_days)
        )
        probe_host = domain or parse_url(url_prefix or "", field="value")[1]
        refuse_if_locked(policy, probe_host, url_prefix, now)
        if not _related_hosts(probe_host, request.host):
            # The headteacher signs off the request as submitted: the exception must be for that
            # site (or a part or parent of it), never for another site reached through this one.
            raise InvalidInput(
                f"The access must be for {request.host}, a part of it or the domain it belongs to, "
                f"not {probe_host}; ask the requester to submit a request for that site.",
                field="value",
            )
        statement = enforced_scope(
            session, site, target=form.target, value=domain or url_prefix or "", scope=scope, subject=subject
        )
        if statement.whole_site_somewhere and not form.scope_confirmed:
            raise InvalidInput(
                f"{statement.sentence()} Tick the box to forward it as it is, or propose the whole domain "
                "or only devices that trust the school's certificate.",
                field="scope_confirmed",
            )
        request.proposed_target = form.target
        request.proposed_value = domain or url_prefix
        request.proposed_scope = scope.value
        request.proposed_subject = subject
        request.proposed_starts = form.starts
        request.proposed_expires = form.expires
        request.enforced_scope = statement.sentence()
        request.needs_dsl = opens_to_pupils(session, site, scope, subject)
    else:
        request.proposed_target = request.proposed_value = request.proposed_scope = None
        request.proposed_subject = None
        request.proposed_starts = request.proposed_expires = None
        request.enforced_scope = ""
        request.needs_dsl = False
    request.status = FORWARDED
    request.technician_recommendation = form.recommendation
    request.triaged_by = actor.display_name
    request.triaged_at = now
    request.technician_notes = notes
    request.risks_and_controls = risks
    if _proposal_of(request) != before:
        # What the DSL reviewed and the headteacher was told about is no longer the proposal.
        request.dsl_reviewed_at = None
        request.dsl_reviewed_by = None
        request.dsl_notified_at = None
        request.headteacher_notified_at = None
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="request.triage",
        object_type="access_request",
        object_id=request.id,
        detail={
            "recommendation": form.recommendation,
            "target": request.proposed_target,
            "value": request.proposed_value,
            "scope": request.proposed_scope,
            "subject": request.proposed_subject,
            "starts": request.proposed_starts.isoformat() if request.proposed_starts else None,
            "expires": request.proposed_expires.isoformat() if request.proposed_expires else None,
            "enforced_scope": request.enforced_scope,
            "needs_dsl": request.needs_dsl,
        },
        now=now,
    )
    return request


def _proposal_of(request: AccessRequest) -> tuple[object, ...]:
    return (
        request.technician_recommendation, request.proposed_target, request.proposed_value, request.proposed_scope,
        request.proposed_subject, request.proposed_starts, request.proposed_expires,
    )


ROLE_WORDS = {"pupil": "every pupil", "staff": "all staff", "guest": "every guest", "authorised": "everyone authorised"}


def proposal_summary(request: AccessRequest, zone: tzinfo) -> str:
    """The request and the technician's proposal in one sentence: the top of the headteacher's
    page and her e-mail say the same (times in words, in the school's time `zone`)."""
    asks = f"{request.requester} asks to use {request.host}"
    if request.triaged_at is None:
        return f"{asks}; the ICT technician has not checked it yet."
    if request.technician_recommendation == DECLINE or not request.proposed_scope:
        return f"{asks}; the ICT technician recommends declining it."
    what = (f"the whole of {request.proposed_value}" if request.proposed_target == "domain"
            else f"pages under {request.proposed_value}")
    subject = request.proposed_subject or ""
    whom = {
        "role": ROLE_WORDS.get(subject, f"everyone with the role {subject}"),
        "group": f"class {subject}",
        "device": f"the device {subject}",
    }.get(request.proposed_scope, subject)
    until = ""
    if request.proposed_expires is not None:
        until = f" until {short_instant_words(request.proposed_expires, zone)}"
    return f"{asks}; the ICT technician recommends opening {what} for {whom}{until}."


def awaits_dsl(request: AccessRequest) -> bool:
    """Forwarded, opening a site to pupils, and the DSL has not added the safeguarding risks yet."""
    return request.status == FORWARDED and request.needs_dsl and request.dsl_reviewed_at is None


def review_safeguarding(
    session: Session, *, site: str, now: datetime, actor: Actor, request_id: int, notes: str
) -> AccessRequest:
    """The DSL's part for a request that would open a site to pupils: the safeguarding risks and
    the controls, recorded before the headteacher decides (it may be revised until then)."""
    actor.require(Permission.REVIEW_REQUEST_SAFEGUARDING, doing="add safeguarding risks to access requests")
    request = get_request(session, site, request_id)
    if request.status != FORWARDED or not request.needs_dsl:
        raise InvalidTransition(
            f"{reference_for(request.id)} does not wait for the DSL: only a checked request that would open a "
            "site to pupils does."
        )
    text = clean_text(notes, field="safeguarding_notes", max_len=4000, required=True)
    request.safeguarding_notes = text
    request.dsl_reviewed_by = actor.display_name
    request.dsl_reviewed_at = now
    request.headteacher_notified_at = None  # now it waits for the headteacher
    session.flush()
    audit(
        session, site=site, actor=actor, action="request.safeguarding", object_type="access_request",
        object_id=request.id, detail={"notes": text}, now=now,
    )
    return request


def _related_hosts(a: str, b: str) -> bool:
    """`a` and `b` are the same host, or one is a subdomain of the other."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def proposal_fingerprint(request: AccessRequest) -> str:
    """A hash of everything the headteacher reads before approving: what would open (domain or
    URL prefix), for whom, from when until when, the technician's findings, risks and
    recommendation, and the DSL's safeguarding notes."""
    def stamp(moment: datetime | None) -> str | None:
        return moment.astimezone(UTC).isoformat() if moment is not None else None

    shown = [
        request.id,
        request.proposed_target,
        request.proposed_value,
        request.proposed_scope,
        request.proposed_subject,
        stamp(request.proposed_starts),
        stamp(request.proposed_expires),
        request.technician_notes,
        request.risks_and_controls,
        request.technician_recommendation,
        request.safeguarding_notes,  # the DSL's risks and controls, which may be revised until the decision
    ]
    return hashlib.sha256(json.dumps(shown, ensure_ascii=False).encode()).hexdigest()[:32]


def check_decision(request: AccessRequest, decision: DecisionForm, zone: tzinfo) -> str:
    """Refuse a decision that cannot stand, before anyone signs it; returns the cleaned reasons.

    Declining needs reasons. Approving needs the technician's check, and the proposal to be the
    one the headteacher read: if it changed after the page was opened, nothing is approved."""
    reasons = clean_text(decision.reasons, field="reasons", max_len=4000, required=not decision.approve)
    if request.status not in OPEN_STATUSES:
        raise InvalidTransition(f"{reference_for(request.id)} is already {request.status}.")
    if not decision.approve:
        return reasons
    if request.status != FORWARDED:
        raise InvalidTransition(
            f"{reference_for(request.id)} has not been checked by the ICT technician yet; "
            "it can be approved once it has been triaged."
        )
    if request.proposed_scope is None or request.proposed_subject is None or request.proposed_starts is None \
            or request.proposed_expires is None:
        raise InvalidTransition(
            f"The ICT technician recommends declining {reference_for(request.id)} and proposed no access; "
            "ask them to check it again if you want to approve it."
        )
    if awaits_dsl(request):
        raise InvalidTransition(
            f"{reference_for(request.id)} would open a site to pupils: the DSL adds the safeguarding risks and "
            "controls before it can be approved."
        )
    if not decision.proposal or not hmac.compare_digest(decision.proposal, proposal_fingerprint(request)):
        raise ProposalChanged(
            f"The ICT technician changed the proposal for {reference_for(request.id)} after you opened it, "
            f"so nothing was approved. It now reads: {describe_proposal(request, zone)}. "
            "Read it again below and sign if you agree."
        )
    return reasons


def describe_proposal(request: AccessRequest, zone: tzinfo) -> str:
    """The proposal in one sentence, as the decision page shows it (times in the school's `zone`)."""
    what = ("the whole of " if request.proposed_target == "domain" else "pages under ") + (request.proposed_value or "")
    starts, expires = request.proposed_starts, request.proposed_expires
    when = ""
    if starts is not None and expires is not None:
        when = f", from {short_instant_words(starts, zone)} until {short_instant_words(expires, zone)}"
    return f"{what} for {request.proposed_scope} {request.proposed_subject}{when}"


def _check_signature(actor: Actor, signature: Signature | None, now: datetime) -> None:
    if signature is None:
        raise Forbidden("The decision must be signed: confirm your password (and code) to sign it.")
    if actor.user_id is None or signature.user_id != actor.user_id or signature.username != actor.name:
        raise Forbidden("The signature must be your own: sign in again and confirm the decision.")
    # A little slack for clock differences between gunicorn workers; none for stale sign-offs.
    if signature.signed_at.tzinfo is None or not (
        timedelta(seconds=-30) <= now - signature.signed_at <= SIGNATURE_MAX_AGE
    ):
        raise Forbidden("The signature has expired: confirm your password again to sign.")


def decide_request(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    request_id: int,
    decision: DecisionForm,
    policy: Policy,
) -> AccessRequest:
    """The headteacher's decision. Approval needs a triaged (forwarded) request and creates the
    exception with the proposed scope and dates; declining needs reasons and may be done
    before triage. Both need a fresh signature (re-authentication) by the acting headteacher."""
    actor.require(Permission.DECIDE_REQUEST, doing="approve or decline access requests")
    _check_signature(actor, decision.signature, now)
    # Locked for the rest of the transaction (PostgreSQL; SQLite writes are serialised anyway),
    # so two headteachers deciding at once cannot both see "forwarded" and create two exceptions.
    request = get_request(session, site, request_id, for_update=True)
    reasons = check_decision(request, decision, policy.school.zone)
    signature = decision.signature
    assert signature is not None
    request.authoriser = actor.display_name
    request.decided_by_name = signature.name or actor.display_name
    request.decided_at = now
    request.decision_reasons = reasons
    request.signature = signature.as_text()

    if not decision.approve:
        request.approved = False
        request.status = DECLINED
        session.flush()
        audit(
            session,
            site=site,
            actor=actor,
            action="request.decline",
            object_type="access_request",
            object_id=request.id,
            detail={"host": request.host, "reasons": reasons, "signature": request.signature},
            now=now,
        )
        return request

    starts, expires = request.proposed_starts, request.proposed_expires
    assert starts is not None and expires is not None  # check_decision refused a request without them
    assert request.proposed_scope is not None and request.proposed_subject is not None
    if expires <= now:
        raise InvalidTransition(
            "The proposed access would already have expired; ask the technician to propose new dates."
        )
    domain = request.proposed_value if request.proposed_target == "domain" else None
    url_prefix = request.proposed_value if request.proposed_target == "url" else None
    probe_host = domain or parse_url(url_prefix or "", field="value")[1]
    refuse_if_locked(policy, probe_host, url_prefix, now)
    from schoolgate.services.approval_scope import enforced_scope

    statement = enforced_scope(
        session, site, target=request.proposed_target or "domain", value=request.proposed_value or "",
        scope=ExceptionScope(request.proposed_scope), subject=request.proposed_subject,
    ).sentence()
    if decision.scope_seen is not None and decision.scope_seen.strip() != statement:
        # A device changed its trust in the school's certificate, or joined the scope, since the
        # page was opened: what would open is not what was read.
        raise InvalidTransition(f"What this approval opens has changed since you opened the page: {statement} "
                                "Read it again and sign.")
    request.enforced_scope = statement

    exception = PolicyExceptionRow(
        site=site,
        scope=request.proposed_scope,
        subject=request.proposed_subject,
        domain=domain,
        url_prefix=url_prefix,
        starts=starts,
        expires=expires,
        reason=f"{reference_for(request.id)} approved by {actor.display_name}: {reasons}"[:4000],
        request_id=request.id,
        created_by=actor.name,
        created_at=now,
        enforced_scope=statement,
    )
    session.add(exception)
    session.flush()
    request.approved = True
    request.status = APPROVED
    request.exception_id = exception.id
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="request.approve",
        object_type="access_request",
        object_id=request.id,
        detail={"host": request.host, "reasons": reasons, "signature": request.signature, "exception_id": exception.id,
                "enforced_scope": statement, "proposal": decision.proposal},
        now=now,
    )
    audit(
        session,
        site=site,
        actor=actor,
        action="exception.create",
        object_type="exception",
        object_id=exception.id,
        detail={
            "scope": exception.scope,
            "subject": exception.subject,
            "domain": domain,
            "url_prefix": url_prefix,
            "starts": starts.isoformat(),
            "expires": expires.isoformat(),
            "request": reference_for(request.id),
        },
        now=now,
    )
    bump_overlay(session, site=site, now=now)
    return request


def withdraw_request(
    session: Session, *, site: str, now: datetime, actor: Actor, request_id: int, reason: str
) -> AccessRequest:
    """Close an open request without a decision (e.g. the requester no longer needs it)."""
    actor.require(Permission.WITHDRAW_REQUEST, doing="withdraw access requests")
    request = get_request(session, site, request_id)
    if request.status not in OPEN_STATUSES:
        raise InvalidTransition(f"{reference_for(request.id)} is {request.status} and cannot be withdrawn.")
    text = clean_text(reason, field="reason", max_len=2000, required=True)
    request.status = WITHDRAWN
    request.decision_reasons = text
    request.decided_at = now
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="request.withdraw",
        object_type="access_request",
        object_id=request.id,
        detail={"reason": text},
        now=now,
    )
    return request
