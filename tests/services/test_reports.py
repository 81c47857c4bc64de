"""Appendix B: a report, the technician's action (a site block), and what the daemons then see."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.policy import Client, CompiledPolicy, Role, Target, Verdict, decide
from schoolgate.services import reports
from schoolgate.services.actor import Actor
from schoolgate.services.errors import Forbidden, InvalidInput, InvalidTransition
from schoolgate.services.site_blocks import BlockSpec, list_site_blocks, remove_site_block
from schoolgate.store import audit as store_audit
from schoolgate.store.models import AuditEntry
from schoolgate.store.overlay import load_overlay, read_generation

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)
ZONE = ZoneInfo("Europe/London")  # the test policy's [school] timezone


def report_form(**overrides: object) -> reports.ReportForm:
    values: dict[str, object] = {
        "submitter_name": "Mr P Evans",
        "urls": "https://games.example/violent-game\n\n  https://cdn.games.example/clip.mp4  \n",
        "nature": "Graphic violence shown on a Year 4 laptop during wet play",
        "accessed_by": "unknown pupil",
    }
    values.update(overrides)
    return reports.ReportForm(**values)  # type: ignore[arg-type]


def test_report_then_block_for_pupils(session: Session, policy: CompiledPolicy, technician: Actor, dsl: Actor) -> None:
    report = reports.submit_report(session, site=SITE, now=NOW, actor=dsl, zone=ZONE, form=report_form())
    assert report.status == reports.OPEN
    assert report.urls.splitlines() == ["https://games.example/violent-game", "https://cdn.games.example/clip.mp4"]
    before = read_generation(session, SITE)

    with pytest.raises(Forbidden):
        reports.action_report(
            session,
            site=SITE,
            now=NOW,
            actor=dsl,
            report_id=report.id,
            action_taken="x",
            blocks=[BlockSpec(domain="games.example")],
        )
    report, blocks = reports.action_report(
        session,
        site=SITE,
        now=NOW,
        actor=technician,
        report_id=report.id,
        action_taken="Blocked games.example for pupils",
        blocks=[BlockSpec(domain="Games.Example.", roles=frozenset({"pupil"}))],
    )
    session.commit()
    assert report.status == reports.ACTIONED and report.actioned_by_name == "Mr T Nguyen"
    (block,) = blocks
    assert (block.domain, block.roles, block.report_id) == ("games.example", "pupil", report.id)
    assert read_generation(session, SITE) == before + 1
    actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))
    assert actions == ["report.submit", "site_block.create", "report.action"]
    detail = json.loads(
        session.scalars(select(AuditEntry.detail).where(AuditEntry.action == "site_block.create")).one()
    )
    assert detail["domain"] == "games.example" and detail["roles"] == "pupil"
    assert store_audit.verify(session, SITE).ok

    overlay = load_overlay(session, SITE, NOW)
    layered = policy.with_overlay(blocks=overlay.site_blocks)
    pupil = Client(ip="10.0.0.5", role=Role.PUPIL)
    staff = Client(ip="10.0.0.6", role=Role.STAFF)
    assert decide(layered, pupil, Target(host="www.games.example"), NOW).verdict is Verdict.BLOCK
    assert decide(layered, staff, Target(host="www.games.example"), NOW).verdict is Verdict.ALLOW

    remove_site_block(session, site=SITE, now=NOW, actor=technician, block_id=block.id, reason="reviewed: fine")
    assert list_site_blocks(session, SITE).total == 0
    assert read_generation(session, SITE) == before + 2
    reports.close_report(session, site=SITE, now=NOW, actor=technician, report_id=report.id, note="done")
    with pytest.raises(InvalidTransition):
        reports.close_report(session, site=SITE, now=NOW, actor=technician, report_id=report.id, note="again")


def test_block_for_every_role_by_url(session: Session, technician: Actor, dsl: Actor) -> None:
    report = reports.submit_report(session, site=SITE, now=NOW, actor=dsl, zone=ZONE, form=report_form())
    _, (block,) = reports.action_report(
        session,
        site=SITE,
        now=NOW,
        actor=technician,
        report_id=report.id,
        action_taken="Blocked the page",
        blocks=[BlockSpec(url_prefix="https://games.example/violent-game")],
    )
    assert block.roles == "" and block.url_prefix == "https://games.example/violent-game" and block.domain is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"urls": ""}, "urls"),
        ({"urls": "https://ok.example/\nnot a url at all"}, "urls"),
        ({"nature": " "}, "nature"),
        ({"submitter_name": ""}, "submitter_name"),
    ],
)
def test_report_validation(session: Session, dsl: Actor, overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        reports.submit_report(session, site=SITE, now=NOW, actor=dsl, zone=ZONE, form=report_form(**overrides))
    assert err.value.field == field


@pytest.mark.parametrize(
    "spec",
    [
        BlockSpec(),
        BlockSpec(domain="a.example", url_prefix="https://a.example/"),
        BlockSpec(domain="a.example", roles=frozenset({"wizard"})),
        BlockSpec(domain="no_dots"),
    ],
)
def test_block_spec_validation(session: Session, technician: Actor, dsl: Actor, spec: BlockSpec) -> None:
    report = reports.submit_report(session, site=SITE, now=NOW, actor=dsl, zone=ZONE, form=report_form())
    with pytest.raises(InvalidInput):
        reports.action_report(
            session, site=SITE, now=NOW, actor=technician, report_id=report.id, action_taken="x", blocks=[spec]
        )


def test_a_report_from_a_school_device_without_an_account(session: Session) -> None:
    from schoolgate.services import public_limits
    from schoolgate.services.errors import NotFound, RateLimited

    filer = public_limits.Filer("KW-IPAD-12", "10.41.20.15", "pupil")
    form = reports.ReportForm(submitter_name="Mr Tay (TA)", urls="https://scary.example.org/a\n",
                              nature="A frightening video")
    first = reports.submit_public_report(session, site=SITE, now=NOW, form=form, zone=ZONE, filer=filer,
                                         person_id="P1042")
    assert first.reference == f"IR-{first.report.id:06d}" and len(first.token) >= 20
    stored = first.report
    assert (stored.device_id, stored.client_ip, stored.person_id) == ("KW-IPAD-12", "10.41.20.15", "P1042")
    assert stored.status_token_hash is not None and first.token not in stored.status_token_hash
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "report.submit")).one()
    assert entry.actor == "system:report-form"
    status = reports.report_status(session, SITE, first.reference, first.token)
    assert (status.status, status.actioned_at, status.blocks) == ("open", None, 0)
    for wrong in ((first.reference, "guess"), ("IR-999999", first.token), (first.reference, "")):
        with pytest.raises(NotFound):
            reports.report_status(session, SITE, *wrong)
    # A pupil's device: three a day, then the technicians are spared.
    for _ in range(reports.PUBLIC_ALLOWANCE.pupil - 1):
        reports.submit_public_report(session, site=SITE, now=NOW, form=form, zone=ZONE, filer=filer)
    with pytest.raises(RateLimited):
        reports.submit_public_report(session, site=SITE, now=NOW, form=form, zone=ZONE, filer=filer)
    tomorrow = reports.submit_public_report(session, site=SITE, now=NOW + timedelta(days=1, minutes=1), form=form,
                                            zone=ZONE, filer=filer)
    assert tomorrow.report.id > first.report.id


def test_a_page_block_records_that_it_closes_the_whole_site_where_pages_cannot_be_seen(
    session: Session, technician: Actor
) -> None:
    from schoolgate.services.site_blocks import add_site_block

    page = add_site_block(session, site=SITE, now=NOW, actor=technician, reason="Reported",
                          spec=BlockSpec(url_prefix="https://news.example.org/nasty", roles=frozenset({"pupil"})))
    assert page.enforced_scope.startswith("This closes the whole of news.example.org, not only pages under")
    whole = add_site_block(session, site=SITE, now=NOW, actor=technician, reason="Reported",
                           spec=BlockSpec(domain="games.example.org"))
    assert whole.enforced_scope == (
        "This closes the whole of games.example.org and its subdomains, on every device it covers."
    )
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "site_block.create")).first()
    assert entry is not None and "enforced_scope" in json.loads(entry.detail)
