"""Directory exports of each system the school may use, read into people."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schoolgate.identity.directory import DirectoryFormatError, parse_directory, role_from_words, year_group

GOOGLE = """\
First Name [Required],Last Name [Required],Email Address [Required],Password [Required],Org Unit Path [Required],\
Status [READ ONLY],Employee ID,Employee Type
Cara,Teacher,cara.teacher@kingswood.sch.uk,****,/Staff/Teachers,Active,,Teacher
Ada,Pupil,ada.pupil@kingswood.sch.uk,****,/Pupils/Year 5/5B,Active,P100,
Ben,Pupil,ben.pupil@kingswood.sch.uk,****,/Pupils/Reception/RA,Suspended,P101,
Tim,Visitor,tim@kingswood.sch.uk,****,/,Active,,
"""

ENTRA = """\
userPrincipalName,displayName,surname,mail,givenName,id,userType,jobTitle,department,accountEnabled
cara.teacher@kingswood.sch.uk,Cara Teacher,Teacher,cara.teacher@kingswood.sch.uk,Cara,7c1e,Member,Class Teacher,\
Teaching Staff,True
ada.pupil@kingswood.sch.uk,Ada Pupil,Pupil,,Ada,8d2f,Member,Student,Year 5,True
gus@partner.org,Gus Guest,Guest,gus@partner.org,Gus,9e3a,Guest,,,True
left@kingswood.sch.uk,Left Teacher,Teacher,,Left,aa11,Member,Teacher,Staff,False
"""

SDS_STUDENT = """\
SIS ID,School SIS ID,Username,Password,First Name,Last Name,Grade
P100,KPS,ada.pupil@kingswood.sch.uk,,Ada,Pupil,5
P102,KPS,cat.pupil@kingswood.sch.uk,,Cat,Pupil,R
"""

SDS_TEACHER = """\
SIS ID,School SIS ID,Username,First Name,Last Name,Title
T7,KPS,cara.teacher@kingswood.sch.uk,Cara,Teacher,Mrs
"""

# As Wonde exports an MIS (Arbor, SIMS or Bromcom): legal and preferred names, UPN, registration group.
WONDE = """\
MIS ID,UPN,Legal Forename,Preferred Forename,Legal Surname,Year,Registration Group,Email
1001,A123456789012,Adaline,Ada,Pupil,Year 5,5B,ada.pupil@kingswood.sch.uk
1002,B123456789012,Benjamin,,Pupil,Reception,RA,
"""

SIMS = """\
Adno,UPN,Legal Surname,Legal Forename,Preferred Forename,Year,Reg
001234,A1,Pupil,Adaline,Ada,6,6C
"""


def people(text: str, **kwargs: object) -> list[tuple[object, ...]]:
    parsed = parse_directory(text, **kwargs)  # type: ignore[arg-type]
    return [(p.external_id, p.name, p.email, p.role, p.year_group, p.groups, p.active) for p in parsed.people]


def test_google_workspace() -> None:
    parsed = parse_directory(GOOGLE)
    assert parsed.format == "google"
    assert people(GOOGLE)[:3] == [
        ("cara.teacher@kingswood.sch.uk", "Cara Teacher", "cara.teacher@kingswood.sch.uk", "staff", None,
         ("Teachers",), True),
        ("P100", "Ada Pupil", "ada.pupil@kingswood.sch.uk", "pupil", 5, ("5B",), True),
        ("P101", "Ben Pupil", "ben.pupil@kingswood.sch.uk", "pupil", 0, ("RA",), False),  # suspended
    ]
    (problem,) = parsed.problems
    assert problem.line == 5 and "cannot tell whether a pupil or staff" in problem.message


def test_entra_id() -> None:
    assert parse_directory(ENTRA).format == "entra"
    assert people(ENTRA) == [
        ("cara.teacher@kingswood.sch.uk", "Cara Teacher", "cara.teacher@kingswood.sch.uk", "staff", None,
         ("Teaching Staff",), True),
        ("ada.pupil@kingswood.sch.uk", "Ada Pupil", "ada.pupil@kingswood.sch.uk", "pupil", 5, ("Year 5",), True),
        ("gus@partner.org", "Gus Guest", "gus@partner.org", "guest", None, (), True),
        ("left@kingswood.sch.uk", "Left Teacher", "left@kingswood.sch.uk", "staff", None, ("Staff",), False),
    ]


def test_school_data_sync_v1() -> None:
    assert parse_directory(SDS_STUDENT).format == "sds-student"
    assert [(p[0], p[3], p[4]) for p in people(SDS_STUDENT)] == [("P100", "pupil", 5), ("P102", "pupil", 0)]
    assert parse_directory(SDS_TEACHER).format == "sds-teacher"
    assert [(p[0], p[1], p[3]) for p in people(SDS_TEACHER)] == [("T7", "Cara Teacher", "staff")]
    with pytest.raises(DirectoryFormatError, match=r"v2\.1 users\.csv"):
        parse_directory("sourcedId,username,givenName,familyName\n1,a,b,c\n")


@pytest.mark.parametrize("text", [WONDE, SIMS])
def test_mis_exports(text: str) -> None:
    parsed = parse_directory(text)
    assert parsed.format == "mis" and parsed.problems == []
    first = parsed.people[0]
    assert (first.name, first.role, first.year_group) in (("Ada Pupil", "pupil", 5), ("Ada Pupil", "pupil", 6))
    assert first.groups in (("5B",), ("6C",))


def test_a_file_of_one_kind_takes_the_role_it_is_given() -> None:
    staff = "MIS ID,Forename,Surname,Email\nS1,Cara,Teacher,cara.teacher@kingswood.sch.uk\n"
    assert parse_directory(staff).problems[0].message.endswith("(import the file with a role for every row)")
    assert people(staff, role="staff")[0][3] == "staff"
    with pytest.raises(DirectoryFormatError, match="role 'authorised'"):
        parse_directory(staff, role="authorised")  # only the headteacher authorises


def test_bad_rows_are_problems_with_their_line() -> None:
    text = WONDE + ',,,,,,,\n1003,,,,,Year 4,4A,\n1004,C1,Dan,\x07,Pupil,Year 4,4A,\n"unterminated\n'
    parsed = parse_directory(text)
    assert [p.external_id for p in parsed.people] == ["1001", "1002"]
    assert [(p.line, p.message.split(" (")[0]) for p in parsed.problems][:2] == [
        (5, "needs an id and a name"), (6, "the id or name holds control characters")]


def test_an_unknown_file_is_refused_with_its_columns() -> None:
    with pytest.raises(DirectoryFormatError, match="its columns are: colour, size"):
        parse_directory("colour,size\nred,4\n")


@pytest.mark.parametrize(
    ("text", "year"),
    [("Year 5", 5), ("Y3", 3), ("R", 0), ("Reception", 0), ("/Pupils/Year 6/6B", 6), ("5B", None), ("", None)],
)
def test_year_groups(text: str, year: int | None) -> None:
    assert year_group(text) == year


@pytest.mark.parametrize(
    ("words", "role"),
    [(("/Staff/Office",), "staff"), (("Teaching Assistant",), "staff"), (("/Pupils/Year 2",), "pupil"),
     (("Student",), "pupil"), (("Visitors",), "guest"), (("/",), None), (("Staff", "Year 5"), None)],
)
def test_role_words(words: tuple[str, ...], role: str | None) -> None:
    assert role_from_words(*words) == role


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_is_read_or_refused_with_a_format_error(text: str) -> None:
    try:
        parsed = parse_directory(text)
    except DirectoryFormatError:
        return
    assert all(p.role in ("pupil", "staff", "guest") for p in parsed.people)
