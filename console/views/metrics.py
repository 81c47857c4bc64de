"""Prometheus `/metrics` and the SIEM's JSON export: for a scraper or SIEM with the bearer token
(`[metrics] token_file`), or a signed-in technician; from the school's own network only."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, jsonify, request

from schoolgate.console import web
from schoolgate.services import export, metrics
from schoolgate.services.permissions import Permission

bp = Blueprint("metrics", __name__)
log = logging.getLogger(__name__)
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_tokens: dict[str, tuple[int, bytes]] = {}  # token file -> (mtime, SHA-256 of the token)


def token_ok() -> bool:
    """The request carries the configured bearer token (compared in constant time)."""
    path = web.state().config.metrics.token_file
    given = request.headers.get("Authorization", "")
    if not path or not given.startswith("Bearer "):
        return False
    try:
        stamp = Path(path).stat().st_mtime_ns
        cached = _tokens.get(path)
        if cached is None or cached[0] != stamp:
            token = Path(path).read_text(encoding="utf-8").strip()
            if len(token) < 16:
                return False  # a short token would be guessable: refuse it rather than accept anything
            cached = (stamp, hashlib.sha256(token.encode()).digest())
            _tokens[path] = cached
    except OSError:
        return False
    return hmac.compare_digest(hashlib.sha256(given[7:].strip().encode()).digest(), cached[1])


def _from_lan() -> None:
    """Only devices on the school's network (or the appliance itself) may read these."""
    config = web.state().config
    try:
        address = ipaddress.ip_address((request.remote_addr or "").split("%", 1)[0])
    except ValueError:
        abort(404)
    if address.is_loopback:
        return
    networks = [ipaddress.ip_network(c, strict=False) for c in config.network.lan_cidrs]
    if networks and not any(address in n for n in networks if n.version == address.version):
        abort(404)


def _list_statuses() -> list[Any]:
    """The lists as `schoolgate lists status` reports them; none if the manifest or the policy
    cannot be read (the scrape still says how the daemons are, and the self-test reports why)."""
    from schoolgate.lists.status import read_statuses

    try:
        return list(read_statuses(web.state().config, web.now()))
    except Exception as err:
        log.warning("metrics: the lists' status cannot be read: %s", err)
        return []


@bp.route("/metrics")
@web.token_or(token_ok)
@web.requires(Permission.VIEW_METRICS)
def scrape() -> Any:
    _from_lan()
    try:
        policy = web.policy()
    except Exception:  # the metrics still say how the daemons are
        policy = None
    families = metrics.collect(web.db(), web.site_id(), web.now(), datetime.now(UTC), policy,
                               list_statuses=_list_statuses())
    return Response(metrics.exposition(families), mimetype="text/plain", content_type=PROMETHEUS_TYPE)


def _page(kind: str) -> Any:
    _from_lan()
    try:
        after = int(request.args.get("after", "0"))
        limit = int(request.args.get("limit", str(export.MAX_PAGE)))
    except ValueError:
        abort(400, description="after and limit are numbers")
    session, site = web.db(), web.site_id()
    if kind == "event":
        items = export.events_after(session, site, after, keywords=web.keywords(), limit=limit,
                                    everything=request.args.get("all") == "1")
    else:
        items = export.audit_after(session, site, after, limit=limit)
    return jsonify({"items": items, "next": items[-1]["id"] if items else after})


@bp.route("/export/events")
@web.token_or(token_ok)
@web.requires(Permission.VIEW_METRICS)
def export_events() -> Any:
    return _page("event")


@bp.route("/export/audit")
@web.token_or(token_ok)
@web.requires(Permission.VIEW_METRICS)
def export_audit() -> Any:
    return _page("audit")
