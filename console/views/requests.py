"""Access requests (seed 001 appendix A): staff raise, technicians triage, the headteacher decides."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.console.forms import local_input, parse_local
from schoolgate.console.reauth import ReauthFailed, sign
from schoolgate.services import access_requests as svc
from schoolgate.services.errors import ServiceError
from schoolgate.services.permissions import Permission
from schoolgate.store.models import AccessRequest

bp = Blueprint("requests", __name__, url_prefix="/requests")

STATUS_FILTERS = {
    "open": svc.OPEN_STATUSES,
    "submitted": (svc.SUBMITTED,),
    "forwarded": (svc.FORWARDED,),
    "decided": (svc.APPROVED, svc.DECLINED, svc.WITHDRAWN),
    "all": None,
}
CSV_LIMIT = 100_000


@bp.route("")
@web.requires(Permission.VIEW_REQUESTS)
def index() -> Any:
    default = "forwarded" if web.can(Permission.DECIDE_REQUEST) and not web.can(Permission.TRIAGE_REQUEST) else "open"
    which = request.args.get("status", default)
    if which not in STATUS_FILTERS:
        which = "open"
    host = request.args.get("host", "")[:255].strip() or None
    offset = web.int_arg("offset", 0)
    if wants_csv():
        page = svc.list_requests(web.db(), web.site_scope(), statuses=STATUS_FILTERS[which], host=host, limit=CSV_LIMIT)
        return csv_response(
            f"access-requests-{which}.csv",
            ["reference", "status", "submitted", "requester", "staff_name", "url", "host", "reasons",
             "device_id", "triaged_by", "authoriser", "approved", "decided_at", "decision_reasons"],
            ([svc.reference_for(r.id), r.status, r.created_at, r.requester, r.staff_name, r.url, r.host,
              r.reasons, r.device_id, r.triaged_by, r.authoriser, r.approved, r.decided_at, r.decision_reasons]
             for r in page.items),
        )
    page = svc.list_requests(web.db(), web.site_scope(), statuses=STATUS_FILTERS[which], host=host, offset=offset)
    return render_template(
        "requests/index.html", page=page, which=which, filters=list(STATUS_FILTERS), host=host or "",
        args={"status": which, **({"host": host} if host else {})}, reference=svc.reference_for,
    )


@bp.route("/new", methods=["GET", "POST"])
@web.requires(Permission.RAISE_REQUEST)
def new() -> Any:
    user = web.current_user()
    assert user is not None
    if request.method == "GET":
        values = {"requester": user.display_name, "staff_name": user.display_name,
                  "url": request.args.get("url", "")[:4000]}
        return render_template("requests/new.html", values=values, errors={}, message=None)
    values = {k: request.form.get(k, "") for k in
              ("requester", "staff_name", "url", "site_content", "reasons", "risks_and_controls")}
    try:
        submitted = svc.submit_request(
            web.db(), site=web.site_id(), now=web.now(), policy=web.policy(), actor=web.actor(),
            form=svc.RequestForm(
                requester=values["requester"], staff_name=values["staff_name"], url=values["url"],
                site_content=values["site_content"], reasons=values["reasons"],
                risks_and_controls=values["risks_and_controls"],
            ),
        )
    except ServiceError as err:
        web.db().rollback()
        return (render_template("requests/new.html", values=values, errors=web.field_errors(err),
                                message=err.message), web.error_status(err))
    web.db().commit()
    flash(f"Request {submitted.reference} sent to the ICT technicians.")
    if web.can(Permission.VIEW_REQUESTS):
        return redirect(url_for("requests.show", request_id=submitted.request.id))
    return render_template("public/submitted.html", submitted=submitted)


def _load(request_id: int) -> AccessRequest:
    try:
        return svc.get_request(web.db(), web.site_scope(), request_id)
    except ServiceError:
        abort(404)


def _triage_defaults(item: AccessRequest) -> dict[str, str]:
    now = web.now()
    if item.proposed_scope:
        return {
            "recommendation": item.technician_recommendation or svc.APPROVE,
            "target": item.proposed_target or "domain",
            "value": item.proposed_value or item.host,
            "scope": item.proposed_scope,
            "subject": item.proposed_subject or "",
            "starts": local_input(item.proposed_starts),
            "expires": local_input(item.proposed_expires),
            "technician_notes": item.technician_notes,
            "risks_and_controls": item.risks_and_controls,
        }
    scope, subject = ("device", item.device_id) if item.device_id else ("role", "pupil")
    if item.person_id:
        scope, subject = "person", item.person_id
    return {
        "recommendation": item.technician_recommendation or svc.APPROVE,
        "target": "domain", "value": item.host, "scope": scope, "subject": subject or "",
        "starts": local_input(now), "expires": local_input(now + timedelta(days=30)),
        "technician_notes": "", "risks_and_controls": item.risks_and_controls,
    }


def _show(item: AccessRequest, *, triage: dict[str, str] | None = None, errors: dict[str, str] | None = None,
          message: str | None = None, decide_values: dict[str, str] | None = None, status: int = 200,
          safeguarding: str | None = None) -> Any:
    user = web.current_user()
    assert user is not None
    return render_template(
        "requests/show.html",
        item=item,
        summary=svc.proposal_summary(item, web.zone()),
        awaits_dsl=svc.awaits_dsl(item),
        safeguarding=item.safeguarding_notes if safeguarding is None else safeguarding,
        reference=svc.reference_for(item.id),
        duplicates=svc.duplicates_of(web.db(), item.site, item.id),
        device_hint=svc.device_hint(web.db(), item.site, item.id),
        is_open=item.status in svc.OPEN_STATUSES,
        triage=triage or _triage_defaults(item),
        proposal=svc.proposal_fingerprint(item),
        decide=decide_values or {"signer_name": user.display_name, "reasons": ""},
        errors=errors or {},
        message=message,
    ), status


@bp.route("/<int:request_id>")
@web.requires(Permission.VIEW_REQUESTS)
def show(request_id: int) -> Any:
    return _show(_load(request_id))


@bp.route("/<int:request_id>/triage", methods=["POST"])
@web.requires(Permission.TRIAGE_REQUEST)
def triage(request_id: int) -> Any:
    item = _load(request_id)
    form = request.form
    values = {k: form.get(k, "") for k in
              ("recommendation", "target", "value", "scope", "subject", "starts", "expires", "technician_notes",
               "risks_and_controls")}
    declining = values["recommendation"] == svc.DECLINE
    try:
        svc.triage_request(
            web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), request_id=item.id,
            policy=web.policy(), max_exception_days=web.state().config.console.max_exception_days,
            form=svc.TriageForm(
                technician_notes=values["technician_notes"], risks_and_controls=values["risks_and_controls"],
                target=values["target"], value=values["value"], scope=values["scope"], subject=values["subject"],
                starts=None if declining else parse_local(values["starts"], field="starts"),
                expires=None if declining else parse_local(values["expires"], field="expires", end_of_day=True),
                recommendation=values["recommendation"] or svc.APPROVE,
                scope_confirmed=form.get("scope_confirmed") == "yes",
            ),
        )
    except ServiceError as err:
        web.db().rollback()
        return _show(_load(request_id), triage=values, errors=web.field_errors(err), message=err.message,
                     status=web.error_status(err))
    web.db().commit()
    forwarded = _load(request_id)
    flash(f"{svc.reference_for(item.id)} is forwarded to "
          + ("the DSL for the safeguarding risks, then the headteacher." if svc.awaits_dsl(forwarded)
             else "the headteacher."))
    return redirect(url_for("requests.show", request_id=item.id))


@bp.route("/<int:request_id>/safeguarding", methods=["POST"])
@web.requires(Permission.REVIEW_REQUEST_SAFEGUARDING)
def safeguarding(request_id: int) -> Any:
    item = _load(request_id)
    notes = request.form.get("safeguarding_notes", "")
    try:
        svc.review_safeguarding(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), request_id=item.id,
                                notes=notes)
    except ServiceError as err:
        web.db().rollback()
        return _show(_load(request_id), errors=web.field_errors(err), message=err.message, safeguarding=notes,
                     status=web.error_status(err))
    web.db().commit()
    flash(f"Your safeguarding notes are on {svc.reference_for(item.id)}; it goes to the headteacher now.")
    return redirect(url_for("requests.show", request_id=item.id))


@bp.route("/<int:request_id>/decide", methods=["POST"])
@web.requires(Permission.DECIDE_REQUEST)
def decide(request_id: int) -> Any:
    form = request.form
    choice = form.get("decision", "")
    values = {"reasons": form.get("reasons", ""), "signer_name": form.get("signer_name", "")}
    # Whatever can be refused without the signature is refused first, from a short read, so a
    # mistake in the form does not use up the code; and no transaction is open while the
    # password is checked.
    with web.read_session() as reading:
        try:
            item = svc.get_request(reading, web.site_scope(), request_id)
        except ServiceError:
            abort(404)
    if choice not in ("approve", "decline"):
        return _show(item, decide_values=values, message="Choose Approve or Decline.", status=400)
    decision_form = svc.DecisionForm(approve=choice == "approve", reasons=values["reasons"], signature=None,
                                     proposal=form.get("proposal", "")[:64] or None,
                                     scope_seen=form.get("scope_seen") if "scope_seen" in form else None)
    try:
        svc.check_decision(item, decision_form, web.zone())
        signature = sign(values["signer_name"], form.get("password", ""), form.get("code", ""))
        svc.decide_request(
            web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), request_id=item.id,
            policy=web.policy(), decision=dataclasses.replace(decision_form, signature=signature),
        )
    except ReauthFailed as err:
        if err.signed_out:
            flash(err.message)
            return redirect(url_for("auth.login"))
        return _show(item, decide_values=values, errors={"password": err.message}, message=err.message,
                     status=429 if "Try again after" in err.message else 400)
    except ServiceError as err:
        web.db().rollback()
        return _show(_load(request_id), decide_values=values, errors=web.field_errors(err), message=err.message,
                     status=web.error_status(err))
    web.db().commit()
    flash(f"{svc.reference_for(item.id)} is {'approved' if choice == 'approve' else 'declined'}.")
    return redirect(url_for("requests.show", request_id=item.id))


@bp.route("/<int:request_id>/withdraw", methods=["POST"])
@web.requires(Permission.WITHDRAW_REQUEST)
def withdraw(request_id: int) -> Any:
    item = _load(request_id)
    try:
        svc.withdraw_request(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), request_id=item.id,
                             reason=request.form.get("reason", ""))
    except ServiceError as err:
        web.db().rollback()
        return _show(_load(request_id), errors=web.field_errors(err), message=err.message,
                     status=web.error_status(err))
    web.db().commit()
    flash(f"{svc.reference_for(item.id)} is withdrawn.")
    return redirect(url_for("requests.show", request_id=item.id))
