"""Who hears about a failed self-test, and what they are told.

The technician always; when filtering itself is not working (a blocked category answered, the
DNS daemon silent, a blocked site reachable), the DSL and the headteacher too: they answer for
safeguarding, and the school must know that its filter is not filtering. A run that fails the
same checks as the last one, which was already e-mailed a short while ago, is not mailed again.
"""

from __future__ import annotations

from datetime import timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from schoolgate.services.mailer import build_message
from schoolgate.services.mailtemplates import link, render
from schoolgate.store.models import CheckRecord, ConsoleUser, UserRole

if TYPE_CHECKING:
    from schoolgate.config import AppConfig
    from schoolgate.selftest.run import SelftestReport

REPEAT_QUIET = timedelta(hours=6)
TECHNICIAN, DSL, HEADTEACHER = "technician", "dsl", "headteacher"


def recipients(session: Session, site: str, *, filtering_down: bool) -> list[str]:
    roles = [TECHNICIAN, DSL, HEADTEACHER] if filtering_down else [TECHNICIAN]
    emails = session.scalars(
        select(ConsoleUser.email)
        .join(UserRole, UserRole.user_id == ConsoleUser.id)
        .where(
            UserRole.role.in_(roles),
            ConsoleUser.active.is_(True),
            ConsoleUser.email.is_not(None),
            or_(ConsoleUser.site == site, ConsoleUser.site.is_(None)),
        )
    ).all()
    seen: dict[str, str] = {}
    for address in emails:
        if address and "@" in address and "\n" not in address and "\r" not in address:
            seen.setdefault(address.strip().lower(), address.strip())
    return sorted(seen.values(), key=str.lower)


def _failing(results: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(str(r.get("check")), str(r.get("subject")), str(r.get("vantage"))) for r in results
            if r.get("status") == "fail"}


def same_failures_as(previous: CheckRecord | None, report: SelftestReport) -> bool:
    """The last run failed the same checks, not long ago, and its failure was e-mailed."""
    from schoolgate.services.checklog import detail_of

    if previous is None or previous.result != "fail" or not previous.notified:
        return False
    if report.at - previous.at > REPEAT_QUIET:
        return False
    now_failing = _failing([r.as_dict() for r in report.failures])
    return _failing(detail_of(previous).get("results", [])) == now_failing


def send(mailer: Any, config: AppConfig, report: SelftestReport, to: list[str], *, zone: tzinfo) -> None:
    """The failure e-mail; times in the school's `zone` (the policy's [school] timezone)."""
    school = config.site.name
    if report.filtering_down:
        subject = f"schoolgate: filtering is NOT working at {school}"
    else:
        subject = f"schoolgate self-test failed at {school}"
    base_url = config.console.base_url
    path = f"/checks/{int(report.check_id)}" if report.check_id else "/checks"
    mail = render("selftest_failed", subject, zone=zone, report=report, school=school, base_url=base_url, link=link,
                  details=link(base_url, path))
    mailer.send(build_message(sender=config.mail.sender, recipients=to, subject=mail.subject, text=mail.text,
                              html=mail.html))
