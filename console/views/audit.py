"""The audit log: every change, newest first, and a check of its hash chain."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy import func, select

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.services.common import Page, on_site
from schoolgate.services.permissions import Permission
from schoolgate.store import audit as store_audit
from schoolgate.store.models import AuditEntry

bp = Blueprint("audit", __name__, url_prefix="/audit")

COLUMNS = ["seq", "at", "actor", "action", "object_type", "object_id", "detail", "hash"]


def _entries(action: str, actor: str, limit: int, offset: int) -> Page[AuditEntry]:
    conditions: list[Any] = [on_site(AuditEntry.site, web.site_scope())]
    if action:
        escaped = action.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(AuditEntry.action.like(f"{escaped}%", escape="\\"))
    if actor:
        conditions.append(AuditEntry.actor == actor)
    # One school's chain reads in its own order; several schools' chains interleave by time.
    order = [AuditEntry.at.desc(), AuditEntry.id.desc()] if web.whole_trust() else [AuditEntry.seq.desc()]
    session = web.db()
    total = session.scalar(select(func.count()).select_from(AuditEntry).where(*conditions)) or 0
    rows = session.scalars(
        select(AuditEntry).where(*conditions).order_by(*order).limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


@bp.route("")
@web.requires(Permission.VIEW_AUDIT)
def index() -> Any:
    action = request.args.get("action", "")[:60].strip()
    actor = request.args.get("actor", "")[:200].strip()
    args = {**({"action": action} if action else {}), **({"actor": actor} if actor else {})}
    if wants_csv():
        page = _entries(action, actor, 1_000_000, 0)
        return csv_response("audit-log.csv", COLUMNS, ([getattr(e, c) for c in COLUMNS] for e in page.items))
    page = _entries(action, actor, 100, web.int_arg("offset", 0))
    verified = None
    if request.args.get("verify") == "1":
        # Each school's chain is checked on its own; the first break found is the one shown.
        for site in web.visible_sites() if web.whole_trust() else [web.site_id()]:
            verified = store_audit.verify(web.db(), site)
            if not verified.ok:
                break
    return render_template("audit/index.html", page=page, args=args, action=action, actor=actor, verified=verified)
