"""The illegal-content layer: which resolver carries the IWF and CTIRU lists, and its history.

schoolgate cannot ship the Internet Watch Foundation's child sexual abuse URL list or the
police Counter Terrorism Internet Referral Unit's list: they go only to members under
agreement. The school's ISP (or a member resolver) applies them; the appliance sends every
DNS query through that resolver (`[dns] illegal_content_upstream`), and a member's own list
file can be imported into the locked `illegal` category. The setting lives in schoolgate.toml,
which the console cannot edit; every change to it is recorded here, in the audit log, when the
DNS daemon starts with it (the moment it takes effect).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services.actor import Actor
from schoolgate.services.common import audit

ACTION = "dns.illegal_content_upstream"
CONFIG_ACTOR = Actor(name="system:config", display_name="appliance configuration (schoolgate.toml)")

WHAT_SCHOOLGATE_DOES = (
    "schoolgate blocks the harmful-content categories from the lists it downloads, and anything in "
    "the locked illegal category: a member's IWF or CTIRU list imported on the appliance, and the "
    "catalogue's test names. It does not hold the IWF or CTIRU lists itself: they are only given to "
    "members. Illegal content is blocked by the resolver named here, which every DNS query passes "
    "through; without one, the school relies on its ISP's own filtering."
)


@dataclass(frozen=True)
class IllegalContentSetting:
    provider: str
    upstreams: tuple[str, ...]

    @property
    def configured(self) -> bool:
        return bool(self.upstreams)

    def as_detail(self) -> dict[str, Any]:
        return {"provider": self.provider, "upstreams": list(self.upstreams)}

    def describe(self) -> str:
        if not self.configured:
            return "none configured: illegal content is left to the ISP's own filtering"
        return f"{self.provider or 'an unnamed provider'} ({', '.join(self.upstreams)})"


def setting_of(config: Any) -> IllegalContentSetting:
    return IllegalContentSetting(
        provider=str(config.dns.illegal_content_provider).strip(),
        upstreams=tuple(str(u).strip() for u in config.dns.illegal_content_upstream),
    )


def last_recorded(session: Session, site: str) -> IllegalContentSetting | None:
    from schoolgate.store.models import AuditEntry

    entry = session.scalars(
        select(AuditEntry).where(AuditEntry.site == site, AuditEntry.action == ACTION)
        .order_by(AuditEntry.seq.desc()).limit(1)
    ).first()
    if entry is None:
        return None
    try:
        detail = json.loads(entry.detail)
    except ValueError:
        return None
    return IllegalContentSetting(str(detail.get("provider", "")), tuple(detail.get("upstreams") or ()))


def record_if_changed(session: Session, *, site: str, config: Any, now: datetime) -> bool:
    """Add an audit entry when the configured resolver differs from the last one recorded
    (the first time too, if one is configured). The caller commits. True if recorded."""
    current = setting_of(config)
    previous = last_recorded(session, site)
    if previous == current or (previous is None and not current.configured):
        return False
    detail = current.as_detail()
    detail["previous"] = previous.as_detail() if previous is not None else None
    detail["config_file"] = str(config.source)
    audit(session, site=site, actor=CONFIG_ACTOR, action=ACTION, object_type="setting",
          object_id="dns.illegal_content_upstream", detail=detail, now=now)
    return True
