"""The filtering check log: the self-tests, manual checks recorded from a phone, and fixes."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.console.forms import local_input, parse_local
from schoolgate.services import checklog as svc
from schoolgate.services.errors import ServiceError
from schoolgate.services.permissions import Permission
from schoolgate.store.models import CheckRecord

bp = Blueprint("checks", __name__, url_prefix="/checks")

FILTERS: dict[str, tuple[str | None, str | None]] = {
    "all": (None, None),
    "failed": (None, svc.FAIL),
    "self-tests": (svc.SELFTEST, None),
    "manual": (svc.MANUAL, None),
    "fixes": (svc.FIX, None),
}
SELFTEST_REQUEST = "selftest_requested"  # generations row the scheduler watches


def _profiles() -> list[tuple[str, str]]:
    """The roles a check can be made as: each network of the policy with its role."""
    options: list[tuple[str, str]] = []
    try:
        policy = web.policy()
    except Exception:  # a broken policy file must not stop a technician recording a check
        policy = None
    for network in getattr(policy, "networks", ()) or ():
        label = f"{network.role.value} ({network.name})"
        options.append((label, label))
    options.append(("registered device (its own role)", "a registered device, filtered by its own role"))
    return options


@bp.route("")
@web.requires(Permission.VIEW_CHECKS)
def index() -> Any:
    which = request.args.get("show", "all")
    if which not in FILTERS:
        which = "all"
    kind, result = FILTERS[which]
    session, site = web.db(), web.site_scope()
    if wants_csv():
        page = svc.list_checks(session, site, kind=kind, result=result, limit=100_000)
        return csv_response(
            f"filtering-checks-{which}.csv",
            ["id", "kind", "when", "who", "device_type", "location", "profile", "what_was_tested", "result",
             "action", "fixes_check", "notified"],
            ([c.id, c.kind, c.at.isoformat(), c.actor_name, c.device_type, c.location, c.profile, c.tried,
              c.result, c.action, c.fixes_id or "", c.notified] for c in page.items),
        )
    page = svc.list_checks(session, site, kind=kind, result=result, offset=web.int_arg("offset", 0))
    last = svc.last_selftest(session, web.site_id())
    unfixed = svc.unfixed_failures(session, site)
    return render_template("checks/index.html", page=page, which=which, filters=list(FILTERS),
                           args={"show": which}, last=last, unfixed=unfixed)


def _form_values(source: Any) -> dict[str, str]:
    return {key: str(source.get(key, ""))
            for key in ("device_type", "location", "profile", "tried", "result", "action", "at")}


def _render_new(values: dict[str, str], errors: dict[str, str], message: str | None, status: int = 200) -> Any:
    choices = svc.recent_choices(web.db(), web.site_id())
    device_types = list(dict.fromkeys([*choices["device_type"], *svc.DEVICE_TYPES]))
    return render_template(
        "checks/new.html", values=values, errors=errors, message=message, profiles=_profiles(),
        device_types=device_types, locations=choices["location"], tests=svc.COMMON_TESTS,
    ), status


@bp.route("/new", methods=["GET", "POST"])
@web.requires(Permission.RECORD_CHECK)
def new() -> Any:
    if request.method == "GET":
        # The last check's place and device come first: the next check is usually nearby.
        choices = svc.recent_choices(web.db(), web.site_id(), limit=1)
        values = {
            "device_type": (choices["device_type"] or [""])[0],
            "location": (choices["location"] or [""])[0],
            "profile": "", "tried": "", "result": "", "action": "", "at": local_input(web.now()),
        }
        return _render_new(values, {}, None)
    values = _form_values(request.form)
    now = web.now()
    try:
        at = parse_local(values["at"], field="at") if values["at"].strip() else now
        row = svc.record_manual_check(
            web.db(), site=web.site_id(), actor=web.actor(), now=now,
            form=svc.ManualCheckForm(device_type=values["device_type"], location=values["location"],
                                     profile=values["profile"], tried=values["tried"], result=values["result"],
                                     action=values["action"], at=at),
        )
    except ServiceError as err:
        web.db().rollback()
        return _render_new(values, web.field_errors(err), err.message, web.error_status(err))
    web.db().commit()
    flash(f"Check {row.id} recorded: {'passed' if row.result == svc.PASS else 'failed'}.")
    return redirect(url_for("checks.show", check_id=row.id))


def _load(check_id: int) -> CheckRecord:
    try:
        return svc.get_check(web.db(), web.site_scope(), check_id)
    except ServiceError:
        abort(404)


@bp.route("/<int:check_id>")
@web.requires(Permission.VIEW_CHECKS)
def show(check_id: int) -> Any:
    row = _load(check_id)
    return render_template("checks/show.html", check=row, detail=svc.detail_of(row), errors={}, message=None)


@bp.route("/<int:check_id>/fix", methods=["POST"])
@web.requires(Permission.RECORD_CHECK)
def fix(check_id: int) -> Any:
    row = _load(check_id)
    try:
        made = svc.record_fix(web.db(), site=web.site_id(), actor=web.actor(), check_id=row.id,
                              action=request.form.get("action", ""), now=web.now())
    except ServiceError as err:
        web.db().rollback()
        return render_template("checks/show.html", check=_load(check_id), detail=svc.detail_of(row),
                               errors=web.field_errors(err), message=err.message), web.error_status(err)
    web.db().commit()
    flash(f"Fix recorded for check {row.id}.")
    return redirect(url_for("checks.show", check_id=made.id))


@bp.route("/selftest", methods=["POST"])
@web.requires(Permission.RUN_SELFTEST)
def run_selftest() -> Any:
    """Ask the scheduler for a self-test now (it runs within half a minute; the page says so)."""
    from schoolgate.services.common import advance_mark, audit

    session, site, now = web.db(), web.site_id(), web.now()
    advance_mark(session, site, SELFTEST_REQUEST, now)
    audit(session, site=site, actor=web.actor(), action="selftest.request", object_type="selftest",
          object_id=site, detail={}, now=now)
    session.commit()
    flash("The self-test will run within a minute; its result will appear in this log.")
    return redirect(url_for("checks.index"))
