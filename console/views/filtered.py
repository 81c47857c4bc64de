"""The "Am I filtered?" page at the appliance's name: any device sees who the appliance takes
it for, and a live test of every category (see schoolgate.services.filter_test)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from schoolgate.console import web
from schoolgate.services import filter_test as svc

bp = Blueprint("filtered", __name__, url_prefix="/filtered")
TOKEN_AGE_S = 15 * 60
# The page must make the browser fetch names of other sites (the canaries): its own policy
# allows images from anywhere, and still no script but the console's own.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: http: https:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="schoolgate-am-i-filtered")


def _who() -> tuple[str, Any, Any]:
    """(address, policy Client, registered device or None) for the connection's address."""
    from schoolgate.identity.neighbours import canonical_ip
    from schoolgate.identity.register import load_register
    from schoolgate.identity.resolver import IdentityResolver

    ip = canonical_ip(request.remote_addr or "")
    neighbours = current_app.extensions.get("schoolgate.neighbours")
    client = IdentityResolver(load_register(web.db(), web.site_id()), neighbours).resolve(ip)
    return ip, client, client.device_id


@bp.route("")
@web.public
def page() -> Any:
    now = web.now()
    ip, client, _device = _who()
    policy = web.policy()
    from schoolgate.policy import Target, decide

    role = decide(policy, client, Target(host="am-i-filtered.schoolgate.invalid"), now).role.value
    tests = svc.category_tests(policy, client, now)
    token = _signer().dumps({"ip": ip, "at": now.timestamp(), "n": secrets.token_hex(4)})
    response = current_app.make_response(render_template(
        "filtered/index.html", ip=ip, client=client, role=role, tests=tests, token=token,
        stamp=int(now.timestamp()), results=None, reached=None,
    ))
    response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


@bp.route("/result")
@web.public
def result() -> Any:
    if not request.args.get("token"):
        return redirect(url_for("filtered.page"))  # the test starts on the page
    try:
        claims = _signer().loads(request.args.get("token", ""), max_age=TOKEN_AGE_S)
    except BadSignature:
        abort(400, description="This test has expired. Open the page again.")
    ip, client, _device = _who()
    if claims.get("ip") != ip:
        abort(403, description="This test was started from another device.")
    since = datetime.fromtimestamp(float(claims["at"]), UTC)
    tests = svc.category_tests(web.policy(), client, since)
    results = svc.observe(web.db(), web.site_id(), ip, tests, since)
    reached = svc.reached(results)
    if request.args.get("format") == "json":
        return jsonify({
            "reached": reached,
            "categories": [{"id": r.test.id, "name": r.test.name, "expected": r.test.expected,
                            "observed": r.observed, "as_policy_says": r.as_policy_says, "words": r.words()}
                           for r in results],
        })
    return render_template("filtered/result.html", ip=ip, results=results, reached=reached)
