"""The directory import in the console: upload, see every change, apply exactly that, audited."""

from __future__ import annotations

import io
import re

from console_testkit import Console, csrf_from, post_form
from sqlalchemy import select

from schoolgate.store.audit import verify
from schoolgate.store.models import AuditEntry, DirectoryImport, Person

SITE = "kingswood"
GOOGLE = (
    "First Name [Required],Last Name [Required],Email Address [Required],Org Unit Path [Required],"
    "Status [READ ONLY],Employee ID\n"
    "Cara,Teacher,cara.teacher@kingswood.sch.uk,/Staff/Teachers,Active,\n"
    "Ada,Pupil,ada.pupil@kingswood.sch.uk,/Pupils/Year 5/5B,Active,P100\n"
    "Odd,One,odd@kingswood.sch.uk,/,Active,\n"
)


def upload(client: object, data: bytes, **fields: str) -> object:
    page = client.get("/people/directory").get_data(as_text=True)  # type: ignore[attr-defined]
    return client.post(  # type: ignore[attr-defined]
        "/people/directory",
        data={"csrf_token": csrf_from(page), "file": (io.BytesIO(data), "users.csv"), **fields},
        content_type="multipart/form-data",
    )


def test_preview_then_apply_exactly_what_was_shown(console: Console) -> None:
    with console.session() as session, session.begin():
        session.add(Person(site=SITE, external_id="P100", name="Ada Pupill", role="pupil", year_group=4))
    tech = console.login("technician")
    # UTF-16 with a BOM, as Windows writes it: read the same.
    response = upload(tech, GOOGLE.encode("utf-16"))
    assert response.status_code == 302  # type: ignore[attr-defined]
    preview_url = response.headers["Location"]  # type: ignore[attr-defined]
    page = tech.get(preview_url).get_data(as_text=True)
    assert "Google Workspace" in page and "<strong>1</strong> to add" in page and "<strong>1</strong> to change" in page
    assert "name: Ada Pupill → Ada Pupil" in page and "year_group: 4 → 5" in page
    assert "cannot tell whether a pupil or staff" in page  # the row with no unit is shown, not guessed
    with console.session() as session:
        assert session.scalars(select(Person.name).where(Person.external_id == "P100")).one() == "Ada Pupill"

    applied = post_form(tech, preview_url, f"{preview_url}/apply", {})
    assert applied.status_code == 302
    with console.session() as session:
        people = {p.external_id: (p.name, p.role, p.year_group, p.groups) for p in session.scalars(select(Person))}
        assert people == {"P100": ("Ada Pupil", "pupil", 5, "5B"),
                          "cara.teacher@kingswood.sch.uk": ("Cara Teacher", "staff", None, "Teachers")}
        (row,) = session.scalars(select(DirectoryImport))
        assert (row.status, row.applied_by) == ("applied", "technician")
        actions = [e.action for e in session.scalars(select(AuditEntry).order_by(AuditEntry.seq))]
        assert actions[-2:] == ["directory.preview", "directory.apply"]
        assert verify(session, SITE).ok
    again = post_form(tech, preview_url, f"{preview_url}/apply", {})
    assert again.status_code == 302  # refused: applied already
    assert "applied already" in tech.get(preview_url).get_data(as_text=True)


def test_a_register_changed_since_the_preview_is_not_overwritten(console: Console) -> None:
    tech = console.login("technician")
    preview_url = upload(tech, GOOGLE.encode()).headers["Location"]  # type: ignore[attr-defined]
    with console.session() as session, session.begin():
        session.add(Person(site=SITE, external_id="P100", name="Someone Else", role="pupil"))
    post_form(tech, preview_url, f"{preview_url}/apply", {})
    assert "changed since this preview" in tech.get(preview_url).get_data(as_text=True)
    with console.session() as session:
        assert session.scalars(select(Person.name).where(Person.external_id == "P100")).one() == "Someone Else"


def test_leavers_only_when_asked_and_only_of_the_files_roles(console: Console) -> None:
    with console.session() as session, session.begin():
        session.add_all([Person(site=SITE, external_id="P9", name="Gone Pupil", role="pupil"),
                         Person(site=SITE, external_id="S9", name="Staying Staff", role="staff")])
    tech = console.login("technician")
    pupils = "MIS ID,Forename,Surname,Year,Registration Group\n1001,Ada,Pupil,Year 5,5B\n"
    preview_url = upload(tech, pupils.encode(), mark_leavers="1").headers["Location"]  # type: ignore[attr-defined]
    page = tech.get(preview_url).get_data(as_text=True)
    assert re.search(r"leave.*Gone Pupil", page, re.S) and "Staying Staff" not in page
    post_form(tech, preview_url, f"{preview_url}/apply", {})
    with console.session() as session:
        active = {p.external_id: p.active for p in session.scalars(select(Person))}
    assert active == {"P9": False, "S9": True, "1001": True}


def test_a_file_that_is_no_export_is_refused_plainly(console: Console) -> None:
    tech = console.login("technician")
    response = upload(tech, b"colour,size\nred,4\n")
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "matches no directory export" in response.get_data(as_text=True)  # type: ignore[attr-defined]
    binary = upload(tech, b"PK\x03\x04\x00\x00\x00zip")
    assert "not a text file" in binary.get_data(as_text=True)  # type: ignore[attr-defined]


def test_only_those_who_edit_the_registers_may_import(console: Console) -> None:
    dsl = console.login("dsl")
    assert dsl.get("/people/directory").status_code == 403


def test_the_network_page_says_what_the_mode_leaves_to_the_school(console: Console) -> None:
    from dataclasses import replace

    from schoolgate.config import NetworkConfig
    from schoolgate.console.web import state

    tech = console.login("technician")
    page = tech.get("/network").get_data(as_text=True)
    assert "Gateway mode" in page and "What it does not do here" not in page
    assert "DHCP lease files followed: none" in page
    app_state = state(console.app)
    app_state.config = replace(app_state.config, network=NetworkConfig(mode="dns-only"))
    page = tech.get("/network").get_data(as_text=True)
    assert "DNS only mode" in page and "allow DNS (UDP and TCP port 53) out only from the appliance" in page
    assert "is the school's DNS server only" in tech.get("/dashboard").get_data(as_text=True)
