"""The front page: today's figures, open work, and blocked attempts over time by service and role."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, render_template, request

from schoolgate.console import charts, web
from schoolgate.gateway.modes import facts
from schoolgate.services import activity, notices, rollups
from schoolgate.services.permissions import Permission
from schoolgate.timewords import clock_words

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

RANGES = {"1": "last 24 hours", "7": "last 7 days", "30": "last 30 days"}


def _label(moment: Any, bucket: str) -> str:
    local = moment.astimezone(web.zone())
    return clock_words(local) if bucket == "hour" else f"{local:%a} {local.day}"


def _table(series: activity.Series) -> tuple[list[str], list[tuple[str, list[int], int]]]:
    labels = [_label(b, series.bucket) for b in series.buckets]
    rows = [(name, values, sum(values)) for name, values in series.counts.items()]
    return labels, rows


@bp.route("")
@web.requires(Permission.VIEW_DASHBOARD)
def index() -> Any:
    days = request.args.get("days", "7")
    if days not in RANGES:
        days = "7"
    now = web.now()
    end = now + timedelta(seconds=1)
    start = end - timedelta(days=int(days))
    session, site = web.db(), web.site_scope()
    figures = activity.dashboard(session, site, now, days=int(days), zone=web.zone())
    fresh = rollups.freshness(session, web.site_id(), now, datetime.now(UTC))
    by_service = activity.blocked_over_time(session, site, start, end, by="service", zone=web.zone())
    by_role = activity.blocked_over_time(session, site, start, end, by="role", zone=web.zone())
    chart_data = []
    for title, series in ((f"Blocked attempts by service, {RANGES[days]}", by_service),
                          (f"Blocked attempts by role, {RANGES[days]}", by_role)):
        labels, rows = _table(series)
        svg = charts.stacked_columns(title, labels, [charts.Series(n, v) for n, v, _ in rows])
        chart_data.append({"title": title, "svg": svg, "labels": labels, "rows": rows})
    top_services = charts.horizontal_bars(
        "Most blocked services", [(r.label, r.count) for r in figures.top_blocked_services]
    )
    return render_template(
        "dashboard/index.html", figures=figures, charts=chart_data, days=days, ranges=RANGES,
        top_services=top_services, fresh=fresh, list_warnings=_list_warnings(now), upkeep=_policy_upkeep(),
        network_mode=facts(web.state().config.network.mode),
        notices=notices.recent(session, web.site_id(), now, web.actor().permissions or frozenset()),
    )


def _list_warnings(now: datetime) -> list[str]:
    """Content lists that are missing, stale or failing to update, in a sentence each."""
    from schoolgate.lists.status import read_statuses

    try:
        statuses = read_statuses(web.state().config, now)
    except Exception as err:  # the policy page shows a broken policy; the dashboard still draws
        return [f"The content lists' state cannot be read: {err}"]
    return [s.describe() for s in statuses if s.needs_attention]


def _policy_upkeep() -> tuple[Any, ...]:
    """The policy's upkeep warnings: term dates running out, the written policy's review overdue."""
    from schoolgate.console.policyref import PolicyUnavailable
    from schoolgate.policy.upkeep import upkeep_warnings

    try:
        policy = web.policy()
    except PolicyUnavailable:
        return ()
    return upkeep_warnings(policy, web.today(policy))
