"""How the appliance sits in the school's network, in plain words, and who it can identify.

The deployment mode and what it leaves to the school's own firewall or hardware
(schoolgate.gateway.modes, the same words doctor uses), and the identity sources: the DHCP
lease files followed and the Wi-Fi controller's RADIUS accounting, with the identity daemon's
own counters (packets recorded and dropped, leases and bad records per file).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, render_template
from sqlalchemy import func, or_, select

from schoolgate.console import web
from schoolgate.gateway.modes import facts
from schoolgate.services.permissions import Permission
from schoolgate.store.events import read_status
from schoolgate.store.models import DhcpLeaseRow, RadiusSession

bp = Blueprint("network", __name__, url_prefix="/network")


@bp.route("")
@web.requires(Permission.VIEW_POLICY)
def index() -> Any:
    config = web.state().config
    session, site, now = web.db(), web.site_id(), web.now()
    status = read_status(session, site).get("identity")
    current_leases = session.scalar(
        select(func.count()).select_from(DhcpLeaseRow).where(
            DhcpLeaseRow.site == site, DhcpLeaseRow.starts <= now,
            or_(DhcpLeaseRow.ends.is_(None), DhcpLeaseRow.ends > now))
    ) or 0
    open_sessions = session.scalar(
        select(func.count()).select_from(RadiusSession).where(RadiusSession.site == site,
                                                              RadiusSession.stopped_at.is_(None))
    ) or 0
    heartbeat_age = None
    if status is not None:
        heartbeat_age = int((datetime.now(UTC) - status["heartbeat_at"]).total_seconds())
    return render_template(
        "network/index.html", mode=facts(config.network.mode), identity=config.identity, status=status,
        heartbeat_age=heartbeat_age, current_leases=current_leases, open_sessions=open_sessions,
    )
