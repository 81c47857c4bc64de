"""Inappropriate-content reports (seed 001 appendix B): any staff member reports, a technician acts."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.policy.types import Role
from schoolgate.services import reports as svc
from schoolgate.services.errors import ServiceError
from schoolgate.services.permissions import Permission
from schoolgate.services.site_blocks import BlockSpec
from schoolgate.store.models import ContentReport

bp = Blueprint("reports", __name__, url_prefix="/reports")

STATUS_FILTERS = {"open": (svc.OPEN,), "actioned": (svc.ACTIONED,), "closed": (svc.CLOSED,), "all": None}
BLOCKABLE_ROLES = [r.value for r in Role if r is not Role.SUPERVISED]


@bp.route("")
@web.requires(Permission.VIEW_REPORTS)
def index() -> Any:
    which = request.args.get("status", "open")
    if which not in STATUS_FILTERS:
        which = "open"
    if wants_csv():
        page = svc.list_reports(web.db(), web.site_scope(), statuses=STATUS_FILTERS[which], limit=100_000)
        return csv_response(
            f"content-reports-{which}.csv",
            ["id", "status", "report_date", "submitter", "accessed_by", "urls", "nature", "action_taken",
             "actioned_by", "actioned_at"],
            ([r.id, r.status, r.report_date, r.submitter_name, r.accessed_by, r.urls.replace("\n", " "), r.nature,
              r.action_taken, r.actioned_by_name, r.actioned_at] for r in page.items),
        )
    page = svc.list_reports(web.db(), web.site_scope(), statuses=STATUS_FILTERS[which], offset=web.int_arg("offset", 0))
    return render_template("reports/index.html", page=page, which=which, filters=list(STATUS_FILTERS),
                           args={"status": which})


@bp.route("/new", methods=["GET", "POST"])
@web.requires(Permission.RAISE_REPORT)
def new() -> Any:
    user = web.current_user()
    assert user is not None
    if request.method == "GET":
        values = {"submitter_name": user.display_name, "urls": request.args.get("url", "")[:4000]}
        return render_template("reports/new.html", values=values, errors={}, message=None)
    values = {k: request.form.get(k, "") for k in ("submitter_name", "urls", "nature", "accessed_by")}
    now = web.now()
    try:
        report = svc.submit_report(
            web.db(), site=web.site_id(), now=now, actor=web.actor(), zone=web.zone(),
            form=svc.ReportForm(submitter_name=values["submitter_name"], urls=values["urls"],
                                nature=values["nature"], accessed_by=values["accessed_by"]),
        )
    except ServiceError as err:
        web.db().rollback()
        return (render_template("reports/new.html", values=values, errors=web.field_errors(err), message=err.message),
                web.error_status(err))
    web.db().commit()
    flash(f"Report {report.id} sent to the ICT technicians. Thank you.")
    if web.can(Permission.VIEW_REPORTS):
        return redirect(url_for("reports.show", report_id=report.id))
    return redirect(url_for("dashboard.index"))


def _load(report_id: int) -> ContentReport:
    try:
        return svc.get_report(web.db(), web.site_scope(), report_id)
    except ServiceError:
        abort(404)


def _show(report: ContentReport, *, errors: dict[str, str] | None = None, message: str | None = None,
          values: dict[str, Any] | None = None, status: int = 200) -> Any:
    from schoolgate.services.site_blocks import block_statement

    urls = report.urls.splitlines()
    closes = {}
    for url in urls:
        try:
            closes[url] = block_statement(web.db(), report.site, domain=None, url_prefix=url)
        except ServiceError:
            continue
    return render_template(
        "reports/show.html", report=report, urls=urls, roles=BLOCKABLE_ROLES, closes=closes,
        errors=errors or {}, message=message, values=values or {},
    ), status


@bp.route("/<int:report_id>")
@web.requires(Permission.VIEW_REPORTS)
def show(report_id: int) -> Any:
    return _show(_load(report_id))


@bp.route("/<int:report_id>/action", methods=["POST"])
@web.requires(Permission.ACTION_REPORT)
def action(report_id: int) -> Any:
    report = _load(report_id)
    form = request.form
    roles = frozenset(r for r in form.getlist("roles") if r)
    blocks: list[BlockSpec] = []
    for line in form.getlist("block_url"):
        if line.strip():
            blocks.append(BlockSpec(url_prefix=line.strip(), roles=roles))
    for line in form.getlist("block_domain"):
        if line.strip():
            blocks.append(BlockSpec(domain=line.strip(), roles=roles))
    extra = form.get("extra_domain", "").strip()
    if extra:
        blocks.append(BlockSpec(domain=extra, roles=roles))
    try:
        _report, created = svc.action_report(
            web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), report_id=report.id,
            action_taken=form.get("action_taken", ""), blocks=blocks,
        )
    except ServiceError as err:
        web.db().rollback()
        values = {"action_taken": form.get("action_taken", ""), "extra_domain": extra, "roles": roles}
        return _show(_load(report_id), errors=web.field_errors(err), message=err.message, values=values,
                     status=web.error_status(err))
    web.db().commit()
    flash(f"Report {report.id} actioned" + (f"; {len(created)} block(s) added." if created else "."))
    return redirect(url_for("reports.show", report_id=report.id))


@bp.route("/<int:report_id>/close", methods=["POST"])
@web.requires(Permission.ACTION_REPORT)
def close(report_id: int) -> Any:
    report = _load(report_id)
    try:
        svc.close_report(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), report_id=report.id,
                         note=request.form.get("note", ""))
    except ServiceError as err:
        web.db().rollback()
        return _show(_load(report_id), errors=web.field_errors(err), message=err.message, status=web.error_status(err))
    web.db().commit()
    flash(f"Report {report.id} closed.")
    return redirect(url_for("reports.show", report_id=report.id))
