"""Inappropriate content reports (seed 001 appendix B) and the technician's action on them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.services.actor import Actor, Signature
from schoolgate.services.common import Page, SiteScope, audit, clean_text, in_scope, on_site, parse_url
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.services.site_blocks import BlockSpec, add_site_block
from schoolgate.store.models import ContentReport, SiteBlockRow

LONDON = ZoneInfo("Europe/London")
OPEN = "open"
ACTIONED = "actioned"
CLOSED = "closed"
MAX_URLS = 50


@dataclass(frozen=True, slots=True)
class ReportForm:
    """Appendix B, the reporter's part."""

    submitter_name: str  # staff name (submitting report)
    urls: str  # full URL(s), one per line
    nature: str  # nature of the inappropriate content
    accessed_by: str = ""  # name of the individual accessing it, if known
    report_date: date | None = None  # defaults to today (Europe/London date of `now`)


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
    london_today: date | None = None,
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
        report_date=form.report_date or london_today or now.astimezone(LONDON).date(),
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
