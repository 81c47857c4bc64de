"""Coverage: every device seen on the school's network, and whether schoolgate filters it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.services import coverage as svc
from schoolgate.services.permissions import Permission

bp = Blueprint("coverage", __name__, url_prefix="/coverage")
SHOW = ("all", *svc.STATUSES)


@bp.route("")
@web.requires(Permission.VIEW_COVERAGE)
def index() -> Any:
    which = request.args.get("show", "all")
    if which not in SHOW:
        which = "all"
    session, site, now = web.db(), web.site_id(), web.now()
    try:
        policy = web.policy()
    except Exception:  # a broken policy file: roles then come from the register alone
        policy = None
    lines = svc.coverage_lines(session, site, now, policy)
    counts = {status: sum(1 for line in lines if line.status == status) for status in svc.STATUSES}
    shown = [line for line in lines if which in ("all", line.status)]
    if wants_csv():
        def stamp(moment: Any) -> str:
            return moment.isoformat() if moment else ""

        return csv_response(
            f"coverage-{which}.csv",
            ["status", "device", "device_id", "ip", "mac", "role", "reason", "last_dns_through_schoolgate",
             "last_forwarded", "last_seen", "vpn", "circumvention", "trusts_school_ca"],
            ([line.status, line.name, line.device_id or "", line.ip, line.mac or "", line.role, line.reason,
              stamp(line.dns_at), stamp(line.forwarded_at), stamp(line.last_seen), line.vpn_detail,
              line.circumvention_detail,
              "" if line.trusts_school_ca is None else ("yes" if line.trusts_school_ca else "no")]
             for line in shown),
        )
    return render_template("coverage/index.html", lines=shown, counts=counts, which=which, shows=SHOW,
                           args={"show": which}, settings=svc.Settings.from_config(web.state().config))
