"""Seed 001 §9: after circumventing the filter, "a ban from using school computing equipment,
other than with close supervision". A ban moves the device to the supervised role until a
date; the DSL or the headteacher imposes and lifts it, through the audit log."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.services.actor import Actor
from schoolgate.services.common import Page, SiteScope, audit, bump_overlay, clean_text, in_scope, on_site
from schoolgate.services.errors import InvalidInput, InvalidTransition, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.store.models import Alert, AlertHistory, BanRow, Device

MAX_BAN_DAYS = 366


def ban_device(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    device_id: str,
    until: datetime,
    reason: str,
    alert_id: int | None = None,
) -> BanRow:
    """Ban a device (by its register id; the MAC comes from the register when known)."""
    actor.require(Permission.BAN_DEVICE, doing="ban devices")
    key = clean_text(device_id, field="device_id", max_len=100, required=True)
    text = clean_text(reason, field="reason", max_len=4000, required=True)
    if until.tzinfo is None:
        raise InvalidInput("The end of the ban must include a time zone.", field="until")
    if until <= now:
        raise InvalidInput("The end of the ban must be in the future.", field="until")
    if until - now > timedelta(days=MAX_BAN_DAYS):
        raise InvalidInput(f"A ban may last at most {MAX_BAN_DAYS} days.", field="until")
    alert = None
    if alert_id is not None:
        alert = session.get(Alert, alert_id)
        if alert is None or not in_scope(alert.site, site):
            raise NotFound(f"There is no alert {alert_id}.")
    device = session.scalars(select(Device).where(on_site(Device.site, site), Device.device_id == key)).first()
    existing = session.scalars(
        select(BanRow).where(
            on_site(BanRow.site, site), BanRow.device_id == key, BanRow.lifted_at.is_(None), BanRow.until > now
        )
    ).first()
    if existing is not None:
        raise InvalidTransition(
            f"{key} is already banned until {existing.until:%Y-%m-%d %H:%M} UTC; lift that ban to change it."
        )
    ban = BanRow(
        site=site,
        device_id=key,
        person_id=None,
        mac=device.mac if device is not None else None,
        starts=now,
        until=until,
        reason=text,
        alert_id=alert_id,
        created_by=actor.name,
        created_at=now,
    )
    session.add(ban)
    session.flush()
    if alert is not None:
        session.add(
            AlertHistory(
                alert_id=alert.id,
                at=now,
                actor=actor.name,
                action="ban",
                detail=f"device {key} supervised-only until {until.isoformat()}",
            )
        )
    audit(
        session,
        site=site,
        actor=actor,
        action="ban.create",
        object_type="ban",
        object_id=ban.id,
        detail={"device_id": key, "mac": ban.mac, "until": until.isoformat(), "reason": text, "alert_id": alert_id},
        now=now,
    )
    bump_overlay(session, site=site, now=now)
    return ban


def lift_ban(session: Session, *, site: str, now: datetime, actor: Actor, ban_id: int, reason: str) -> BanRow:
    actor.require(Permission.BAN_DEVICE, doing="lift bans")
    ban = session.get(BanRow, ban_id)
    if ban is None or not in_scope(ban.site, site):
        raise NotFound(f"There is no ban {ban_id}.")
    if ban.lifted_at is not None:
        raise InvalidTransition("That ban has already been lifted.")
    if ban.until <= now:
        raise InvalidTransition("That ban has already ended.")
    text = clean_text(reason, field="reason", max_len=4000, required=True)
    ban.lifted_at = now
    session.flush()
    if ban.alert_id is not None:
        session.add(
            AlertHistory(
                alert_id=ban.alert_id,
                at=now,
                actor=actor.name,
                action="ban",
                detail=f"ban on {ban.device_id} lifted: {text}",
            )
        )
    audit(
        session,
        site=site,
        actor=actor,
        action="ban.lift",
        object_type="ban",
        object_id=ban.id,
        detail={"device_id": ban.device_id, "reason": text},
        now=now,
    )
    bump_overlay(session, site=site, now=now)
    return ban


def list_bans(
    session: Session, site: SiteScope, *, now: datetime, active_only: bool = True, limit: int = 100, offset: int = 0
) -> Page[BanRow]:
    conditions = [on_site(BanRow.site, site)]
    if active_only:
        conditions += [BanRow.lifted_at.is_(None), BanRow.until > now]
    total = session.scalar(select(func.count()).select_from(BanRow).where(*conditions)) or 0
    rows = session.scalars(
        select(BanRow).where(*conditions).order_by(BanRow.until.desc(), BanRow.id.desc()).limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def active_ban_for(session: Session, site: SiteScope, device_id: str, now: datetime) -> BanRow | None:
    return session.scalars(
        select(BanRow).where(
            on_site(BanRow.site, site), BanRow.device_id == device_id, BanRow.lifted_at.is_(None), BanRow.until > now
        )
    ).first()
