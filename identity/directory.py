"""The school's directory exports, read into people: Google Workspace, Microsoft Entra ID and
School Data Sync, and the MIS exports (Arbor, SIMS, Bromcom, directly or through Wonde).

Each export names its columns its own way; a profile lists the names each one uses for the
few things schoolgate keeps (an id, a name, an e-mail address, pupil or staff, year group,
class), and the profile whose columns the header matches best reads the file. Whether a row
is a pupil or a member of staff comes from what the export says (Google's organisational
unit, Entra's job title or department, SDS's file, the MIS's year group or role column), or
from the technician for a file of one kind only. No export can make anyone "authorised": only
the headteacher does that, in the console.

Pure: text in, people and problems out. A row that cannot be read is a problem with its line
number, and every other row is read.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_ROWS = 20_000
ROLES = ("pupil", "staff", "guest")


class DirectoryFormatError(ValueError):
    """The file as a whole is not a directory export schoolgate can read (says why)."""


@dataclass(frozen=True)
class DirectoryPerson:
    line: int
    external_id: str
    name: str
    email: str | None
    role: str  # pupil, staff or guest
    year_group: int | None
    groups: tuple[str, ...]
    active: bool = True


@dataclass(frozen=True)
class RowProblem:
    line: int
    message: str


@dataclass
class DirectoryFile:
    format: str
    title: str
    people: list[DirectoryPerson] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)


def _key(header: str) -> str:
    """A column name as the profiles spell it: lower case, no `[Required]`, no spaces or punctuation."""
    name = re.sub(r"\[[^\]]*\]", "", header.lstrip("\ufeff")).strip().lower()
    return re.sub(r"[^a-z0-9]", "", name)


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    columns: dict[str, tuple[str, ...]]  # field -> the column keys that hold it, best first
    required: tuple[str, ...]  # column keys that must all be there for this profile
    role: Callable[[dict[str, str]], str | None] | None = None  # the row's role, if the export says


STAFF_WORDS = ("staff", "teacher", "teaching", "employee", "office", "admin", "support", "governor", "head")
PUPIL_WORDS = ("pupil", "student", "learner", "children", "year", "reception", "nursery")


def role_from_words(*texts: str) -> str | None:
    words = " ".join(texts).lower()
    if re.search(r"\bguests?\b|\bvisitors?\b", words):
        return "guest"
    staff = any(re.search(rf"\b{w}", words) for w in STAFF_WORDS)
    pupil = any(re.search(rf"\b{w}", words) for w in PUPIL_WORDS)
    if staff != pupil:
        return "staff" if staff else "pupil"
    return None


def _google_role(row: dict[str, str]) -> str | None:
    return role_from_words(row.get("orgunitpath", "")) or role_from_words(row.get("employeetype", ""))


def _entra_role(row: dict[str, str]) -> str | None:
    if row.get("usertype", "").lower() == "guest":
        return "guest"
    return role_from_words(row.get("jobtitle", ""), row.get("department", ""))


def _mis_role(row: dict[str, str]) -> str | None:
    stated = row.get("role") or row.get("type") or row.get("usertype") or row.get("stafftype") or ""
    if stated:
        return role_from_words(stated)
    if row.get("yeargroup") or row.get("year") or row.get("ncyear"):
        return "pupil"
    if row.get("jobtitle") or row.get("staffcode"):
        return "staff"
    return None


PROFILES = (
    Profile(
        "google", "Google Workspace (Admin console, Download users)",
        {"id": ("employeeid", "emailaddress"), "first": ("firstname",), "last": ("lastname",),
         "email": ("emailaddress",), "groups": ("orgunitpath",), "year": ("orgunitpath", "department"),
         "status": ("status",)},
        ("emailaddress", "orgunitpath"), _google_role,
    ),
    Profile(
        "entra", "Microsoft Entra ID (Download users)",
        {"id": ("userprincipalname",), "name": ("displayname",), "first": ("givenname", "firstname"),
         "last": ("surname", "lastname"), "email": ("mail", "userprincipalname"), "groups": ("department",),
         "year": ("department", "jobtitle"), "status": ("accountenabled", "blocksignin")},
        ("userprincipalname", "displayname"), _entra_role,
    ),
    Profile(
        "sds-student", "School Data Sync (v1 Student.csv)",
        {"id": ("sisid",), "first": ("firstname",), "last": ("lastname",), "email": ("username",),
         "year": ("grade",)},
        ("sisid", "schoolsisid", "grade"), lambda row: "pupil",
    ),
    Profile(
        "sds-teacher", "School Data Sync (v1 Teacher.csv)",
        {"id": ("sisid",), "first": ("firstname",), "last": ("lastname",), "email": ("username",)},
        ("sisid", "schoolsisid", "username"), lambda row: "staff",
    ),
    Profile(
        "mis", "MIS export (Arbor, SIMS, Bromcom, or through Wonde)",
        {"id": ("misid", "upn", "adno", "admissionnumber", "studentid", "pupilid", "staffid", "staffcode",
                "employeeid", "id"),
         "first": ("preferredforename", "forename", "legalforename", "firstname", "givenname"),
         "last": ("preferredsurname", "surname", "legalsurname", "lastname", "familyname"),
         "name": ("name", "fullname", "displayname"),
         "email": ("email", "emailaddress", "schoolemail", "workemail", "mail"),
         "year": ("yeargroup", "year", "ncyear", "nationalcurriculumyear"),
         "groups": ("registrationgroup", "reggroup", "reg", "registrationform", "form", "tutorgroup", "class")},
        (), _mis_role,
    ),
)


def year_group(text: str) -> int | None:
    """`Year 5`, `Y5`, `5`, `R`/`Reception` (0), or a Google unit path `/Pupils/Year 5/5B`."""
    for part in reversed([p.strip() for p in re.split(r"[/,]", text) if p.strip()]):
        lowered = part.lower()
        if lowered in ("r", "rec", "reception", "year r", "yr r", "foundation", "fs2"):
            return 0
        match = re.fullmatch(r"(?:year|yr|y|nc year|grade)?\s*(\d{1,2})", lowered)
        if match and 0 <= int(match.group(1)) <= 13:
            return int(match.group(1))
    return None


def _score(profile: Profile, keys: set[str]) -> int:
    if not all(k in keys for k in profile.required):
        return -1
    return sum(1 for names in profile.columns.values() if any(n in keys for n in names))


def detect(header: list[str]) -> Profile:
    keys = {_key(h) for h in header}
    if {"sourcedid", "givenname", "familyname"} <= keys:
        raise DirectoryFormatError(
            "this is a School Data Sync v2.1 users.csv, whose roles are in a second file: export SDS v1 "
            "Student.csv and Teacher.csv instead, or the users from Entra ID"
        )
    best = max(PROFILES, key=lambda p: _score(p, keys))
    if _score(best, keys) < 2:
        raise DirectoryFormatError(
            "the header matches no directory export schoolgate knows (Google Workspace, Entra ID, "
            f"School Data Sync v1, or an MIS export); its columns are: {', '.join(h.strip() for h in header)}"
        )
    return best


def _cell(row: dict[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = row.get(name, "").strip()
        if value:
            return value
    return ""


def _active(row: dict[str, str]) -> bool:
    """Suspended (Google), disabled or blocked from signing in (Entra), or a leaver (MIS): not active."""
    if "accountenabled" in row:
        return row["accountenabled"].strip().lower() not in ("false", "no")
    if "blocksignin" in row:
        return row["blocksignin"].strip().lower() not in ("true", "yes")
    status = (row.get("status") or row.get("enrolmentstatus") or "").strip().lower()
    return status not in ("suspended", "inactive", "disabled", "archived", "leaver", "left")


def parse_directory(text: str, *, profile: str = "auto", role: str | None = None) -> DirectoryFile:
    """Read a directory export. `role`: every row's role, for a file of pupils or of staff only."""
    if role is not None and role not in ROLES:
        raise DirectoryFormatError(f"role {role!r}: one of {', '.join(ROLES)}")
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DirectoryFormatError("the file is empty") from None
    except csv.Error as err:
        raise DirectoryFormatError(f"line 1: the header cannot be read ({err})") from err
    if profile == "auto":
        chosen = detect(header)
    else:
        found = [p for p in PROFILES if p.name == profile]
        if not found:
            raise DirectoryFormatError(f"unknown format {profile!r} (one of: {', '.join(p.name for p in PROFILES)})")
        chosen = found[0]
    keys = [_key(h) for h in header]
    result = DirectoryFile(chosen.name, chosen.title)
    line = reader.line_num + 1
    rows = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            result.problems.append(RowProblem(line, f"cannot be read as CSV ({err})"))
            line = reader.line_num + 1
            continue
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in record):
            continue
        rows += 1
        if rows > MAX_ROWS:
            result.problems.append(RowProblem(start, f"more than {MAX_ROWS} rows: the rest were not read"))
            break
        row = dict(zip(keys, record, strict=False))
        person = _person(chosen, row, start, role, result)
        if person is not None:
            result.people.append(person)
    return result


def _person(profile: Profile, row: dict[str, str], line: int, role: str | None,
            result: DirectoryFile) -> DirectoryPerson | None:
    columns = profile.columns
    external_id = _cell(row, columns.get("id", ()))
    name = _cell(row, columns.get("name", ())) or " ".join(
        part for part in (_cell(row, columns.get("first", ())), _cell(row, columns.get("last", ()))) if part)
    if not external_id or not name:
        result.problems.append(RowProblem(line, "needs an id and a name"))
        return None
    if any(ord(ch) < 32 for ch in external_id + name):
        result.problems.append(RowProblem(line, "the id or name holds control characters"))
        return None
    who = role or (profile.role(row) if profile.role else None)
    if who is None:
        result.problems.append(RowProblem(
            line, f"{name}: cannot tell whether a pupil or staff (import the file with a role for every row)"))
        return None
    email = _cell(row, columns.get("email", ())) or None
    if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email):
        email = None
    groups_text = _cell(row, columns.get("groups", ()))
    if profile.name == "google":  # the unit path's last part is the class or team: /Pupils/Year 5/5B
        groups_text = groups_text.rstrip("/").rsplit("/", 1)[-1]
    groups = tuple(g.strip() for g in groups_text.split(",") if g.strip())[:20]
    year = year_group(_cell(row, columns.get("year", ()))) if who == "pupil" else None
    return DirectoryPerson(line, external_id[:100], name[:200], email[:200] if email else None, who, year,
                           groups, _active(row))
