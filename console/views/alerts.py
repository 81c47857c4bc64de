"""The DSL's alerts: a filtered list, and a case page with history, notes, assessment,
outcome and a device ban (seed 001 §9)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.console.forms import local_input, parse_local
from schoolgate.console.policyref import PolicyUnavailable
from schoolgate.policy.model import BanPolicy
from schoolgate.services import alerts as svc
from schoolgate.services import bans
from schoolgate.services.alert_evidence import Evidence
from schoolgate.services.errors import ServiceError
from schoolgate.services.keywords import SEVERITIES
from schoolgate.services.permissions import Permission
from schoolgate.store.models import Alert

bp = Blueprint("alerts", __name__, url_prefix="/alerts")

STATUS_FILTERS: dict[str, tuple[str, ...] | None] = {
    "open": svc.OPEN_STATUSES, "new": (svc.NEW,), "in_review": (svc.IN_REVIEW,), "resolved": (svc.RESOLVED,),
    "all": None,
}


def _filter() -> tuple[svc.AlertFilter, dict[str, str]]:
    which = request.args.get("status", "open")
    if which not in STATUS_FILTERS:
        which = "open"
    severity = request.args.get("severity", "")
    severities = (severity,) if severity in SEVERITIES else None
    args = {"status": which, **({"severity": severity} if severities else {})}
    device = request.args.get("device", "")[:100].strip()
    if device:
        args["device"] = device
    query = svc.AlertFilter(statuses=STATUS_FILTERS[which], severities=severities, device_id=device or None,
                            not_about=_viewer())
    return query, args


@bp.route("")
@web.requires(Permission.VIEW_ALERTS)
def index() -> Any:
    query, args = _filter()
    if wants_csv():
        page = svc.list_alerts(web.db(), web.site_id(), query, limit=100_000)
        return csv_response(
            "alerts.csv",
            ["id", "severity", "status", "kind", "category", "title", "device_id", "person_id", "client_ip",
             "first_seen", "last_seen", "trigger_count", "assessment", "outcome"],
            ([a.id, a.severity, a.status, a.kind, a.category, a.title, a.device_id, a.person_id, a.client_ip,
              a.first_seen, a.last_seen, a.trigger_count, a.assessment, a.outcome] for a in page.items),
        )
    page = svc.list_alerts(web.db(), web.site_id(), query, offset=web.int_arg("offset", 0))
    counts = svc.count_open_by_severity(web.db(), web.site_id())
    return render_template(
        "alerts/index.html", page=page, args=args, statuses=list(STATUS_FILTERS), severities=SEVERITIES,
        counts=counts,
    )


def _viewer() -> str | None:
    """The viewer's entry in the people register: cases about them are not theirs to read."""
    user = web.current_user()
    return user.person_external_id if user is not None else None


def _load(alert_id: int) -> Alert:
    try:
        return svc.get_alert(web.db(), web.site_id(), alert_id, not_about=_viewer())
    except ServiceError:
        abort(404)


def _ban_policy() -> BanPolicy:
    try:
        return web.policy().bans
    except PolicyUnavailable:
        return BanPolicy()


def _show(alert: Alert, *, errors: dict[str, str] | None = None, message: str | None = None,
          values: dict[str, str] | None = None, status: int = 200) -> Any:
    now = web.now()
    ban = bans.active_ban_for_case(web.db(), alert, now)
    ban_policy = _ban_policy()
    # The reason is read by admins in the audit log: the case (linked) holds the child's name
    # and the concern, the reason never does.
    defaults = {
        "device_id": bans.case_device(web.db(), alert),
        "until": local_input(now + timedelta(days=ban_policy.days)) if ban_policy.days else "",
        "ban_reason": f"Seed 001 §9: an attempt to get round the school's filtering (case {alert.id})",
        "supervisor": ban_policy.supervisor,
        "follow_person": "1",
    }
    return render_template(
        "alerts/show.html", alert=alert, history=svc.history(web.db(), web.site_id(), alert.id), ban=ban,
        evidence=list(Evidence.from_json(alert.evidence)), ban_policy=ban_policy,
        errors=errors or {}, message=message, values={**defaults, **(values or {})},
        is_open=alert.status in svc.OPEN_STATUSES,
    ), status


@bp.route("/<int:alert_id>")
@web.requires(Permission.VIEW_ALERTS)
def show(alert_id: int) -> Any:
    return _show(_load(alert_id))


def _apply(alert_id: int, done: str, step: Any) -> Any:
    alert = _load(alert_id)
    try:
        step(alert)
    except ServiceError as err:
        web.db().rollback()
        values = {k: v for k, v in request.form.items() if k != "csrf_token"}
        return _show(_load(alert_id), errors=web.field_errors(err), message=err.message, values=values,
                     status=web.error_status(err))
    web.db().commit()
    flash(done)
    return redirect(url_for("alerts.show", alert_id=alert.id))


def _common() -> dict[str, Any]:
    return {"site": web.site_id(), "now": web.now(), "actor": web.actor()}


@bp.route("/<int:alert_id>/note", methods=["POST"])
@web.requires(Permission.MANAGE_ALERTS)
def note(alert_id: int) -> Any:
    return _apply(alert_id, "Note added.", lambda a: svc.add_note(
        web.db(), alert_id=a.id, text=request.form.get("note", ""), **_common()))


@bp.route("/<int:alert_id>/status", methods=["POST"])
@web.requires(Permission.MANAGE_ALERTS)
def status(alert_id: int) -> Any:
    return _apply(alert_id, "Status changed.", lambda a: svc.change_status(
        web.db(), alert_id=a.id, status=request.form.get("status", "")[:20], **_common()))


@bp.route("/<int:alert_id>/assess", methods=["POST"])
@web.requires(Permission.MANAGE_ALERTS)
def assess(alert_id: int) -> Any:
    return _apply(alert_id, "Assessment recorded.", lambda a: svc.assess_alert(
        web.db(), alert_id=a.id, assessment=request.form.get("assessment", "")[:20],
        note=request.form.get("note", ""), **_common()))


@bp.route("/<int:alert_id>/resolve", methods=["POST"])
@web.requires(Permission.MANAGE_ALERTS)
def resolve(alert_id: int) -> Any:
    assessment = request.form.get("assessment", "")[:20] or None
    return _apply(alert_id, "Case resolved.", lambda a: svc.resolve_alert(
        web.db(), alert_id=a.id, outcome=request.form.get("outcome", ""), assessment=assessment,
        **_common()))


@bp.route("/<int:alert_id>/ban", methods=["POST"])
@web.requires(Permission.BAN_DEVICE)
def ban(alert_id: int) -> Any:
    def step(alert: Alert) -> None:
        until_text = request.form.get("until", "").strip()
        bans.ban_device(
            web.db(), device_id=request.form.get("device_id", "") or bans.case_device(web.db(), alert),
            until=parse_local(until_text, field="until", end_of_day=True) if until_text else None,
            reason=request.form.get("ban_reason", ""), supervisor=request.form.get("supervisor", ""),
            follow_person=request.form.get("follow_person") == "1", alert_id=alert.id, zone=web.zone(), **_common(),
        )

    return _apply(alert_id, "Banned: close supervision only, as the ban says. The ban takes effect within seconds.",
                  step)


@bp.route("/bans")
@web.requires(Permission.VIEW_ALERTS)
def ban_list() -> Any:
    now = web.now()
    active_only = request.args.get("all") != "1"
    if wants_csv():
        page = bans.list_bans(web.db(), web.site_id(), now=now, active_only=active_only, limit=100_000)
        return csv_response("bans.csv", ["id", "device_id", "mac", "person_id", "starts", "until", "lifted_at",
                                         "supervisor", "reason", "by"],
                            ([b.id, b.device_id, b.mac, b.person_id, b.starts, b.until or "until lifted", b.lifted_at,
                              b.supervisor, b.reason, b.created_by] for b in page.items))
    page = bans.list_bans(web.db(), web.site_id(), now=now, active_only=active_only, offset=web.int_arg("offset", 0))
    return render_template("alerts/bans.html", page=page, args={"all": "1"} if not active_only else {},
                           active_only=active_only, now=now)


@bp.route("/bans/<int:ban_id>/lift", methods=["POST"])
@web.requires(Permission.BAN_DEVICE)
def lift(ban_id: int) -> Any:
    try:
        bans.lift_ban(web.db(), ban_id=ban_id, reason=request.form.get("reason", ""), **_common())
    except ServiceError as err:
        web.db().rollback()
        flash(f"The ban was not lifted: {err.message}")
        return redirect(url_for("alerts.ban_list"))
    web.db().commit()
    flash("Ban lifted.")
    return redirect(url_for("alerts.ban_list"))
