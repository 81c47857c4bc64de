"""Seed 001 §9: after circumventing the filter, "a ban from using school computing equipment,
other than with close supervision".

A ban applies to the device by its MAC address whether or not the device is in the register
(a pupil's own phone seldom is), and where the person is known it follows them to every device
they use: the policy engine matches a ban by device id, by person and by MAC. It lasts until a
date or until it is lifted, and records who supervises. The DSL or the headteacher imposes and
lifts it; where the policy says so (`[bans] on_circumvention = "automatic"`), a circumvention
case whose evidence leaves no doubt imposes it at once (``ban_automatically``).

Admins read ban reasons in the audit log, so a reason never carries the child's name or the
concern: those stay in the DSL's case, which the ban links to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from schoolgate.identity.macs import normalise_mac
from schoolgate.policy.model import BanPolicy
from schoolgate.services.actor import Actor
from schoolgate.services.common import Page, SiteScope, audit, bump_overlay, clean_text, in_scope, on_site
from schoolgate.services.errors import InvalidInput, InvalidTransition, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.store import audit as audit_log
from schoolgate.store.models import AccessEvent, Alert, AlertHistory, BanRow, Device, Person
from schoolgate.timewords import instant_words

MAX_BAN_DAYS = 366
SYSTEM_ACTOR = "system:bans"
AUTOMATIC_REASON = "Seed 001 §9: attempts to circumvent the network's filtering (automatic ban, case {case})"


@dataclass(frozen=True, slots=True)
class BanTarget:
    """Who a ban will apply to, resolved from what the DSL typed or the case knows."""

    device_id: str | None  # the register's id, when the device is registered
    mac: str | None
    person_id: str | None  # the register's person (external id), when known
    label: str  # for messages: the device's name, or its MAC


def resolve_target(
    session: Session, site: str, device: str, *, person_id: str | None = None, follow_person: bool = True
) -> BanTarget:
    """A register device id or a MAC address -> what the ban applies to.

    A registered device brings its MAC and its owner; a MAC the register does not know is an
    unregistered device (a pupil's own phone), banned by that MAC. `person_id` (the case's
    person) is used when the register names no owner; `follow_person` = False bans the device only.
    """
    text = device.strip()
    if not text:
        raise InvalidInput("Give the device: its name in the register, or its MAC address.", field="device_id")
    registered = session.scalars(select(Device).where(on_site(Device.site, site), Device.device_id == text)).first()
    mac = normalise_mac(text) if registered is None else None
    if registered is None and mac is not None:
        candidates = session.scalars(select(Device).where(on_site(Device.site, site), Device.mac.is_not(None))).all()
        registered = next((d for d in candidates if d.mac and normalise_mac(d.mac) == mac), None)
    if registered is None and mac is None:
        raise InvalidInput(
            f"There is no device {text!r} in the register. To ban a device the register does not know "
            "(a pupil's own phone, say), give its MAC address, as the case shows it.",
            field="device_id",
        )
    owner: str | None = None
    if registered is not None:
        mac = normalise_mac(registered.mac) if registered.mac else None
        if registered.person_id is not None:
            owner_row = session.get(Person, registered.person_id)
            owner = owner_row.external_id if owner_row is not None else None
        if mac is None:
            raise InvalidInput(
                f"{registered.device_id} has no MAC address in the register, so a ban could not follow it "
                "to another address. Add its MAC address first.",
                field="device_id",
            )
    whose = (owner or person_id) if follow_person else None
    label = registered.device_id if registered is not None else str(mac)
    return BanTarget(device_id=registered.device_id if registered else None, mac=mac, person_id=whose, label=label)


def case_device(session: Session, alert: Alert) -> str:
    """What to ban for a case: its registered device, else the MAC its events were seen with."""
    if alert.device_id:
        return alert.device_id
    if alert.last_event_id is not None:
        event = session.get(AccessEvent, alert.last_event_id)
        if event is not None and event.mac:
            return event.mac
    mac = session.scalar(
        select(AccessEvent.mac)
        .where(AccessEvent.site == alert.site, AccessEvent.client_ip == alert.client_ip, AccessEvent.mac.is_not(None),
               AccessEvent.ts <= alert.last_seen)
        .order_by(AccessEvent.ts.desc())
        .limit(1)
    )
    return mac or ""


def _names_in_case(session: Session, alert: Alert) -> list[str]:
    """What a ban reason must not repeat: the case's title, and the child's and device's names."""
    names = [alert.title]
    inside = re.search(r"\(([^()]+)\)\s*$", alert.title)  # "... from iPad 5 (Sam Pupil)"
    if inside:
        names.append(inside.group(1))
    if alert.person_id:
        person = session.scalars(
            select(Person).where(Person.site == alert.site, Person.external_id == alert.person_id)
        ).first()
        if person is not None:
            names.append(person.name)
    return [n for n in names if len(n.strip()) >= 3]


def _check_reason(session: Session, text: str, alert: Alert | None, *, field: str = "ban_reason") -> None:
    if alert is None:
        return
    folded = text.casefold()
    for name in _names_in_case(session, alert):
        if name.casefold() in folded:
            raise InvalidInput(
                "Keep the child's name and the concern out of the reason: admins read it in the audit log. "
                f"The ban is linked to case {alert.id}, which holds the details.",
                field=field,
            )


def _check_until(until: datetime | None, now: datetime) -> None:
    if until is None:
        return
    if until.tzinfo is None:
        raise InvalidInput("The end of the ban must include a time zone.", field="until")
    if until <= now:
        raise InvalidInput("The end of the ban must be in the future.", field="until")
    if until - now > timedelta(days=MAX_BAN_DAYS):
        raise InvalidInput(
            f"A ban may last at most {MAX_BAN_DAYS} days; leave the end empty for a ban until it is lifted.",
            field="until",
        )


def _active(site: SiteScope, now: datetime) -> list[ColumnElement[bool]]:
    return [on_site(BanRow.site, site), BanRow.lifted_at.is_(None), or_(BanRow.until.is_(None), BanRow.until > now)]


def active_ban_for_target(session: Session, site: SiteScope, target: BanTarget, now: datetime) -> BanRow | None:
    matches = []
    if target.device_id:
        matches.append(BanRow.device_id == target.device_id)
    if target.mac:
        matches.append(BanRow.mac == target.mac)
    if target.person_id:
        matches.append(BanRow.person_id == target.person_id)
    if not matches:
        return None
    return session.scalars(select(BanRow).where(*_active(site, now), or_(*matches)).order_by(BanRow.id)).first()


def ban_device(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    device_id: str,
    until: datetime | None,
    reason: str,
    supervisor: str,
    alert_id: int | None = None,
    person_id: str | None = None,
    follow_person: bool = True,
    zone: tzinfo,
) -> BanRow:
    """Ban a device (its register id, or its MAC address) and, where known, its person.

    `until` None: until lifted. `supervisor`: who supervises the banned pupil (required).
    `zone`: the school's clock (the policy's `[school] timezone`), for the words of the case.
    """
    actor.require(Permission.BAN_DEVICE, doing="ban devices")
    text = clean_text(reason, field="ban_reason", max_len=4000, required=True)
    who = clean_text(supervisor, field="supervisor", max_len=200, required=True)
    _check_until(until, now)
    alert = None
    if alert_id is not None:
        alert = session.get(Alert, alert_id)
        if alert is None or not in_scope(alert.site, site):
            raise NotFound(f"There is no alert {alert_id}.")
        person_id = person_id or alert.person_id
    _check_reason(session, text, alert)
    target = resolve_target(session, site, device_id, person_id=person_id, follow_person=follow_person)
    return _impose(session, site=site, now=now, actor_name=actor.name, target=target, until=until, reason=text,
                   supervisor=who, alert=alert, zone=zone)


def _impose(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor_name: str,
    target: BanTarget,
    until: datetime | None,
    reason: str,
    supervisor: str,
    alert: Alert | None,
    zone: tzinfo,
) -> BanRow:
    existing = active_ban_for_target(session, site, target, now)
    if existing is not None:
        end = f"until {instant_words(existing.until, zone, now=now)}" if existing.until else "until it is lifted"
        raise InvalidTransition(f"{target.label} is already banned {end}; lift that ban to change it.")
    ban = BanRow(
        site=site,
        device_id=target.device_id,
        person_id=target.person_id,
        mac=target.mac,
        starts=now,
        until=until,
        reason=reason,
        supervisor=supervisor,
        alert_id=alert.id if alert is not None else None,
        created_by=actor_name,
        created_at=now,
    )
    session.add(ban)
    session.flush()
    end = until.isoformat() if until else "until lifted"
    if alert is not None:
        words = f"until {instant_words(until, zone, now=now)}" if until else "until lifted"
        whom = f"device {target.label}" + (" and its person on every device" if target.person_id else "")
        session.add(
            AlertHistory(
                alert_id=alert.id,
                at=now,
                actor=actor_name,
                action="ban",
                detail=f"{whom}: supervised use only, {words}; supervised by {supervisor}",
            )
        )
    detail = {
        "device_id": target.device_id, "mac": target.mac, "person_id": target.person_id, "until": end,
        "supervisor": supervisor, "reason": reason, "alert_id": alert.id if alert is not None else None,
    }
    audit_log.record(session, site=site, actor=actor_name, action="ban.create", object_type="ban",
                     object_id=str(ban.id), detail=detail, at=now)
    bump_overlay(session, site=site, now=now)
    return ban


def ban_automatically(session: Session, *, site: str, now: datetime, alert: Alert, days: int,
                      supervisor: str, zone: tzinfo) -> BanRow | None:
    """The policy's automatic ban for a circumvention case (seed 001 §9 "will result in a ban").

    None when there is nothing to ban (no MAC ever seen for the case) or a ban is in force."""
    device = case_device(session, alert)
    if not device:
        return None
    try:
        target = resolve_target(session, site, device, person_id=alert.person_id)
    except InvalidInput:
        return None
    if active_ban_for_target(session, site, target, now) is not None:
        return None
    until = now + timedelta(days=days) if days else None
    return _impose(session, site=site, now=now, actor_name=SYSTEM_ACTOR, target=target, until=until,
                   reason=AUTOMATIC_REASON.format(case=alert.id), supervisor=supervisor, alert=alert, zone=zone)


def lift_ban(session: Session, *, site: str, now: datetime, actor: Actor, ban_id: int, reason: str) -> BanRow:
    actor.require(Permission.BAN_DEVICE, doing="lift bans")
    ban = session.get(BanRow, ban_id)
    if ban is None or not in_scope(ban.site, site):
        raise NotFound(f"There is no ban {ban_id}.")
    if ban.lifted_at is not None:
        raise InvalidTransition("That ban has already been lifted.")
    if ban.until is not None and ban.until <= now:
        raise InvalidTransition("That ban has already ended.")
    text = clean_text(reason, field="reason", max_len=4000, required=True)
    # The reason for lifting goes to the audit log as the ban's reason did: no child's name in it.
    _check_reason(session, text, session.get(Alert, ban.alert_id) if ban.alert_id is not None else None,
                  field="reason")
    ban.lifted_at = now
    session.flush()
    label = ban.device_id or ban.mac or ban.person_id
    if ban.alert_id is not None:
        session.add(
            AlertHistory(
                alert_id=ban.alert_id,
                at=now,
                actor=actor.name,
                action="ban",
                detail=f"ban on {label} lifted: {text}",
            )
        )
    audit(
        session,
        site=site,
        actor=actor,
        action="ban.lift",
        object_type="ban",
        object_id=ban.id,
        detail={"device_id": ban.device_id, "mac": ban.mac, "person_id": ban.person_id, "reason": text},
        now=now,
    )
    bump_overlay(session, site=site, now=now)
    return ban


def list_bans(
    session: Session, site: SiteScope, *, now: datetime, active_only: bool = True, limit: int = 100, offset: int = 0
) -> Page[BanRow]:
    conditions = _active(site, now) if active_only else [on_site(BanRow.site, site)]
    total = session.scalar(select(func.count()).select_from(BanRow).where(*conditions)) or 0
    rows = session.scalars(
        select(BanRow)
        .where(*conditions)
        .order_by(BanRow.until.is_(None).desc(), BanRow.until.desc(), BanRow.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def active_ban_for(session: Session, site: SiteScope, device_id: str, now: datetime) -> BanRow | None:
    return session.scalars(select(BanRow).where(*_active(site, now), BanRow.device_id == device_id)).first()


def active_ban_for_case(session: Session, alert: Alert, now: datetime) -> BanRow | None:
    """The ban in force for a case's device or person (by id, MAC or person), if any."""
    conditions = []
    if alert.device_id:
        conditions.append(BanRow.device_id == alert.device_id)
    if alert.person_id:
        conditions.append(BanRow.person_id == alert.person_id)
    device = case_device(session, alert)
    mac = normalise_mac(device) if device else None
    if mac:
        conditions.append(BanRow.mac == mac)
    if not conditions:
        return None
    return session.scalars(select(BanRow).where(*_active(alert.site, now), or_(*conditions))).first()


# The evidence that leaves no doubt (services.attempt_rules): a crafted connection, a visit to
# a VPN or proxy site, or several ways tried. Anything less is offered to the DSL.
CONFIRMED_SEVERITY = "high"


def apply_ban_policy(session: Session, *, site: str, now: datetime, policy: BanPolicy,
                     case_ids: list[int], zone: tzinfo) -> list[int]:
    """Seed 001 §9 where the school chose automatic bans: ban the devices (and people) of the
    confirmed circumvention cases among `case_ids`, for the policy's roles. Returns ban ids."""
    if not policy.automatic:
        return []
    imposed = []
    for case_id in case_ids:
        alert = session.get(Alert, case_id)
        if alert is None or alert.kind != "circumvention" or alert.severity != CONFIRMED_SEVERITY:
            continue
        if alert.status == "resolved":
            continue
        event = session.get(AccessEvent, alert.last_event_id) if alert.last_event_id is not None else None
        if event is None or event.role not in {role.value for role in policy.automatic_roles}:
            continue
        ban = ban_automatically(session, site=site, now=now, alert=alert, days=policy.days,
                                supervisor=policy.supervisor, zone=zone)
        if ban is not None:
            imposed.append(ban.id)
    return imposed
