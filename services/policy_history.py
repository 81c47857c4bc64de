"""The policy's history and upkeep: each loaded version recorded once, with what changed and who
installed it; the technicians told, once, when the term dates run out or the review is due.

Both are the scheduler's work (it runs once per appliance, so there is exactly one writer):
the DNS workers, the proxy and the console load the same file but never record it. The file's
facts (owner, modification time) are read at the edge and passed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.policy.history import Changes, compare, snapshot
from schoolgate.policy.upkeep import UpkeepWarning
from schoolgate.services.actor import SCHEDULER, TECHNICIAN
from schoolgate.services.common import Page, SiteScope, audit, on_site
from schoolgate.store.models import AuditEntry, ConsoleUser, PolicyVersion, UserRole

if TYPE_CHECKING:
    from schoolgate.policy.engine import CompiledPolicy

LOAD_ACTION = "policy.load"
UPKEEP_ACTION = "policy.upkeep_notice"


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What the file system says about the policy file that was loaded."""

    path: str
    owner: str  # the owning user's name (or uid)
    modified: datetime | None

    @property
    def installed_by(self) -> str:
        # The console cannot write the policy file (it runs with /etc read-only), so every new
        # version comes from someone editing or copying the file on the appliance.
        return f"the file on disk changed (owner: {self.owner})"


def latest_version(session: Session, site: str) -> PolicyVersion | None:
    return session.scalars(
        select(PolicyVersion)
        .where(PolicyVersion.site == site)
        .order_by(PolicyVersion.loaded_at.desc(), PolicyVersion.id.desc())
        .limit(1)
    ).first()


def record_version(
    session: Session, *, site: str, policy: CompiledPolicy, facts: FileFacts, now: datetime
) -> PolicyVersion | None:
    """Record `policy` as the site's newest version, unless it already is (same fingerprint).

    Writes the history row and the audit entry (fingerprint, what changed, who installed it)
    in the caller's transaction. Returns the new row, or None when nothing changed."""
    latest = latest_version(session, site)
    if latest is not None and latest.fingerprint == policy.fingerprint:
        return None
    after = snapshot(policy)
    changes = compare(_stored_snapshot(latest), after)
    row = PolicyVersion(
        site=site,
        fingerprint=policy.fingerprint,
        loaded_at=now,
        path=facts.path[:500],
        installed_by=facts.installed_by[:200],
        file_owner=facts.owner[:100],
        file_modified=facts.modified,
        summary=changes.summary(),
        changes=json.dumps(changes.as_dict(), sort_keys=True),
        snapshot=json.dumps(after, sort_keys=True),
    )
    session.add(row)
    session.flush()
    audit(
        session,
        site=site,
        actor=SCHEDULER,
        action=LOAD_ACTION,
        object_type="policy",
        object_id=policy.fingerprint,
        detail={
            "fingerprint": policy.fingerprint,
            "previous": latest.fingerprint if latest is not None else None,
            "path": facts.path,
            "installed_by": facts.installed_by,
            "file_modified": facts.modified.isoformat() if facts.modified else None,
            "changes": changes.as_dict(),
            "summary": changes.lines(),
            "version_id": row.id,
        },
        now=now,
    )
    return row


def _stored_snapshot(row: PolicyVersion | None) -> dict[str, Any] | None:
    if row is None:
        return None
    try:
        value = json.loads(row.snapshot)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def list_versions(session: Session, site: SiteScope, *, limit: int = 50, offset: int = 0) -> Page[PolicyVersion]:
    """The policy history, newest first."""
    condition = on_site(PolicyVersion.site, site)
    total = session.scalar(select(func.count()).select_from(PolicyVersion).where(condition)) or 0
    rows = session.scalars(
        select(PolicyVersion)
        .where(condition)
        .order_by(PolicyVersion.loaded_at.desc(), PolicyVersion.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def changes_of(row: PolicyVersion) -> Changes:
    """The stored changes of a history row, as a `Changes` (for the console's lines)."""
    try:
        data = json.loads(row.changes)
    except ValueError:
        data = {}
    rules = data.get("rules", {})
    return Changes(
        rules_added=list(rules.get("added", [])),
        rules_removed=list(rules.get("removed", [])),
        rules_changed=dict(rules.get("changed", {})),
        rules_moved=list(rules.get("moved", [])),
        categories=list(data.get("categories", [])),
        services=list(data.get("services", [])),
        lists=list(data.get("lists", [])),
        calendar=list(data.get("calendar", [])),
        other=list(data.get("other", [])),
        first=bool(data.get("first", False)),
    )


# -- upkeep notices --------------------------------------------------------------------------------


def technician_recipients(session: Session, site: str) -> list[str]:
    """The e-mail addresses of the site's active ICT technicians (and trust-wide ones)."""
    emails = session.scalars(
        select(ConsoleUser.email)
        .join(UserRole, UserRole.user_id == ConsoleUser.id)
        .where(
            UserRole.role == TECHNICIAN,
            ConsoleUser.active.is_(True),
            ConsoleUser.email.is_not(None),
            (ConsoleUser.site == site) | ConsoleUser.site.is_(None),
        )
    ).all()
    return sorted({e for e in emails if e})


def notified(session: Session, site: str, warning: UpkeepWarning) -> bool:
    """Whether the technicians were already told about this warning (the audit log says so)."""
    found = session.scalar(
        select(AuditEntry.id)
        .where(AuditEntry.site == site, AuditEntry.action == UPKEEP_ACTION, AuditEntry.object_id == warning.key)
        .limit(1)
    )
    return found is not None


def record_notice(
    session: Session, *, site: str, warning: UpkeepWarning, recipients: list[str], now: datetime
) -> None:
    audit(
        session,
        site=site,
        actor=SCHEDULER,
        action=UPKEEP_ACTION,
        object_type="policy",
        object_id=warning.key,
        detail={"kind": warning.kind, "due": warning.due, "message": warning.message, "to": recipients},
        now=now,
    )

