"""Activity search (by person, device, service, site, time) and "why was this blocked?" per event."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, abort, render_template, request

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.console.forms import parse_local
from schoolgate.console.policyref import PolicyUnavailable
from schoolgate.policy import Client, Role, Target, decide, explain_text
from schoolgate.services import activity as svc
from schoolgate.services.common import in_scope
from schoolgate.services.errors import ServiceError
from schoolgate.services.permissions import Permission
from schoolgate.services.safeguarding_detail import shown_events
from schoolgate.store.models import AccessEvent

bp = Blueprint("activity", __name__, url_prefix="/activity")

FILTERS = ("person", "device", "service", "host", "verdict", "role", "start", "end", "flagged", "days")
CSV_MAX_ROWS = 100_000
EVENT_COLUMNS = ["ts", "verdict", "host", "url", "search_term", "device_id", "device_name", "person_id",
                 "person_name", "role", "client_ip", "mac", "service", "category", "rule_id", "clause", "flags",
                 "count", "source"]


def _range(args: Any, now: datetime) -> tuple[datetime, datetime]:
    if args.get("start") or args.get("end"):
        start = parse_local(args.get("start") or (now - timedelta(days=7)).astimezone(web.zone()).date().isoformat(),
                            field="start")
        end = (parse_local(args["end"], field="end", end_of_day=True) + timedelta(minutes=1)
               if args.get("end") else now + timedelta(seconds=1))
        return start, end
    days = args.get("days", "7")
    span = int(days) if days in ("1", "7", "30", "90") else 7
    return now - timedelta(days=span), now + timedelta(seconds=1)


def _cursor(text: str) -> tuple[datetime, int] | None:
    stamp, _, ident = text.partition("_")
    try:
        moment = datetime.fromisoformat(stamp)
        return (moment, int(ident)) if moment.tzinfo is not None else None
    except ValueError:
        return None


@bp.route("")
@web.requires(Permission.VIEW_ACTIVITY)
def search() -> Any:
    args = request.args
    values = {k: args.get(k, "")[:255].strip() for k in FILTERS}
    kept = {k: v for k, v in values.items() if v}
    now = web.now()
    try:
        start, end = _range(values, now)
        query = svc.EventQuery(
            start=start, end=end, person_id=values["person"] or None, device_id=values["device"] or None,
            service=values["service"] or None, host=values["host"] or None, verdict=values["verdict"] or None,
            role=values["role"] or None, flagged_only=values["flagged"] == "1",
            limit=50, before=_cursor(args.get("before", "")[:80]),
        )
        if wants_csv():
            return csv_response("activity.csv", EVENT_COLUMNS, _all_rows(query))
        page = svc.search_events(web.db(), web.site_scope(), query)
        shown = list(_shown(page.items))
    except ServiceError as err:
        return render_template("activity/search.html", page=None, values=values, kept=kept, error=err.message,
                               verdicts=svc.VERDICTS, roles=[r.value for r in Role], next_args=None), 400
    next_args = None
    if page.next_cursor is not None:
        ts, ident = page.next_cursor
        next_args = {**kept, "before": f"{ts.isoformat()}_{ident}"}
    return render_template("activity/search.html", page=page, events=shown, values=values, kept=kept, error=None,
                           verdicts=svc.VERDICTS, roles=[r.value for r in Role], next_args=next_args)


def _shown(rows: Any) -> Any:
    """Events as the signed-in person may see them (services.safeguarding_detail)."""
    return shown_events(rows, may_read=web.can(Permission.READ_SAFEGUARDING_DETAIL), keywords=web.keywords())


def _all_rows(query: svc.EventQuery) -> Any:
    """Every matching event for the CSV, page by page (bounded)."""
    sent = 0
    cursor = query.before
    while sent < CSV_MAX_ROWS:
        page = svc.search_events(web.db(), web.site_scope(), svc.EventQuery(**{
            **{f: getattr(query, f) for f in query.__slots__}, "limit": svc.MAX_PAGE, "before": cursor}))
        for e in _shown(page.items):
            yield [getattr(e, c) for c in EVENT_COLUMNS]
        sent += len(page.items)
        if page.next_cursor is None:
            return
        cursor = page.next_cursor


@bp.route("/<int:event_id>")
@web.requires(Permission.VIEW_ACTIVITY)
def event(event_id: int) -> Any:
    """One event, and in plain words why the policy decided as it did."""
    row = web.db().get(AccessEvent, event_id)
    if row is None or not in_scope(row.site, web.site_scope()):
        abort(404)
    explanation, current, policy_error, logged_rule = None, None, None, None
    try:
        policy = web.policy_ref().with_overlay(web.db(), row.site, row.ts)
        logged_rule = next((r for r in (*policy.rules, policy.default_rule) if r.id == row.rule_id), None)
        try:
            role = Role(row.role)
        except ValueError:
            role = None
        client = Client(ip=row.client_ip, mac=row.mac, device_id=row.device_id, device_name=row.device_name,
                        person_id=row.person_id, person_name=row.person_name, role=role)
        current = decide(policy, client, Target(host=row.host, url=row.url), row.ts)
        explanation = explain_text(current, policy, row.ts)
    except PolicyUnavailable as err:
        policy_error = str(err)
    except ValueError as err:  # a logged host the policy cannot even parse
        policy_error = f"The policy cannot judge this host: {err}"
    # The logged decision is the fact; today's policy (with today's exceptions) may differ.
    same = current is not None and current.rule_id == row.rule_id and current.verdict.value == row.verdict
    (shown,) = _shown([row])
    return render_template("activity/event.html", event=shown, explanation=explanation, current=current,
                           policy_error=policy_error, logged_rule=logged_rule, same=same)


@bp.route("/devices")
@web.requires(Permission.VIEW_ACTIVITY)
def devices() -> Any:
    """What the gateway refused or redirected quietly, per device: never alerts, worth a look."""
    from schoolgate.services.device_signals import device_signal_counts

    days = request.args.get("days", "7")
    span = int(days) if days in ("1", "7", "30") else 7
    now = web.now()
    rows = device_signal_counts(web.db(), web.site_scope(), now - timedelta(days=span), now + timedelta(seconds=1))
    if wants_csv():
        return csv_response("quiet-refusals.csv",
                            ["site", "device", "registered", "label", "kind", "attempts", "destinations",
                             "first_seen", "last_seen"],
                            ([r.site, r.device, r.registered, r.label, r.kind, r.attempts, r.destinations,
                              r.first_seen, r.last_seen] for r in rows))
    return render_template("activity/devices.html", rows=rows, days=span)
