"""Inappropriate content reports (seed 001 appendix B) and the technician's action on them.

A member of staff reports from the console, or from any school device without an account
(`submit_public_report`): identified by the device the appliance finds from the connection's
address and the name they give, within a daily allowance per device and address
(schoolgate.services.public_limits), and given a reference and a one-time code to see what
became of it. The technicians are e-mailed when a report arrives (schoolgate.services.notifications).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.services import public_limits
from schoolgate.services.actor import Actor, Signature
from schoolgate.services.common import (
    Page,
    SiteScope,
    audit,
    clean_text,
    in_scope,
    new_status_token,
    on_site,
    parse_url,
    token_matches,
)
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.services.site_blocks import BlockSpec, add_site_block
from schoolgate.store.models import ContentReport, SiteBlockRow
from schoolgate.timewords import local

OPEN = "open"
ACTIONED = "actioned"
CLOSED = "closed"
MAX_URLS = 50
REFERENCE_PREFIX = "IR-"
#: Reports per rolling day from one device or address without an account: a pupil's device
#: cannot flood the technicians; a teaching assistant can still report what a class saw.
PUBLIC_ALLOWANCE = public_limits.Allowance(pupil=3, other=10)
#: Who files a report from a school device without an account, in the audit log.
REPORT_FORM = Actor(name="system:report-form", display_name="report form on a school device")


@dataclass(frozen=True, slots=True)
class ReportForm:
    """Appendix B, the reporter's part."""

    submitter_name: str  # staff name (submitting report)
    urls: str  # full URL(s), one per line
    nature: str  # nature of the inappropriate content
    accessed_by: str = ""  # name of the individual accessing it, if known
    report_date: date | None = None  # defaults to today at the school (the date of `now` in its time zone)


@dataclass(frozen=True, slots=True)
class SubmittedReport:
    """What the reporter without an account is told: the reference and the one-time code."""

    report: ContentReport
    reference: str  # e.g. "IR-000012"
    token: str  # shown once


@dataclass(frozen=True, slots=True)
class ReportStatus:
    """What the reporter may see: whether the technician has acted, not what anyone wrote."""

    reference: str
    status: str
    submitted_at: datetime
    actioned_at: datetime | None
    blocks: int  # how many sites or pages the technician blocked because of it


def reference_for(report_id: int) -> str:
    return f"{REFERENCE_PREFIX}{report_id:06d}"


def parse_reference(reference: str) -> int:
    """`IR-000012` (or `12`) -> 12; InvalidInput otherwise."""
    text = reference.strip().upper().removeprefix(REFERENCE_PREFIX)
    if not text.isdigit() or len(text) > 12:
        raise InvalidInput("That is not a report reference (it looks like IR-000012).", field="reference")
    return int(text)


def parse_urls(text: str) -> list[str]:
    """One URL per line (blank lines ignored); every line must be a web address."""
    urls: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            url, _host = parse_url(line, field="urls")
        except InvalidInput as err:
            raise InvalidInput(f"Line {number} of the URLs: {err.message}", field="urls") from err
        urls.append(url)
    if not urls:
        raise InvalidInput("Please give at least one full URL.", field="urls")
    if len(urls) > MAX_URLS:
        raise InvalidInput(f"At most {MAX_URLS} URLs per report.", field="urls")
    return urls


def get_report(session: Session, site: SiteScope, report_id: int) -> ContentReport:
    report = session.get(ContentReport, report_id)
    if report is None or not in_scope(report.site, site):
        raise NotFound(f"There is no content report {report_id}.")
    return report


def list_reports(
    session: Session, site: SiteScope, *, statuses: Sequence[str] | None = None, limit: int = 50, offset: int = 0
) -> Page[ContentReport]:
    conditions = [on_site(ContentReport.site, site)]
    if statuses is not None:
        conditions.append(ContentReport.status.in_(list(statuses)))
    total = session.scalar(select(func.count()).select_from(ContentReport).where(*conditions)) or 0
    rows = session.scalars(
        select(ContentReport).where(*conditions).order_by(ContentReport.id.desc()).limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def submit_report(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    form: ReportForm,
    zone: tzinfo,
) -> ContentReport:
    """Any console user may report content; the ICT technicians see it in their queue."""
    submitter = clean_text(form.submitter_name, field="submitter_name", max_len=200, required=True)
    urls = parse_urls(form.urls)
    nature = clean_text(form.nature, field="nature", max_len=4000, required=True)
    accessed_by = clean_text(form.accessed_by, field="accessed_by", max_len=200)
    report = ContentReport(
        site=site,
        status=OPEN,
        submitter_name=submitter,
        submitted_by_user_id=actor.user_id,
        accessed_by=accessed_by,
        report_date=form.report_date or local(now, zone).date(),
        urls="\n".join(urls),
        nature=nature,
        created_at=now,
    )
    session.add(report)
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="report.submit",
        object_type="content_report",
        object_id=report.id,
        detail={"urls": urls, "accessed_by": accessed_by},
        now=now,
    )
    return report


def submit_public_report(
    session: Session,
    *,
    site: str,
    now: datetime,
    form: ReportForm,
    filer: public_limits.Filer,
    zone: tzinfo,
    person_id: str | None = None,
    allowance: public_limits.Allowance = PUBLIC_ALLOWANCE,
) -> SubmittedReport:
    """A report from a school device without an account (see the module text)."""
    earlier = session.execute(
        select(ContentReport.device_id, ContentReport.client_ip).where(
            on_site(ContentReport.site, site), ContentReport.created_at > public_limits.since(now),
            (ContentReport.device_id.is_not(None)) | (ContentReport.client_ip.is_not(None)),
        )
    ).all()
    public_limits.check([(device, ip) for device, ip in earlier], filer, allowance, what="reports")
    report = submit_report(session, site=site, now=now, actor=REPORT_FORM, form=form, zone=zone)
    token, stored_hash = new_status_token()
    report.device_id = filer.device_id
    report.client_ip = filer.client_ip
    report.person_id = person_id
    report.status_token_hash = stored_hash
    session.flush()
    return SubmittedReport(report=report, reference=reference_for(report.id), token=token)


def report_status(session: Session, site: str, reference: str, token: str) -> ReportStatus:
    """The outcome as the reporter may see it; NotFound unless reference and code match (a
    wrong code and a missing report give the same answer, so references cannot be probed)."""
    report = session.get(ContentReport, parse_reference(reference))
    if report is None or not in_scope(report.site, site) or not token_matches(report.status_token_hash, token):
        raise NotFound("No report matches that reference and code.")
    blocks = session.scalar(select(func.count()).select_from(SiteBlockRow).where(SiteBlockRow.report_id == report.id))
    return ReportStatus(
        reference=reference_for(report.id), status=report.status, submitted_at=report.created_at,
        actioned_at=report.actioned_at, blocks=int(blocks or 0),
    )


def action_report(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    report_id: int,
    action_taken: str,
    blocks: Sequence[BlockSpec] = (),
    signature: Signature | None = None,
) -> tuple[ContentReport, list[SiteBlockRow]]:
    """The technician's part of appendix B: record the action and apply any blocks.

    Each block is a policy change (audited, generation bumped). An open or already actioned
    report can be actioned again (e.g. a further URL turned up)."""
    actor.require(Permission.ACTION_REPORT, doing="action content reports")
    report = get_report(session, site, report_id)
    if report.status == CLOSED:
        raise InvalidTransition("That report is closed.")
    text = clean_text(action_taken, field="action_taken", max_len=4000, required=True)
    if signature is not None and (signature.user_id != actor.user_id or signature.username != actor.name):
        raise Forbidden("The signature must be your own.")
    created = [
        add_site_block(
            session,
            site=site,
            now=now,
            actor=actor,
            spec=spec,
            reason=f"Content report {report.id}: {text}"[:2000],
            report_id=report.id,
        )
        for spec in blocks
    ]
    report.status = ACTIONED
    report.action_taken = text if not report.action_taken else f"{report.action_taken}\n{text}"
    report.actioned_by_name = actor.display_name
    report.actioned_at = now
    report.signature = signature.as_text() if signature is not None else f"{actor.name} (console session)"
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="report.action",
        object_type="content_report",
        object_id=report.id,
        detail={"action_taken": text, "site_blocks": [b.id for b in created]},
        now=now,
    )
    return report, created


def close_report(
    session: Session, *, site: str, now: datetime, actor: Actor, report_id: int, note: str
) -> ContentReport:
    """Close a report (e.g. after action, or when no action is needed, with the reason)."""
    actor.require(Permission.ACTION_REPORT, doing="close content reports")
    report = get_report(session, site, report_id)
    if report.status == CLOSED:
        raise InvalidTransition("That report is already closed.")
    text = clean_text(note, field="note", max_len=4000, required=True)
    if report.status == OPEN:
        report.action_taken = text
        report.actioned_by_name = actor.display_name
        report.actioned_at = now
    report.status = CLOSED
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="report.close",
        object_type="content_report",
        object_id=report.id,
        detail={"note": text},
        now=now,
    )
    return report
