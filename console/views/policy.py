"""The policy as it stands: rules in order, exceptions in force, technicians' blocks, and a
"what would happen?" check for any site and role."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.console.policyref import PolicyUnavailable
from schoolgate.policy import Client, Ownership, Role, Target, decide, explain_text
from schoolgate.policy.upkeep import upkeep_warnings
from schoolgate.services import policy_exceptions, policy_history, site_blocks
from schoolgate.services.common import normalise_host
from schoolgate.services.errors import NotFound, ServiceError
from schoolgate.services.permissions import Permission

bp = Blueprint("policy", __name__, url_prefix="/policy")

ROLES = [r.value for r in Role]
# "" asks the device register (when a device id is given); otherwise the device is unknown.
OWNERSHIP_CHOICES = (("", "as the register says"), ("school_owned", "the school's"), ("personal", "the owner's own"))


def _check(values: dict[str, str]) -> tuple[str | None, str | None]:
    """Answer the page's "what would happen?" form: (explanation, error)."""
    host_text = values.get("host", "")
    if not host_text:
        return None, None
    try:
        host = normalise_host(host_text.split("://", 1)[-1].split("/", 1)[0], field="host")
        role = Role(values.get("role") or "pupil")
        now = web.now()
        policy = web.policy_ref().with_overlay(web.db(), web.site_id(), now)
        device_id = values.get("device") or None
        client = Client(ip="0.0.0.0", role=role, device_id=device_id, person_id=values.get("person") or None,
                        ownership=_ownership(values.get("ownership", ""), device_id))
        decision = decide(policy, client, Target(host=host), now)
        return explain_text(decision, policy, now), None
    except ServiceError as err:
        return None, err.message
    except ValueError as err:
        return None, str(err)


_OWNERSHIPS = {o.value: o for o in Ownership}


def _ownership(chosen: str, device_id: str | None) -> Ownership | None:
    """The ownership the check form chose, else the register's record of the device."""
    if chosen in _OWNERSHIPS:
        return _OWNERSHIPS[chosen]
    if device_id is None:
        return None
    from schoolgate.services.register import find_device

    device = find_device(web.db(), web.site_id(), device_id)
    return _OWNERSHIPS.get(device.ownership or "") if device is not None else None


@bp.route("")
@web.requires(Permission.VIEW_POLICY)
def index() -> Any:
    now = web.now()
    values = {k: request.args.get(k, "")[:255].strip() for k in ("host", "role", "device", "person", "ownership")}
    try:
        policy = web.policy()
        load_error = web.policy_ref().error
    except PolicyUnavailable as err:
        policy, load_error = None, str(err)
    explanation, check_error = _check(values) if policy is not None else (None, None)
    active = policy_exceptions.list_exceptions(web.db(), web.site_scope(), now=now, state=policy_exceptions.ACTIVE)
    upcoming = policy_exceptions.list_exceptions(web.db(), web.site_scope(), now=now, state=policy_exceptions.UPCOMING)
    blocks = site_blocks.list_site_blocks(web.db(), web.site_scope())
    from schoolgate.lists.status import read_statuses
    from schoolgate.services import illegal_content

    config = web.state().config
    try:
        list_statuses = read_statuses(config, now) if policy is not None else []
    except Exception:  # the page must draw; the dashboard and doctor say what is wrong
        list_statuses = []
    versions = policy_history.list_versions(web.db(), web.site_scope(), limit=3)
    upkeep = upkeep_warnings(policy, web.today(policy)) if policy is not None else ()
    return render_template(
        "policy/index.html", policy=policy, load_error=load_error, values=values, roles=ROLES,
        list_statuses=list_statuses, illegal_content=illegal_content.setting_of(config),
        illegal_content_text=illegal_content.WHAT_SCHOOLGATE_DOES,
        explanation=explanation, check_error=check_error, active=active, upcoming=upcoming, blocks=blocks,
        ownership_choices=OWNERSHIP_CHOICES, versions=versions, upkeep=upkeep,
        lines_of=lambda row: policy_history.changes_of(row).lines(),
        policy_path=str(web.state().config.policy),
    )


@bp.route("/history")
@web.requires(Permission.VIEW_POLICY)
def history() -> Any:
    """Every recorded version of the policy file: when, who, what changed."""
    page = policy_history.list_versions(web.db(), web.site_scope(), offset=web.int_arg("offset", 0))
    return render_template(
        "policy/history.html", page=page, lines_of=lambda row: policy_history.changes_of(row).lines()
    )


@bp.route("/exceptions")
@web.requires(Permission.VIEW_POLICY)
def exceptions() -> Any:
    """Every exception, past and present (CSV with ?format=csv)."""
    state = request.args.get("state", policy_exceptions.ALL)
    if state not in (policy_exceptions.ACTIVE, policy_exceptions.UPCOMING, policy_exceptions.ENDED,
                     policy_exceptions.ALL):
        state = policy_exceptions.ALL
    now = web.now()
    limit = 100_000 if wants_csv() else 100
    page = policy_exceptions.list_exceptions(web.db(), web.site_scope(), now=now, state=state, limit=limit,
                                             offset=0 if wants_csv() else web.int_arg("offset", 0))
    if wants_csv():
        return csv_response("exceptions.csv", ["id", "state", "scope", "subject", "domain", "url_prefix", "starts",
                                               "expires", "revoked_at", "request_id", "created_by", "reason"],
                            ([x.id, policy_exceptions.exception_state(x, now), x.scope, x.subject, x.domain,
                              x.url_prefix, x.starts, x.expires, x.revoked_at, x.request_id, x.created_by, x.reason]
                             for x in page.items))
    return render_template("policy/exceptions.html", page=page, state=state, args={"state": state}, now=now,
                           state_of=policy_exceptions.exception_state)


@bp.route("/exceptions/<int:exception_id>/revoke", methods=["POST"])
@web.requires(Permission.REVOKE_EXCEPTION)
def revoke(exception_id: int) -> Any:
    try:
        policy_exceptions.revoke_exception(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(),
                                           exception_id=exception_id, reason=request.form.get("reason", ""))
    except NotFound:
        web.db().rollback()
        abort(404)  # not this school's: say no more than that it is not here
    except ServiceError as err:
        web.db().rollback()
        flash(f"The exception was not revoked: {err.message}")
        return redirect(url_for("policy.index"))
    web.db().commit()
    flash(f"Exception {exception_id} revoked; it stops applying within seconds.")
    return redirect(url_for("policy.index"))


@bp.route("/blocks", methods=["POST"])
@web.requires(Permission.EDIT_POLICY)
def add_block() -> Any:
    form = request.form
    target = form.get("target", "domain")
    value = form.get("value", "")
    spec = site_blocks.BlockSpec(
        domain=value if target == "domain" else None,
        url_prefix=value if target == "url" else None,
        roles=frozenset(r for r in form.getlist("roles") if r),
    )
    try:
        row = site_blocks.add_site_block(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), spec=spec,
                                         reason=form.get("reason", ""))
    except ServiceError as err:
        web.db().rollback()
        flash(f"Nothing was blocked: {err.message}")
        return redirect(url_for("policy.index"))
    web.db().commit()
    flash(f"Blocked {row.domain or row.url_prefix}.")
    return redirect(url_for("policy.index"))


@bp.route("/blocks/<int:block_id>/remove", methods=["POST"])
@web.requires(Permission.EDIT_POLICY)
def remove_block(block_id: int) -> Any:
    try:
        site_blocks.remove_site_block(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(),
                                      block_id=block_id, reason=request.form.get("reason", ""))
    except ServiceError as err:
        web.db().rollback()
        flash(f"The block was not removed: {err.message}")
        return redirect(url_for("policy.index"))
    web.db().commit()
    flash("Block removed.")
    return redirect(url_for("policy.index"))
