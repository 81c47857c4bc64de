"""Device and people registers: CRUD, CSV import with bad rows, CSV export escaping."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services import register
from schoolgate.services.actor import Actor
from schoolgate.services.csvexport import DEVICE_COLUMNS, Columns, iter_csv, safe_cell, to_csv
from schoolgate.services.errors import Forbidden, InvalidInput
from schoolgate.store.models import AccessEvent, AuditEntry, Device, Person
from schoolgate.store.overlay import read_generation

SITE = "testschool"
NOW = datetime(2026, 10, 6, 9, 0, tzinfo=UTC)

PEOPLE_CSV = """external_id,name,role,year_group,groups,email
p001,Amira Khan,pupil,Y5,"5K,eco club",
p002,Ben Cole,pupil,R,,
s001,Mrs J Patel,staff,,teachers,j.patel@school.example
p003,,pupil,3,,
p004,Cara Doe,wizard,3,,
p005,Dan Roe,pupil,Year 9000,,
p001,Amira Again,pupil,5,,
s002,Mr Q,staff,,,not-an-email
g001,Visitor Laptop,guest,,,
"""

DEVICES_CSV = """device_id,name,mac,ip,kind,role,owner,trusts_school_ca,notes
IPAD-1,iPad 1,3C-22-FB-01-02-01,,ipad,,p001,no,
IPAD-2,iPad 2,3c22.fb01.0202,10.0.0.2,ipad,,,yes,class set
IPAD-3,iPad 3,zz:zz,,ipad,,,no,
IPAD-4,iPad 4,3c:22:fb:01:02:01,,ipad,,,no,same MAC as IPAD-1
IPAD-5,iPad 5,,10.0.0.300,ipad,,,no,
IPAD-6,iPad 6,,,ipad,,nobody,no,
IPAD-7,iPad 7,,,ipad,,,maybe,
IPAD-8,"iPad 8, with a comma
and a newline in the name",,,ipad,staff,,no,
IPAD-9,iPad 9,,,ipad,,,no,,too,many
"""


def test_people_import_keeps_good_rows_and_reports_bad_lines(session: Session, technician: Actor) -> None:
    before = read_generation(session, SITE)
    report = register.import_people_csv(session, site=SITE, now=NOW, actor=technician, text=PEOPLE_CSV)
    assert (report.created, report.updated) == (4, 0)
    assert [(e.line, e.message.split(" ")[0]) for e in report.errors] == [
        (5, "Please"),
        (6, "Unknown"),
        (7, "'Year"),
        (8, "external_id"),
        (9, "'not-an-email'"),
    ]
    people = {p.external_id: p for p in session.scalars(select(Person))}
    assert set(people) == {"p001", "p002", "s001", "g001"}
    assert people["p001"].year_group == 5 and people["p001"].groups == "5K,eco club"
    assert people["p002"].year_group == 0 and people["s001"].email == "j.patel@school.example"
    assert read_generation(session, SITE) == before + 1
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "person.import")).one()
    assert '"created":4' in entry.detail

    # Importing again updates in place.
    again = register.import_people_csv(
        session, site=SITE, now=NOW, actor=technician, text="external_id,name,role\np001,Amira K,pupil\n"
    )
    assert (again.created, again.updated, again.errors) == (0, 1, [])
    assert session.get(Person, people["p001"].id).name == "Amira K"  # type: ignore[union-attr]


def test_device_import(session: Session, technician: Actor) -> None:
    register.import_people_csv(session, site=SITE, now=NOW, actor=technician, text=PEOPLE_CSV)
    report = register.import_devices_csv(session, site=SITE, now=NOW, actor=technician, text=DEVICES_CSV)
    assert report.created == 3
    bad = {e.line: e.message for e in report.errors}
    assert sorted(bad) == [4, 5, 6, 7, 8, 11]
    assert "MAC" in bad[4] and "already registered to 'IPAD-1'" in bad[5] and "IP address" in bad[6]
    assert "nobody" in bad[7] and "yes or no" in bad[8] and "cells" in bad[11]
    devices = {d.device_id: d for d in session.scalars(select(Device))}
    assert set(devices) == {"IPAD-1", "IPAD-2", "IPAD-8"}
    assert devices["IPAD-1"].mac == "3c:22:fb:01:02:01" and devices["IPAD-1"].person is not None
    assert devices["IPAD-2"].mac == "3c:22:fb:01:02:02" and devices["IPAD-2"].trusts_school_ca is True
    assert devices["IPAD-8"].name == "iPad 8, with a comma\nand a newline in the name"
    assert devices["IPAD-8"].role == "staff"


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("name,mac\nx,y\n", "needs the column"), ("device_id,name,colour\n", "unknown column")],
)
def test_import_refuses_a_wrong_header(session: Session, technician: Actor, text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        register.import_devices_csv(session, site=SITE, now=NOW, actor=technician, text=text)


def test_import_needs_the_role(session: Session, dsl: Actor) -> None:
    with pytest.raises(Forbidden):
        register.import_devices_csv(session, site=SITE, now=NOW, actor=dsl, text=DEVICES_CSV)


def test_device_crud(session: Session, technician: Actor) -> None:
    device = register.create_device(
        session,
        site=SITE,
        now=NOW,
        actor=technician,
        form=register.DeviceForm(device_id="PC-1", name="Library PC", mac="AA-BB-CC-DD-EE-01"),
    )
    with pytest.raises(InvalidInput, match="already registered"):
        register.create_device(
            session,
            site=SITE,
            now=NOW,
            actor=technician,
            form=register.DeviceForm(device_id="PC-2", name="x", mac="aa:bb:cc:dd:ee:01"),
        )
    register.update_device(
        session,
        site=SITE,
        now=NOW,
        actor=technician,
        device_pk=device.id,
        form=register.DeviceForm(device_id="PC-1", name="Library PC 1", mac="aa:bb:cc:dd:ee:01", role="staff"),
    )
    assert device.name == "Library PC 1" and device.role == "staff"
    assert register.list_devices(session, SITE, search="ee:01").total == 1
    register.delete_device(session, site=SITE, now=NOW, actor=technician, device_pk=device.id)
    assert register.list_devices(session, SITE).total == 0
    actions = list(session.scalars(select(AuditEntry.action).order_by(AuditEntry.seq)))
    assert actions == ["device.create", "device.update", "device.delete"]


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ('=HYPERLINK("http://evil")', '\'=HYPERLINK("http://evil")'),
        ("+1+1", "'+1+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("safe.example", "safe.example"),
        ("a=b", "a=b"),
        ("\n=1", "'\n=1"),
        ("badf\udcff.example", "badf\\xff.example"),  # not UTF-8 in the database: shown, not lost
        ("evil\x00host\x1b[31m.example", "evilhost[31m.example"),  # NUL and control characters dropped
        ("\x00=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),  # a control cannot hide a formula's start
        ("photo\u202egnp.exe", "photo\\u202egnp.exe"),  # a right-to-left override: shown, not obeyed
        ("\u2066=1+1\u2069", "\\u2066=1+1\\u2069"),
        ("\x85next\x9bline", "nextline"),  # C1 controls too
        ("two\nlines\tand a tab", "two\nlines\tand a tab"),  # kept: the CSV writer quotes them
        (None, ""),
        (True, "yes"),
        (datetime(2026, 10, 6, 9, 0, tzinfo=UTC), "2026-10-06T09:00:00+00:00"),
    ],
)
def test_safe_cell(value: object, cell: str) -> None:
    assert safe_cell(value) == cell


def test_event_export_escapes_and_round_trips(session: Session) -> None:
    hostile = AccessEvent(
        site=SITE,
        ts=NOW,
        source="proxy",
        client_ip="10.0.0.5",
        role="pupil",
        host="=cmd|' /C calc'!A0.example",
        url="https://x.example/?q=-1+1",
        search_term='@everyone "quoted", with comma\nnewline',
        verdict="block",
        rule_id="r",
        flags="",
    )
    columns: Columns[AccessEvent] = Columns(("time_utc", "host", "url", "search_term"),
                                            lambda e: (e.ts, e.host, e.url, e.search_term))
    text = "".join(columns.csv([hostile]))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["time_utc", "host", "url", "search_term"]
    record = dict(zip(rows[0], rows[1], strict=True))
    assert record["host"] == "'=cmd|' /C calc'!A0.example"
    assert record["search_term"] == '\'@everyone "quoted", with comma\nnewline'
    assert record["url"] == "https://x.example/?q=-1+1"
    assert to_csv(["a"], [["=1"]]) == "a\r\n'=1\r\n"
    assert list(iter_csv(["h"], [])) == ["h\r\n"]


def test_device_export_matches_the_import_columns(session: Session, technician: Actor) -> None:
    register.import_devices_csv(
        session, site=SITE, now=NOW, actor=technician, text="device_id,name,notes\nPC-1,Library PC,-do not move\n"
    )
    text = "".join(DEVICE_COLUMNS.csv(session.scalars(select(Device))))
    assert text.splitlines()[0] == ",".join(register.DEVICE_COLUMNS)
    assert "'-do not move" in text


def _admin_head(session: Session) -> Actor:
    from schoolgate.store.models import ConsoleUser, UserRole

    user = ConsoleUser(
        site=SITE, username="adminhead", display_name="Admin Head", password_hash="x",
        roles=[UserRole(role="admin"), UserRole(role="headteacher")],
    )
    session.add(user)
    session.flush()
    return Actor.from_user(user)


def _actions(session: Session) -> list[str]:
    return list(session.scalars(select(AuditEntry.action).where(AuditEntry.site == SITE).order_by(AuditEntry.seq)))


def test_only_the_headteacher_grants_the_authorised_role(
    session: Session, technician: Actor, headteacher: Actor
) -> None:
    """Seed 001 §3: the headteacher authorises who may use the school's social media accounts."""
    with pytest.raises(Forbidden, match="Only the headteacher") as caught:
        register.create_person(
            session, site=SITE, now=NOW, actor=technician,
            form=register.PersonForm(external_id="s9", name="Ms Office", role="authorised"),
        )
    assert caught.value.field == "role"
    person = register.create_person(
        session, site=SITE, now=NOW, actor=technician,
        form=register.PersonForm(external_id="s9", name="Ms Office", role="staff"),
    )
    with pytest.raises(Forbidden, match="Only the headteacher"):
        register.update_person(
            session, site=SITE, now=NOW, actor=technician, person_pk=person.id,
            form=register.PersonForm(external_id="s9", name="Ms Office", role="authorised"),
        )
    device = register.create_device(
        session, site=SITE, now=NOW, actor=technician, form=register.DeviceForm(device_id="OFFICE-PC", name="Office PC")
    )
    with pytest.raises(Forbidden, match="Only the headteacher"):
        register.update_device(
            session, site=SITE, now=NOW, actor=technician, device_pk=device.id,
            form=register.DeviceForm(device_id="OFFICE-PC", name="Office PC", role="authorised"),
        )
    assert "person.authorise" not in _actions(session)

    register.set_person_authorised(
        session, site=SITE, now=NOW, actor=headteacher, person_pk=person.id, authorised=True,
        reason="Runs the school's Facebook page",
    )
    assert person.role == "authorised"
    # A device handed to an authorised person would inherit the role: the technician cannot.
    with pytest.raises(Forbidden, match="Only the headteacher"):
        register.update_device(
            session, site=SITE, now=NOW, actor=technician, device_pk=device.id,
            form=register.DeviceForm(device_id="OFFICE-PC", name="Office PC", owner="s9"),
        )
    # Editing an already authorised person keeps the role; withdrawing it is anyone's to do.
    register.update_person(
        session, site=SITE, now=NOW, actor=technician, person_pk=person.id,
        form=register.PersonForm(external_id="s9", name="Ms J Office", role="authorised"),
    )
    register.update_person(
        session, site=SITE, now=NOW, actor=technician, person_pk=person.id,
        form=register.PersonForm(external_id="s9", name="Ms J Office", role="staff"),
    )
    with pytest.raises(Forbidden, match="headteacher"):
        register.set_person_authorised(
            session, site=SITE, now=NOW, actor=technician, person_pk=person.id, authorised=True, reason="x"
        )
    with pytest.raises(InvalidInput):
        register.set_person_authorised(
            session, site=SITE, now=NOW, actor=headteacher, person_pk=person.id, authorised=True, reason=" "
        )
    register.set_device_authorised(
        session, site=SITE, now=NOW, actor=_admin_head(session), device_pk=device.id, authorised=True, reason="office"
    )
    assert device.role == "authorised"
    register.set_device_authorised(
        session, site=SITE, now=NOW, actor=headteacher, device_pk=device.id, authorised=False, reason=""
    )
    assert device.role is None
    entries = {
        e.action: e for e in session.scalars(select(AuditEntry).where(AuditEntry.action.like("%authorise")))
    }
    assert set(entries) == {"person.authorise", "device.authorise", "device.unauthorise"}
    assert "Facebook page" in entries["person.authorise"].detail and entries["person.authorise"].actor == "head"


def test_csv_import_by_a_technician_cannot_grant_authorised(session: Session, technician: Actor) -> None:
    report = register.import_people_csv(
        session, site=SITE, now=NOW, actor=technician,
        text="external_id,name,role\ns1,Mrs A,staff\ns2,Mr B,authorised\n",
    )
    assert report.created == 1 and [e.line for e in report.errors] == [3]
    assert "Only the headteacher" in report.errors[0].message
    report = register.import_devices_csv(
        session, site=SITE, now=NOW, actor=technician,
        text="device_id,name,role,owner\nD1,PC 1,authorised,\nD2,PC 2,,s1\n",
    )
    assert report.created == 1 and [e.line for e in report.errors] == [2]
    assert register.find_person(session, SITE, "s2") is None
    assert register.find_device(session, SITE, "D1") is None


def test_device_ownership_from_the_form_and_csv(session: Session, technician: Actor) -> None:
    """Seed 001 §4 needs to know which devices are school-owned: recorded by form and CSV,
    exported, and never wiped by a CSV file that has no ownership column."""
    device = register.create_device(
        session, site=SITE, now=NOW, actor=technician,
        form=register.DeviceForm(device_id="LAP-1", name="Staff laptop 1", ownership="school_owned"),
    )
    assert device.ownership == "school_owned"
    with pytest.raises(InvalidInput, match="not a device ownership") as err:
        register.create_device(
            session, site=SITE, now=NOW, actor=technician,
            form=register.DeviceForm(device_id="LAP-2", name="x", ownership="borrowed"),
        )
    assert err.value.field == "ownership"
    text = "device_id,name,ownership\nLAP-1,Staff laptop 1,\nPHONE-1,Head's phone,Personal\nTAB-1,Tablet,school\n"
    report = register.import_devices_csv(session, site=SITE, now=NOW, actor=technician, text=text)
    assert (report.created, report.updated, report.errors) == (2, 1, [])
    devices = {d.device_id: d for d in session.scalars(select(Device))}
    assert {k: d.ownership for k, d in devices.items()} == {
        "LAP-1": None,  # a blank cell says "not recorded"
        "PHONE-1": "personal",
        "TAB-1": "school_owned",
    }
    # A file without the column (e.g. from the MIS) keeps what the technician recorded.
    register.import_devices_csv(
        session, site=SITE, now=NOW, actor=technician, text="device_id,name\nPHONE-1,Head's phone (new)\n"
    )
    assert devices["PHONE-1"].ownership == "personal" and devices["PHONE-1"].name == "Head's phone (new)"
    ordered = sorted(devices.values(), key=lambda d: d.device_id)
    rows = list(csv.reader(io.StringIO("".join(DEVICE_COLUMNS.csv(ordered)))))
    assert rows[0][7] == "ownership" and [r[7] for r in rows[1:]] == ["", "personal", "school_owned"]


@pytest.mark.parametrize(
    ("form", "authorised_before", "back_to"),
    [
        (register.PersonForm(external_id="p7", name="Year 6 pupil", role="pupil", year_group=6), None, "pupil"),
        (register.PersonForm(external_id="s7", name="Teacher", role="staff"), None, "staff"),
        (register.PersonForm(external_id="g7", name="Governor", role="guest"), None, "guest"),
        # Authorised before the own role was kept: a pupil has a year group, so never staff.
        (register.PersonForm(external_id="p8", name="Old pupil", role="pupil", year_group=5), "legacy", "pupil"),
    ],
)
def test_withdrawing_authorisation_returns_a_person_to_their_own_role(
    session: Session, technician: Actor, headteacher: Actor, form: register.PersonForm, authorised_before: str | None,
    back_to: str,
) -> None:
    person = register.create_person(session, site=SITE, now=NOW, actor=technician, form=form)
    register.set_person_authorised(
        session, site=SITE, now=NOW, actor=headteacher, person_pk=person.id, authorised=True,
        reason="Appendix C: administrator of the school's Facebook page",
    )
    assert person.role == "authorised" and person.role_before_authorised == form.role
    if authorised_before == "legacy":
        person.role_before_authorised = None
    register.set_person_authorised(
        session, site=SITE, now=NOW, actor=headteacher, person_pk=person.id, authorised=False, reason=""
    )
    assert (person.role, person.role_before_authorised) == (back_to, None)
    entry = session.scalars(
        select(AuditEntry).where(AuditEntry.action == "person.unauthorise").order_by(AuditEntry.id.desc())
    ).first()
    assert entry is not None and json.loads(entry.detail)["to"] == back_to


def _authorised_device(session: Session, technician: Actor, headteacher: Actor, *, via_owner: bool) -> Device:
    owner = register.create_person(session, site=SITE, now=NOW, actor=technician, form=register.PersonForm(
        external_id="s100", name="Ms Marketing", role="staff"))
    device = register.create_device(session, site=SITE, now=NOW, actor=technician, form=register.DeviceForm(
        device_id="MKT-LAPTOP", name="Marketing laptop", mac="02:00:00:00:00:01", ip="10.41.10.50", owner="s100"))
    if via_owner:
        register.set_person_authorised(session, site=SITE, now=NOW, actor=headteacher, person_pk=owner.id,
                                       authorised=True, reason="Runs the school's Facebook page")
    else:
        register.set_device_authorised(session, site=SITE, now=NOW, actor=headteacher, device_pk=device.id,
                                       authorised=True, reason="The school's social media laptop")
    return device


def _form(device: Device, **changes: object) -> register.DeviceForm:
    values: dict[str, object] = {"device_id": device.device_id, "name": device.name, "mac": device.mac,
                                 "ip": device.ip, "role": device.role, "owner": "s100"}
    values.update(changes)
    return register.DeviceForm(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("via_owner", [False, True], ids=["device authorised", "owner authorised"])
@pytest.mark.parametrize(
    ("changes", "lapses"),
    [
        ({"mac": "02:00:00:00:00:99"}, True),  # a pupil's phone given the laptop's place in the register
        ({"ip": "10.41.20.15"}, True),
        ({"mac": None, "ip": None}, True),
        ({"name": "Marketing laptop (new battery)"}, False),
    ],
)
def test_a_technician_moving_an_authorised_device_ends_its_authorisation(
    session: Session, technician: Actor, headteacher: Actor, via_owner: bool, changes: dict[str, object],
    lapses: bool,
) -> None:
    device = _authorised_device(session, technician, headteacher, via_owner=via_owner)
    register.update_device(session, site=SITE, now=NOW, actor=technician, device_pk=device.id,
                           form=_form(device, **changes))
    lapsed = session.scalars(select(AuditEntry).where(AuditEntry.action == register.AUTHORISATION_LAPSED)).all()
    if not lapses:
        assert lapsed == [] and register._device_authorised(session, SITE, device.role, device.person_id)
        return
    # The device is no longer authorised (an owner's authorisation stays theirs on other devices).
    assert not register._device_authorised(session, SITE, device.role, device.person_id)
    assert device.role == ("staff" if via_owner else None)
    (entry,) = lapsed
    assert entry.actor == technician.name and json.loads(entry.detail)["device_id"] == "MKT-LAPTOP"


def test_the_headteacher_may_move_an_authorised_device(
    session: Session, technician: Actor, headteacher: Actor
) -> None:
    """A small school's headteacher who also edits the register (she holds the admin role too)."""
    device = _authorised_device(session, technician, headteacher, via_owner=False)
    head_and_admin = Actor(headteacher.name, headteacher.display_name, frozenset({"headteacher", "admin"}),
                           headteacher.user_id)
    register.update_device(session, site=SITE, now=NOW, actor=head_and_admin, device_pk=device.id,
                           form=_form(device, mac="02:00:00:00:00:77"))
    assert device.role == "authorised" and device.mac == "02:00:00:00:00:77"


def test_a_csv_import_that_moves_an_authorised_device_ends_its_authorisation(
    session: Session, technician: Actor, headteacher: Actor
) -> None:
    device = _authorised_device(session, technician, headteacher, via_owner=False)
    text = ("device_id,name,mac,ip,role,owner\n"
            "MKT-LAPTOP,Marketing laptop,02:00:00:00:00:42,10.41.10.50,authorised,s100\n")
    report = register.import_devices_csv(session, site=SITE, now=NOW, actor=technician, text=text)
    assert report.updated == 1 and report.errors == []
    assert device.role is None and device.mac == "02:00:00:00:00:42"
    assert session.scalars(select(AuditEntry).where(AuditEntry.action == register.AUTHORISATION_LAPSED)).one()
