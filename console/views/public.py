"""The public side: the forms of seed 001's appendices A and B for anyone on a school device,
account or not, and the pages that show what became of them.

Anyone on the school network can reach these without an account: a pupil following the block
page's link, a teacher or teaching assistant with no console account. The block page links here
as `/request?url=...&device=...&at=...&rule=...`; every prefilled value is only a suggestion
shown in a form field (escaped). The filer's address is taken from the connection and the device
from that address (schoolgate.services.requester_identity), never from the form; the link's
device value is kept only as an unverified hint for the technician. Each device and address has a
daily allowance (fewer for a pupil's device), and each filing gets a reference and a one-time
code to look up its outcome.
"""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from schoolgate.console import web
from schoolgate.console.forms import parse_instant
from schoolgate.services import access_requests as svc
from schoolgate.services import public_limits, reports
from schoolgate.services.actor import BLOCK_PAGE
from schoolgate.services.errors import NotFound, ServiceError
from schoolgate.services.requester_identity import VerifiedRequester, identify_requester

bp = Blueprint("public", __name__)


def _filer() -> tuple[VerifiedRequester | None, str | None]:
    """The device behind this connection, and the role it has (the register's, else its network's)."""
    found = identify_requester(
        web.db(), web.site_id(), request.remote_addr, web.now(), current_app.extensions.get("schoolgate.neighbours")
    )
    role = found.role if found is not None else None
    if role is None and request.remote_addr:
        role = web.policy().role_for_ip(request.remote_addr).value
    return found, role


def _blocked_at_words(value: str) -> str:
    """The block page's `at`, as the school's local time in words (never shown raw)."""
    from schoolgate.console.app import local_time

    moment = parse_instant(value)
    return local_time(moment) if moment is not None else ""


def _prefill() -> dict[str, str]:
    args = request.args
    return {
        "url": args.get("url", "")[:4000],
        "device": args.get("device", "")[:100],
        "at": args.get("at", "")[:64],
        "rule": args.get("rule", "")[:100],
    }


@bp.route("/")
@web.public
def home() -> Response:
    if web.current_user() is not None:
        return redirect(web.home_url())
    return redirect(url_for("auth.login"))


@bp.route("/request", methods=["GET", "POST"])
@web.public
def request_form() -> str | tuple[str, int]:
    if request.method == "GET":
        values = _prefill()
        return render_template("public/request.html", values=values, at_words=_blocked_at_words(values["at"]),
                               errors={}, message=None)
    form = request.form
    values = {key: form.get(key, "") for key in
              ("requester", "staff_name", "url", "site_content", "reasons", "device", "at", "rule")}
    user = web.current_user()
    found, role = _filer()
    try:
        submitted = svc.submit_request(
            web.db(),
            site=web.site_id(),
            now=web.now(),
            form=svc.RequestForm(
                requester=values["requester"],
                staff_name=values["staff_name"],
                url=values["url"],
                site_content=values["site_content"],
                reasons=values["reasons"],
                device_id=found.device_id if found is not None else None,
                person_id=found.person_id if found is not None else None,
                device_hint=values["device"] or None,
                client_ip=request.remote_addr,
                blocked_at=parse_instant(values["at"]),
                rule_id=values["rule"] or None,
                client_role=role,
            ),
            policy=web.policy(),
            actor=web.actor() if user is not None else BLOCK_PAGE,
        )
    except ServiceError as err:
        web.db().rollback()
        return (
            render_template("public/request.html", values=values, at_words=_blocked_at_words(values["at"]),
                            errors=web.field_errors(err), message=err.message),
            web.error_status(err),
        )
    web.db().commit()
    return render_template("public/submitted.html", submitted=submitted)


@bp.route("/request/status", methods=["GET"])
@web.public
def request_status() -> str | tuple[str, int]:
    reference = request.args.get("ref", "")[:40]
    token = request.args.get("token", "")[:100]
    if not reference and not token:
        return render_template("public/status.html", status=None, reference="", error=None)
    try:
        status = svc.request_status(web.db(), web.site_id(), reference, token)
    except NotFound as err:
        return render_template("public/status.html", status=None, reference=reference, error=err.message), 404
    except ServiceError as err:
        return render_template("public/status.html", status=None, reference=reference, error=err.message), 400
    return render_template("public/status.html", status=status, reference=reference, error=None)


REPORT_FIELDS = ("submitter_name", "accessed_by", "urls", "nature")


@bp.route("/report", methods=["GET", "POST"])
@web.public
def report_form() -> str | tuple[str, int]:
    """Appendix B from any school device: the technicians are e-mailed when it arrives."""
    if request.method == "GET":
        values = {"urls": request.args.get("url", "")[:4000]}
        return render_template("public/report.html", values=values, errors={}, message=None)
    values = {key: request.form.get(key, "") for key in REPORT_FIELDS}
    found, role = _filer()
    try:
        submitted = reports.submit_public_report(
            web.db(),
            site=web.site_id(),
            now=web.now(),
            form=reports.ReportForm(submitter_name=values["submitter_name"], urls=values["urls"],
                                    nature=values["nature"], accessed_by=values["accessed_by"]),
            filer=public_limits.Filer(found.device_id if found else None, request.remote_addr, role),
            zone=web.zone(),
            person_id=found.person_id if found else None,
        )
    except ServiceError as err:
        web.db().rollback()
        return (
            render_template("public/report.html", values=values, errors=web.field_errors(err), message=err.message),
            web.error_status(err),
        )
    web.db().commit()
    return render_template("public/report_sent.html", submitted=submitted)


@bp.route("/report/status", methods=["GET"])
@web.public
def report_status() -> str | tuple[str, int]:
    reference = request.args.get("ref", "")[:40]
    token = request.args.get("token", "")[:100]
    if not reference and not token:
        return render_template("public/report_status.html", status=None, reference="", error=None)
    try:
        status = reports.report_status(web.db(), web.site_id(), reference, token)
    except NotFound as err:
        return render_template("public/report_status.html", status=None, reference=reference, error=err.message), 404
    except ServiceError as err:
        return render_template("public/report_status.html", status=None, reference=reference, error=err.message), 400
    return render_template("public/report_status.html", status=status, reference=reference, error=None)
