"""Per-device counts of what the gateway refused or redirected quietly, for the console and self-tests.

Two things devices do that are not alerts (services.signals) but that a technician (and the
coverage watchdog) should see per device:

- ``quic``: HTTP/3 (QUIC) to a watched service, refused so the browser falls back to HTTPS,
  where the filter judges it;
- ``foreign_dns``: DNS sent to another resolver on port 53, answered by schoolgate anyway
  (printers, televisions, phones with a resolver of their own).

Counted from the gateway's events, which record each attempt once per destination and port
per few seconds (schoolgate.gateway.circumvention), over the events' (site, ts) index.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.services.common import SiteScope, on_site
from schoolgate.store.models import AccessEvent

QUIC = "quic"
FOREIGN_DNS = "foreign_dns"
RULES = {QUIC: "gateway.refuse.quic", FOREIGN_DNS: "gateway.redirect.dns"}
KIND_OF_RULE = {rule: kind for kind, rule in RULES.items()}
WORDS = {
    QUIC: "HTTP/3 (QUIC) refused; the browser used HTTPS instead",
    FOREIGN_DNS: "DNS sent to another resolver; schoolgate answered instead",
}


@dataclass(frozen=True, slots=True)
class DeviceSignalCount:
    """One device's count of one kind over a time range."""

    site: str
    device: str  # the register's device id, or the address of a device it does not know
    registered: bool
    label: str  # the device's name and its person's, as the console shows them
    kind: str  # QUIC or FOREIGN_DNS
    attempts: int
    destinations: int  # distinct addresses it was sent to
    first_seen: datetime
    last_seen: datetime

    @property
    def words(self) -> str:
        return WORDS[self.kind]


def device_signal_counts(
    session: Session,
    site: SiteScope,
    start: datetime,
    end: datetime,
    *,
    kinds: tuple[str, ...] = (QUIC, FOREIGN_DNS),
    device: str | None = None,
    limit: int = 500,
) -> list[DeviceSignalCount]:
    """Counts per site, device and kind in [start, end), most attempts first.

    `device`: only that device id (or, for an unregistered device, that address)."""
    rules = [RULES[kind] for kind in kinds]
    key = func.coalesce(AccessEvent.device_id, AccessEvent.client_ip)
    conditions = [
        on_site(AccessEvent.site, site),
        AccessEvent.ts >= start,
        AccessEvent.ts < end,
        AccessEvent.source == "gateway",
        AccessEvent.rule_id.in_(rules),
    ]
    if device:
        conditions.append(key == device)
    attempts = func.sum(AccessEvent.count)  # a row may hold a burst's repeated attempts (store.events.repeats)
    rows = session.execute(
        select(
            AccessEvent.site,
            key.label("device"),
            func.max(AccessEvent.device_id),
            func.max(AccessEvent.device_name),
            func.max(AccessEvent.person_name),
            AccessEvent.rule_id,
            attempts,
            func.count(func.distinct(AccessEvent.host)),
            func.min(AccessEvent.ts),
            func.max(AccessEvent.ts),
        )
        .where(*conditions)
        .group_by(AccessEvent.site, key, AccessEvent.rule_id)
        .order_by(attempts.desc(), key)
        .limit(limit)
    ).all()
    out = []
    for site_id, device_key, device_id, name, person, rule_id, count, destinations, first, last in rows:
        label = name or device_key
        if person:
            label = f"{label} ({person})"
        out.append(
            DeviceSignalCount(
                site=site_id, device=device_key, registered=device_id is not None, label=label,
                kind=KIND_OF_RULE[rule_id], attempts=int(count), destinations=int(destinations),
                first_seen=first, last_seen=last,
            )
        )
    return out
