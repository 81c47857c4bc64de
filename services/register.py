"""The device and people registers: edit one at a time, or import a CSV file.

An import checks every row on its own: a bad row is reported with its line number and the
reason, and every good row is still saved. Rows are keyed by `device_id` / `external_id`, so
importing the same file twice updates rather than duplicates. Devices and people decide the
role a client gets, so every change bumps the overlay generation the daemons poll.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from schoolgate.policy.types import Ownership, Role
from schoolgate.services.actor import Actor
from schoolgate.services.common import Page, SiteScope, audit, bump_overlay, clean_text, in_scope, on_site
from schoolgate.services.errors import Forbidden, InvalidInput, NotFound, ServiceError
from schoolgate.services.permissions import Permission
from schoolgate.store.models import Device, Person

MAX_IMPORT_ROWS = 20_000
MAX_IMPORT_BYTES = 10 * 1024 * 1024
# People may hold any role except supervised: that comes only from a ban.
PERSON_ROLES = tuple(r.value for r in Role if r is not Role.SUPERVISED)
DEVICE_COLUMNS = (
    "device_id", "name", "mac", "ip", "kind", "role", "owner", "ownership", "trusts_school_ca", "notes"
)
PEOPLE_COLUMNS = ("external_id", "name", "role", "year_group", "groups", "email", "active")
AUTHORISED = Role.AUTHORISED.value
#: The audit action for an authorisation that ended because the device was moved.
AUTHORISATION_LAPSED = "device.authorisation_lapsed"
_TRUE = {"1", "true", "yes", "y"}
_FALSE = {"0", "false", "no", "n", ""}


@dataclass(frozen=True, slots=True)
class DeviceForm:
    device_id: str
    name: str
    mac: str | None = None
    ip: str | None = None
    kind: str = ""
    role: str | None = None  # overrides the owner's role, e.g. a class set of iPads
    owner: str | None = None  # the owner's external_id in the people register
    trusts_school_ca: bool = False
    notes: str = ""
    # school_owned or personal (policy.Ownership); None: not recorded; OWNERSHIP_UNCHANGED: keep
    # what the register holds (a CSV file without the column must not wipe what was recorded)
    ownership: str | None = None


@dataclass(frozen=True, slots=True)
class PersonForm:
    external_id: str
    name: str
    role: str
    year_group: int | None = None
    groups: str = ""  # comma-separated
    email: str | None = None
    active: bool = True


@dataclass(frozen=True, slots=True)
class RowError:
    line: int  # the line in the file where the record starts (the header is line 1)
    message: str


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)

    @property
    def saved(self) -> int:
        return self.created + self.updated


# -- checks ------------------------------------------------------------------------------------


def normalise_mac(value: str | None) -> str | None:
    """aa:bb:cc:dd:ee:ff from any of the usual spellings (dashes, dots, upper case)."""
    if value is None or not value.strip():
        return None
    digits = re.sub(r"[\s:.\-]", "", value.strip()).lower()
    if len(digits) != 12 or not re.fullmatch(r"[0-9a-f]{12}", digits):
        raise InvalidInput(f"{value!r} is not a MAC address (e.g. 3c:22:fb:01:02:03).", field="mac")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _ip(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError as err:
        raise InvalidInput(f"{value!r} is not an IP address.", field="ip") from err


def _role(value: str | None, *, field_name: str, allow_none: bool) -> str | None:
    text = (value or "").strip().lower()
    if not text:
        if allow_none:
            return None
        raise InvalidInput(f"Please choose a role ({', '.join(PERSON_ROLES)}).", field=field_name)
    if text not in PERSON_ROLES:
        raise InvalidInput(f"Unknown role {value!r} (one of: {', '.join(PERSON_ROLES)}).", field=field_name)
    return text


def _bool(value: str, *, field_name: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise InvalidInput(f"{field_name.replace('_', ' ')}: expected yes or no, got {value!r}.", field=field_name)


OWNERSHIP_UNCHANGED = "unchanged"
_OWNERSHIP_WORDS = {
    "school_owned": Ownership.SCHOOL_OWNED.value,
    "school-owned": Ownership.SCHOOL_OWNED.value,
    "school owned": Ownership.SCHOOL_OWNED.value,
    "school": Ownership.SCHOOL_OWNED.value,
    "personal": Ownership.PERSONAL.value,
    "own": Ownership.PERSONAL.value,
}


def parse_ownership(value: str | None) -> str | None:
    """'', 'school_owned' (or 'school', 'school-owned'), 'personal' (or 'own') -> None,
    'school_owned', 'personal'. Blank means not recorded."""
    text = (value or "").strip().lower()
    if not text:
        return None
    if text not in _OWNERSHIP_WORDS:
        raise InvalidInput(
            f"{value!r} is not a device ownership (school_owned, personal, or blank for not recorded).",
            field="ownership",
        )
    return _OWNERSHIP_WORDS[text]


def parse_year_group(value: str | None) -> int | None:
    """'', 'R', 'Reception', '3', 'Y3', 'Year 3' -> None, 0, 0, 3, 3, 3."""
    text = (value or "").strip().lower()
    if not text:
        return None
    if text in ("r", "rec", "reception"):
        return 0
    digits = re.sub(r"^(year|yr|y)\s*", "", text)
    if digits.isdigit() and 0 <= int(digits) <= 13:
        return int(digits)
    raise InvalidInput(f"{value!r} is not a year group (R or 0 for Reception, 1-6).", field="year_group")


def _groups(value: str) -> str:
    parts = [clean_text(p, field="groups", max_len=60) for p in value.split(",")]
    joined = ",".join(p for p in parts if p)
    if len(joined) > 500:
        raise InvalidInput("Too many groups (at most 500 characters).", field="groups")
    return joined


def _clean_device(form: DeviceForm) -> DeviceForm:
    return DeviceForm(
        device_id=clean_text(form.device_id, field="device_id", max_len=100, required=True),
        name=clean_text(form.name, field="name", max_len=200, required=True),
        mac=normalise_mac(form.mac),
        ip=_ip(form.ip),
        kind=clean_text(form.kind, field="kind", max_len=40),
        role=_role(form.role, field_name="role", allow_none=True),
        owner=clean_text(form.owner, field="owner", max_len=100) or None,
        trusts_school_ca=form.trusts_school_ca,
        notes=clean_text(form.notes, field="notes", max_len=4000),
        ownership=form.ownership if form.ownership == OWNERSHIP_UNCHANGED else parse_ownership(form.ownership),
    )


def _clean_person(form: PersonForm) -> PersonForm:
    email = clean_text(form.email, field="email", max_len=200) or None
    if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        raise InvalidInput(f"{email!r} is not an email address.", field="email")
    year_group = form.year_group
    if year_group is not None and not 0 <= year_group <= 13:
        raise InvalidInput("Year group must be between 0 (Reception) and 13.", field="year_group")
    return PersonForm(
        external_id=clean_text(form.external_id, field="external_id", max_len=100, required=True),
        name=clean_text(form.name, field="name", max_len=200, required=True),
        role=_role(form.role, field_name="role", allow_none=False) or "",
        year_group=year_group,
        groups=_groups(form.groups),
        email=email,
        active=form.active,
    )


# -- devices -----------------------------------------------------------------------------------


def get_device(session: Session, site: SiteScope, device_pk: int) -> Device:
    device = session.get(Device, device_pk)
    if device is None or not in_scope(device.site, site):
        raise NotFound(f"There is no device {device_pk}.")
    return device


def find_device(session: Session, site: str, device_id: str) -> Device | None:
    return session.scalars(select(Device).where(on_site(Device.site, site), Device.device_id == device_id)).first()


def list_devices(
    session: Session, site: SiteScope, *, search: str = "", limit: int = 100, offset: int = 0
) -> Page[Device]:
    """Devices by name; `search` matches the id, name, MAC or IP (case-insensitive substring)."""
    conditions: list[Any] = [on_site(Device.site, site)]
    if search.strip():
        pattern = f"%{search.strip().lower()}%"
        conditions.append(
            or_(
                func.lower(Device.device_id).like(pattern),
                func.lower(Device.name).like(pattern),
                Device.mac.like(pattern),
                Device.ip.like(pattern),
            )
        )
    total = session.scalar(select(func.count()).select_from(Device).where(*conditions)) or 0
    rows = session.scalars(
        select(Device).where(*conditions).order_by(Device.name, Device.id).limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def _owner_pk(session: Session, site: str, owner: str | None) -> int | None:
    if owner is None:
        return None
    person = session.scalars(select(Person).where(on_site(Person.site, site), Person.external_id == owner)).first()
    if person is None:
        raise InvalidInput(f"No one with id {owner!r} is in the people register.", field="owner")
    return person.id


def _check_device_unique(session: Session, site: str, form: DeviceForm, own_pk: int | None) -> None:
    same_id = find_device(session, site, form.device_id)
    if same_id is not None and same_id.id != own_pk:
        raise InvalidInput(f"Device id {form.device_id!r} is already registered.", field="device_id")
    if form.mac:
        same_mac = session.scalars(select(Device).where(on_site(Device.site, site), Device.mac == form.mac)).first()
        if same_mac is not None and same_mac.id != own_pk:
            raise InvalidInput(f"MAC {form.mac} is already registered to {same_mac.device_id!r}.", field="mac")


def _apply_device(device: Device, form: DeviceForm, owner_pk: int | None) -> None:
    device.device_id = form.device_id
    device.name = form.name
    device.mac = form.mac
    device.ip = form.ip
    device.kind = form.kind
    device.role = form.role
    device.person_id = owner_pk
    device.trusts_school_ca = form.trusts_school_ca
    if form.ownership != OWNERSHIP_UNCHANGED:
        device.ownership = form.ownership
    device.notes = form.notes


def _refuse_unapproved_authorised(actor: Actor, was_authorised: bool, becomes_authorised: bool, what: str) -> None:
    """Only the headteacher may give the authorised role (seed 001 §3: the headteacher authorises
    who may use the school's social media accounts); taking it away is anyone's to do."""
    if becomes_authorised and not was_authorised and not actor.may(Permission.AUTHORISE_ACCESS):
        raise Forbidden(
            f"Only the headteacher can make {what} authorised (it opens the school's social media "
            "accounts). Save it with another role and ask the headteacher to authorise it.",
            field="role",
        )


def _device_authorised(session: Session, site: str, role: str | None, owner_pk: int | None) -> bool:
    """Whether a device gets the authorised role: its own role, else its owner's."""
    if role is not None:
        return role == AUTHORISED
    if owner_pk is None:
        return False
    owner = session.get(Person, owner_pk)
    return owner is not None and in_scope(owner.site, site) and owner.active and owner.role == AUTHORISED


def _device_detail(form: DeviceForm) -> dict[str, Any]:
    return {
        "device_id": form.device_id,
        "name": form.name,
        "mac": form.mac,
        "ip": form.ip,
        "role": form.role,
        "owner": form.owner,
        "ownership": form.ownership,
        "trusts_school_ca": form.trusts_school_ca,
    }


@dataclass(frozen=True, slots=True)
class Lapse:
    """A headteacher's authorisation that ended because someone else moved the device."""

    device_id: str
    mac_before: str | None
    mac_after: str | None
    ip_before: str | None
    ip_after: str | None
    role_after: str | None

    def detail(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "mac": [self.mac_before, self.mac_after],
                "ip": [self.ip_before, self.ip_after], "role_now": self.role_after}


def _role_after_move(session: Session, site: str, role: str | None, owner_pk: int | None) -> str | None:
    """The role a moved device keeps: whatever it was given, but never authorised. A device
    authorised through its owner gets the owner's own role, so the person stays authorised on
    their other devices while this one does not."""
    owner = session.get(Person, owner_pk) if owner_pk is not None else None
    owner_authorised = owner is not None and owner.active and owner.role == AUTHORISED
    if role == AUTHORISED or (role is None and owner_authorised):
        return own_role(owner) if owner is not None and owner_authorised else None
    return role


def _save_device(session: Session, actor: Actor, form: DeviceForm, device: Device) -> Lapse | None:
    """Store a cleaned form over `device`, a new one (not yet in the session) or a registered one.

    The authorised role is given to a device as the network knows it, by its MAC and address: a
    registered device given another MAC or address by anyone but the headteacher is, to the
    network, another device, so its authorisation lapses (returned, for the audit log and the
    headteacher's notice) and the rest of the change is saved."""
    site = device.site
    _check_device_unique(session, site, form, device.id)
    owner_pk = _owner_pk(session, site, form.owner)
    was_authorised = _device_authorised(session, site, device.role, device.person_id)
    moved = device.id is not None and (form.mac != device.mac or form.ip != device.ip)
    lapse = None
    if moved and was_authorised and not actor.may(Permission.AUTHORISE_ACCESS):
        lapse = Lapse(device_id=form.device_id, mac_before=device.mac, mac_after=form.mac, ip_before=device.ip,
                      ip_after=form.ip, role_after=_role_after_move(session, site, form.role, owner_pk))
        form = replace(form, role=lapse.role_after)
        was_authorised = False
    _refuse_unapproved_authorised(
        actor,
        was_authorised,
        _device_authorised(session, site, form.role, owner_pk),
        f"device {form.device_id}",
    )
    _apply_device(device, form, owner_pk)
    if device.id is None:
        session.add(device)
    session.flush()
    return lapse


def _device_from_row(values: Mapping[str, str]) -> DeviceForm:
    return DeviceForm(
        device_id=values.get("device_id", ""),
        name=values.get("name", ""),
        mac=values.get("mac"),
        ip=values.get("ip"),
        kind=values.get("kind", ""),
        role=values.get("role"),
        owner=values.get("owner"),
        trusts_school_ca=_bool(values.get("trusts_school_ca", ""), field_name="trusts_school_ca"),
        notes=values.get("notes", ""),
        ownership=values.get("ownership", OWNERSHIP_UNCHANGED),
    )


def delete_device(session: Session, *, site: str, now: datetime, actor: Actor, device_pk: int) -> None:
    actor.require(Permission.EDIT_REGISTERS, doing="edit the device register")
    device = get_device(session, site, device_pk)
    detail = {"device_id": device.device_id, "name": device.name, "mac": device.mac}
    session.delete(device)
    session.flush()
    _record_change(session, site=site, now=now, actor=actor, action="device.delete", object_id=device_pk, detail=detail)


# -- people ------------------------------------------------------------------------------------


def get_person(session: Session, site: SiteScope, person_pk: int) -> Person:
    person = session.get(Person, person_pk)
    if person is None or not in_scope(person.site, site):
        raise NotFound(f"There is no person {person_pk}.")
    return person


def find_person(session: Session, site: str, external_id: str) -> Person | None:
    return session.scalars(select(Person).where(on_site(Person.site, site), Person.external_id == external_id)).first()


def list_people(
    session: Session, site: SiteScope, *, search: str = "", role: str | None = None, limit: int = 100, offset: int = 0
) -> Page[Person]:
    conditions: list[Any] = [on_site(Person.site, site)]
    if role:
        conditions.append(Person.role == role)
    if search.strip():
        pattern = f"%{search.strip().lower()}%"
        conditions.append(or_(func.lower(Person.external_id).like(pattern), func.lower(Person.name).like(pattern)))
    total = session.scalar(select(func.count()).select_from(Person).where(*conditions)) or 0
    rows = session.scalars(
        select(Person).where(*conditions).order_by(Person.name, Person.id).limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)


def _apply_person(person: Person, form: PersonForm) -> None:
    person.external_id = form.external_id
    person.name = form.name
    person.role = form.role
    person.year_group = form.year_group
    person.groups = form.groups
    person.email = form.email
    person.active = form.active


def _person_detail(form: PersonForm) -> dict[str, Any]:
    return {
        "external_id": form.external_id,
        "name": form.name,
        "role": form.role,
        "year_group": form.year_group,
        "groups": form.groups,
        "active": form.active,
    }


def _save_person(session: Session, actor: Actor, form: PersonForm, person: Person) -> Lapse | None:
    """Store a cleaned form over `person`, a new one (not yet in the session) or a registered one."""
    other = find_person(session, person.site, form.external_id)
    if other is not None and other is not person:
        raise InvalidInput(f"Id {form.external_id!r} is already in the people register.", field="external_id")
    _refuse_unapproved_authorised(actor, person.role == AUTHORISED, form.role == AUTHORISED, form.name)
    before = person.role
    _apply_person(person, form)
    person.role = before  # the role changes through set_role, which keeps the one to go back to
    set_role(person, form.role)
    if person.id is None:
        session.add(person)
    session.flush()
    return None


def _person_from_row(values: Mapping[str, str]) -> PersonForm:
    return PersonForm(
        external_id=values.get("external_id", ""),
        name=values.get("name", ""),
        role=values.get("role", ""),
        year_group=parse_year_group(values.get("year_group")),
        groups=values.get("groups", ""),
        email=values.get("email"),
        active=_bool(values.get("active", "") or "yes", field_name="active"),
    )


def delete_person(session: Session, *, site: str, now: datetime, actor: Actor, person_pk: int) -> None:
    """Remove a person; their devices stay registered, without an owner."""
    actor.require(Permission.EDIT_REGISTERS, doing="edit the people register")
    person = get_person(session, site, person_pk)
    detail = {"external_id": person.external_id, "name": person.name}
    for device in list(person.devices):
        device.person_id = None
    session.delete(person)
    session.flush()
    _record_change(session, site=site, now=now, actor=actor, action="person.delete", object_id=person_pk, detail=detail)


# -- CSV import --------------------------------------------------------------------------------


def _read_rows(
    text: str, columns: Sequence[str], required: Sequence[str]
) -> tuple[list[tuple[int, dict[str, str]]], list[RowError]]:
    """Records with their starting line numbers; structural problems become row errors."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_IMPORT_BYTES:
        raise InvalidInput(f"The file is too large (at most {MAX_IMPORT_BYTES // (1024 * 1024)} MB).", field="file")
    text = text.removeprefix("\ufeff")  # Excel's byte-order mark
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInput("The file is empty.", field="file") from None
    except csv.Error as err:
        raise InvalidInput(f"Line 1: the header cannot be read ({err}).", field="file") from err
    names = [h.strip().lower().replace(" ", "_") for h in header]
    missing = [c for c in required if c not in names]
    if missing:
        raise InvalidInput(
            f"Line 1: the header needs the column(s) {', '.join(missing)} (columns: {', '.join(columns)}).",
            field="file",
        )
    unknown = [n for n in names if n and n not in columns]
    if unknown:
        raise InvalidInput(
            f"Line 1: unknown column(s) {', '.join(unknown)} (columns: {', '.join(columns)}).", field="file"
        )
    rows: list[tuple[int, dict[str, str]]] = []
    errors: list[RowError] = []
    line = reader.line_num + 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            errors.append(RowError(line, f"cannot be read as CSV ({err})"))
            line = reader.line_num + 1
            continue
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue
        if len(rows) >= MAX_IMPORT_ROWS:
            errors.append(RowError(start, f"too many rows: at most {MAX_IMPORT_ROWS} per file; the rest were not read"))
            break
        if len(record) > len(names):
            errors.append(RowError(start, f"has {len(record)} cells but the header has {len(names)}"))
            continue
        values = dict(zip(names, record, strict=False))
        rows.append((start, {k: v for k, v in values.items() if k}))
    return rows, errors


# -- the steps both registers share ------------------------------------------------------------

_Form = TypeVar("_Form", DeviceForm, PersonForm)
_Entry = TypeVar("_Entry", Device, Person)


@dataclass(frozen=True, slots=True)
class _Register(Generic[_Form, _Entry]):
    """What tells the device register from the people register; everything else is shared."""

    kind: str  # the audit action prefix and object type: "device" / "person"
    title: str  # for messages: "device register" / "people register"
    model: type[_Entry]
    columns: tuple[str, ...]
    required: tuple[str, ...]  # the first is the key a CSV row is matched on
    get: Callable[[Session, SiteScope, int], _Entry]
    find: Callable[[Session, str, str], _Entry | None]
    key: Callable[[_Form], str]
    clean: Callable[[_Form], _Form]
    from_row: Callable[[Mapping[str, str]], _Form]
    save: Callable[[Session, Actor, _Form, _Entry], Lapse | None]
    detail: Callable[[_Form], dict[str, Any]]


_DEVICES: _Register[DeviceForm, Device] = _Register(
    kind="device",
    title="device register",
    model=Device,
    columns=DEVICE_COLUMNS,
    required=("device_id", "name"),
    get=get_device,
    find=find_device,
    key=lambda form: form.device_id,
    clean=_clean_device,
    from_row=_device_from_row,
    save=_save_device,
    detail=_device_detail,
)
_PEOPLE: _Register[PersonForm, Person] = _Register(
    kind="person",
    title="people register",
    model=Person,
    columns=PEOPLE_COLUMNS,
    required=("external_id", "name", "role"),
    get=get_person,
    find=find_person,
    key=lambda form: form.external_id,
    clean=_clean_person,
    from_row=_person_from_row,
    save=_save_person,
    detail=_person_detail,
)


def _record_change(
    session: Session, *, site: str, now: datetime, actor: Actor, action: str, object_id: object, detail: dict[str, Any]
) -> None:
    """Audit a change to a register and tell the daemons (a register entry decides a client's role)."""
    audit(
        session,
        site=site,
        actor=actor,
        action=action,
        object_type=action.partition(".")[0],
        object_id=object_id,
        detail=detail,
        now=now,
    )
    bump_overlay(session, site=site, now=now)


def _record_lapse(session: Session, *, site: str, now: datetime, actor: Actor, object_id: int, lapse: Lapse) -> None:
    """Audit a lapsed authorisation; the headteacher is told from this entry
    (schoolgate.services.notices)."""
    audit(session, site=site, actor=actor, action=AUTHORISATION_LAPSED, object_type="device", object_id=object_id,
          detail=lapse.detail(), now=now)


def _create(
    register: _Register[_Form, _Entry], session: Session, *, site: str, now: datetime, actor: Actor, form: _Form
) -> _Entry:
    actor.require(Permission.EDIT_REGISTERS, doing=f"edit the {register.title}")
    cleaned = register.clean(form)
    entry = register.model(site=site, created_at=now)
    register.save(session, actor, cleaned, entry)  # a new entry has no authorisation to lose
    _record_change(
        session, site=site, now=now, actor=actor, action=f"{register.kind}.create", object_id=entry.id,
        detail=register.detail(cleaned),
    )
    return entry


def _update(
    register: _Register[_Form, _Entry],
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    entry_pk: int,
    form: _Form,
) -> _Entry:
    actor.require(Permission.EDIT_REGISTERS, doing=f"edit the {register.title}")
    entry = register.get(session, site, entry_pk)
    cleaned = register.clean(form)
    lapse = register.save(session, actor, cleaned, entry)
    _record_change(
        session, site=site, now=now, actor=actor, action=f"{register.kind}.update", object_id=entry.id,
        detail=register.detail(cleaned),
    )
    if lapse is not None:
        _record_lapse(session, site=site, now=now, actor=actor, object_id=entry.id, lapse=lapse)
    return entry


def _import_csv(
    register: _Register[_Form, _Entry], session: Session, *, site: str, now: datetime, actor: Actor, text: str
) -> ImportReport:
    actor.require(Permission.EDIT_REGISTERS, doing=f"import the {register.title}")
    rows, errors = _read_rows(text, register.columns, register.required)
    report = ImportReport(errors=errors)
    seen: dict[str, int] = {}
    key_column = register.required[0]
    for line, values in rows:
        key = values.get(key_column, "").strip()
        if key in seen:
            report.errors.append(RowError(line, f"{key_column} {key!r} already appears on line {seen[key]}"))
            continue
        try:
            # A savepoint per row: a row that fails half-way leaves nothing behind.
            with session.begin_nested():
                form = register.clean(register.from_row(values))
                existing = register.find(session, site, register.key(form))
                entry = existing if existing is not None else register.model(site=site, created_at=now)
                lapse = register.save(session, actor, form, entry)
                if lapse is not None:
                    _record_lapse(session, site=site, now=now, actor=actor, object_id=entry.id, lapse=lapse)
        except ServiceError as err:
            report.errors.append(RowError(line, err.message))
            continue
        except IntegrityError as err:
            report.errors.append(RowError(line, f"conflicts with a register entry ({err.orig})"))
            continue
        seen[key] = line
        if existing is None:
            report.created += 1
        else:
            report.updated += 1
    report.errors.sort(key=lambda e: e.line)
    audit(
        session,
        site=site,
        actor=actor,
        action=f"{register.kind}.import",
        object_type=register.kind,
        object_id="csv",
        detail={
            "created": report.created,
            "updated": report.updated,
            "bad_lines": [e.line for e in report.errors][:200],
        },
        now=now,
    )
    if report.saved:
        bump_overlay(session, site=site, now=now)
    return report


# -- the registers' entry points ----------------------------------------------------------------


def create_device(session: Session, *, site: str, now: datetime, actor: Actor, form: DeviceForm) -> Device:
    return _create(_DEVICES, session, site=site, now=now, actor=actor, form=form)


def update_device(
    session: Session, *, site: str, now: datetime, actor: Actor, device_pk: int, form: DeviceForm
) -> Device:
    return _update(_DEVICES, session, site=site, now=now, actor=actor, entry_pk=device_pk, form=form)


def create_person(session: Session, *, site: str, now: datetime, actor: Actor, form: PersonForm) -> Person:
    return _create(_PEOPLE, session, site=site, now=now, actor=actor, form=form)


def update_person(
    session: Session, *, site: str, now: datetime, actor: Actor, person_pk: int, form: PersonForm
) -> Person:
    return _update(_PEOPLE, session, site=site, now=now, actor=actor, entry_pk=person_pk, form=form)


def import_devices_csv(session: Session, *, site: str, now: datetime, actor: Actor, text: str) -> ImportReport:
    """Columns: device_id, name (required), mac, ip, kind, role, owner, ownership, trusts_school_ca, notes."""
    return _import_csv(_DEVICES, session, site=site, now=now, actor=actor, text=text)


def import_people_csv(session: Session, *, site: str, now: datetime, actor: Actor, text: str) -> ImportReport:
    """Columns: external_id, name, role (required), year_group, groups, email, active."""
    return _import_csv(_PEOPLE, session, site=site, now=now, actor=actor, text=text)


def own_role(person: Person) -> str:
    """The role a person goes back to when their authorisation ends: the one they had before it.

    A person authorised before that was recorded is a pupil if they have a year group (only
    pupils do), else staff: never staff for a child."""
    if person.role != AUTHORISED:
        return person.role
    if person.role_before_authorised and person.role_before_authorised != AUTHORISED:
        return person.role_before_authorised
    return Role.PUPIL.value if person.year_group is not None else Role.STAFF.value


def set_role(person: Person, role: str) -> None:
    """Give `person` a role, remembering their own while they are authorised."""
    if role == AUTHORISED and person.role != AUTHORISED:
        person.role_before_authorised = person.role if person.role else None
    elif role != AUTHORISED:
        person.role_before_authorised = None
    person.role = role


def set_person_authorised(
    session: Session, *, site: str, now: datetime, actor: Actor, person_pk: int, authorised: bool, reason: str
) -> Person:
    """The headteacher's authorisation of a person (seed 001 §3), or its withdrawal."""
    actor.require(Permission.AUTHORISE_ACCESS, doing="authorise people to use the school's social media accounts")
    person = get_person(session, site, person_pk)
    why = clean_text(reason, field="reason", max_len=1000, required=authorised)
    before = person.role
    if authorised == (before == AUTHORISED):
        return person
    set_role(person, AUTHORISED if authorised else own_role(person))
    session.flush()
    _record_change(
        session,
        site=site,
        now=now,
        actor=actor,
        action="person.authorise" if authorised else "person.unauthorise",
        object_id=person.id,
        detail={"external_id": person.external_id, "name": person.name, "from": before, "to": person.role,
                "reason": why},
    )
    return person


def set_device_authorised(
    session: Session, *, site: str, now: datetime, actor: Actor, device_pk: int, authorised: bool, reason: str
) -> Device:
    """The headteacher's authorisation of a device, or its withdrawal (back to the owner's role)."""
    actor.require(Permission.AUTHORISE_ACCESS, doing="authorise devices to use the school's social media accounts")
    device = get_device(session, site, device_pk)
    why = clean_text(reason, field="reason", max_len=1000, required=authorised)
    before = device.role
    wanted = AUTHORISED if authorised else None
    if before == wanted or (not authorised and before != AUTHORISED):
        return device
    device.role = wanted
    session.flush()
    _record_change(
        session,
        site=site,
        now=now,
        actor=actor,
        action="device.authorise" if authorised else "device.unauthorise",
        object_id=device.id,
        detail={"device_id": device.device_id, "from": before, "to": wanted, "reason": why},
    )
    return device


__all__ = [
    "DEVICE_COLUMNS",
    "PEOPLE_COLUMNS",
    "DeviceForm",
    "ImportReport",
    "PersonForm",
    "RowError",
    "create_device",
    "create_person",
    "delete_device",
    "delete_person",
    "find_device",
    "find_person",
    "get_device",
    "get_person",
    "import_devices_csv",
    "import_people_csv",
    "list_devices",
    "list_people",
    "normalise_mac",
    "parse_year_group",
    "set_device_authorised",
    "set_person_authorised",
    "update_device",
    "update_person",
]
