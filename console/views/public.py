"""The public side: the access request form the block page links to, and its status page.

Anyone on the school network can reach these without an account. The block page links here
as `/request?url=...&device=...&at=...&rule=...`; every prefilled value is only a suggestion
shown in a form field (escaped). The requester's address is taken from the connection and
the device from that address (schoolgate.services.requester_identity); the link's device
value is kept only as an unverified hint for the technician.
"""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from schoolgate.console import web
from schoolgate.console.forms import parse_instant
from schoolgate.services import access_requests as svc
from schoolgate.services.actor import BLOCK_PAGE
from schoolgate.services.errors import NotFound, ServiceError
from schoolgate.services.requester_identity import identify_requester

bp = Blueprint("public", __name__)


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
        return render_template("public/request.html", values=_prefill(), errors={}, message=None)
    form = request.form
    values = {key: form.get(key, "")[:4000] for key in
              ("requester", "staff_name", "url", "site_content", "reasons", "device", "at", "rule")}
    user = web.current_user()
    found = identify_requester(
        web.db(), web.site_id(), request.remote_addr, web.now(), current_app.extensions.get("schoolgate.neighbours")
    )
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
            ),
            policy=web.policy(),
            actor=web.actor() if user is not None else BLOCK_PAGE,
        )
    except ServiceError as err:
        web.db().rollback()
        return (
            render_template("public/request.html", values=values, errors=web.field_errors(err), message=err.message),
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
