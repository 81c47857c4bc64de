"""Importing people, classes and year groups from the school's directory: preview, then apply.

A technician uploads an export (Google Workspace, Entra ID / School Data Sync, an MIS export);
`preview` reads it (schoolgate.identity.directory), compares it with the people register and
keeps the file and the list of changes as a `DirectoryImport`: who will be added, whose name,
role, year group, classes or e-mail will change, who will be marked as left (only when asked,
and only people of the roles the file covers). Nothing changes until `apply`, which works
out the changes again and refuses if they are no longer the ones shown (the register changed
in between): what is applied is exactly what was previewed. Both steps are audited.

Roles: a directory makes people pupils, staff or guests. It never makes anyone "authorised"
(the headteacher does that, seed 001 §3), and someone the headteacher has authorised stays
so while the directory calls them staff.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.identity.directory import DirectoryFile, DirectoryFormatError, DirectoryPerson, parse_directory
from schoolgate.identity.exports import ExportError, decode_export
from schoolgate.services.actor import Actor
from schoolgate.services.common import audit, bump_overlay, on_site
from schoolgate.services.errors import InvalidInput, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.store.models import DirectoryImport, Person

MAX_BYTES = 10 * 1024 * 1024
FIELDS = ("name", "role", "year_group", "groups", "email", "active")
AUTHORISED = "authorised"


@dataclass(frozen=True)
class Change:
    kind: str  # add, update, leave, conflict
    external_id: str
    name: str
    line: int | None  # the file's line (None: a leaver, not in the file)
    fields: dict[str, list[Any]]  # field -> [before, after]
    note: str = ""


def _groups_text(groups: tuple[str, ...]) -> str:
    return ",".join(groups)[:500]


def _wanted(person: DirectoryPerson, existing: Person | None) -> dict[str, Any]:
    role = person.role
    if existing is not None and existing.role == AUTHORISED and role == "staff":
        role = AUTHORISED  # the headteacher's authorisation outlives a directory that says "staff"
    return {"name": person.name, "role": role, "year_group": person.year_group,
            "groups": _groups_text(person.groups), "email": person.email, "active": person.active}


def compute_changes(session: Session, site: str, parsed: DirectoryFile, *, mark_leavers: bool) -> list[Change]:
    people = list(session.scalars(select(Person).where(on_site(Person.site, site))))
    by_id = {p.external_id: p for p in people}
    by_email = {p.email.lower(): p for p in people if p.email}
    changes: list[Change] = []
    seen: dict[str, int] = {}
    for person in parsed.people:
        if person.external_id in seen:
            changes.append(Change("conflict", person.external_id, person.name, person.line, {},
                                  f"the same id is on line {seen[person.external_id]}"))
            continue
        seen[person.external_id] = person.line
        existing = by_id.get(person.external_id)
        if existing is None:
            other = by_email.get(person.email.lower()) if person.email else None
            if other is not None:
                changes.append(Change("conflict", person.external_id, person.name, person.line, {},
                                      f"{person.email} is already {other.name} ({other.external_id})"))
                continue
            wanted = _wanted(person, None)
            changes.append(Change("add", person.external_id, person.name, person.line,
                                  {k: [None, v] for k, v in wanted.items()}))
            continue
        diff = {k: [getattr(existing, k), v] for k, v in _wanted(person, existing).items()
                if (getattr(existing, k) or None) != (v or None) and not (k == "active" and getattr(existing, k) == v)}
        if diff:
            changes.append(Change("update", person.external_id, person.name, person.line, diff))
    if mark_leavers:
        covered = {p.role for p in parsed.people}
        for existing in people:
            role = "staff" if existing.role == AUTHORISED else existing.role
            if existing.active and existing.external_id not in seen and role in covered:
                changes.append(Change("leave", existing.external_id, existing.name, None, {"active": [True, False]},
                                      f"not in the file, which lists {', '.join(sorted(covered))}"))
    return changes


def _fingerprint(changes: list[Change]) -> str:
    text = json.dumps([asdict(c) for c in changes], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def summarise(changes: list[Change], parsed: DirectoryFile) -> dict[str, Any]:
    counts = {kind: sum(1 for c in changes if c.kind == kind) for kind in ("add", "update", "leave", "conflict")}
    return {**counts, "rows": len(parsed.people), "problems": len(parsed.problems), "format": parsed.title}


def read_upload(data: bytes, *, what: str = "the file") -> tuple[str, str]:
    if len(data) > MAX_BYTES:
        raise InvalidInput(f"The file is larger than {MAX_BYTES // (1024 * 1024)} MB.", field="file")
    try:
        return decode_export(data, what=what)
    except ExportError as err:
        raise InvalidInput(str(err).capitalize() + ".", field="file") from err


def preview(
    session: Session, *, site: str, now: datetime, actor: Actor, data: bytes, filename: str,
    profile: str = "auto", role: str | None = None, mark_leavers: bool = False,
) -> DirectoryImport:
    """Read an export and record what importing it would change; changes nothing else."""
    actor.require(Permission.EDIT_REGISTERS, doing="import the school's directory")
    text, encoding = read_upload(data, what=filename or "the file")
    try:
        parsed = parse_directory(text, profile=profile, role=role)
    except DirectoryFormatError as err:
        raise InvalidInput(str(err), field="file") from err
    changes = compute_changes(session, site, parsed, mark_leavers=mark_leavers)
    row = DirectoryImport(
        site=site, status="preview", filename=filename[:255], sha256=hashlib.sha256(data).hexdigest(),
        format=parsed.format, encoding=encoding[:20], content=text,
        options=json.dumps({"profile": profile, "role": role, "mark_leavers": mark_leavers}),
        summary=json.dumps({**summarise(changes, parsed), "fingerprint": _fingerprint(changes),
                            "problem_lines": [[p.line, p.message] for p in parsed.problems][:500]}),
        changes=json.dumps([asdict(c) for c in changes], default=str),
        created_by=actor.name, created_at=now,
    )
    session.add(row)
    session.flush()
    audit(session, site=site, actor=actor, action="directory.preview", object_type="directory_import",
          object_id=row.id, detail={"file": row.filename, "sha256": row.sha256, "format": row.format,
                                    **summarise(changes, parsed)}, now=now)
    return row


def get_import(session: Session, site: str, import_id: int) -> DirectoryImport:
    row = session.get(DirectoryImport, import_id)
    if row is None or row.site != site:
        raise NotFound(f"There is no directory import {import_id}.")
    return row


def list_imports(session: Session, site: str, limit: int = 50) -> list[DirectoryImport]:
    return list(session.scalars(select(DirectoryImport).where(DirectoryImport.site == site)
                                .order_by(DirectoryImport.id.desc()).limit(limit)))


def apply(session: Session, *, site: str, now: datetime, actor: Actor, import_id: int) -> dict[str, Any]:
    """Make the previewed changes, exactly those, in the caller's transaction."""
    actor.require(Permission.EDIT_REGISTERS, doing="import the school's directory")
    row = get_import(session, site, import_id)
    if row.status != "preview":
        raise InvalidInput(f"This import was {row.status} already.")
    options = json.loads(row.options)
    parsed = parse_directory(row.content, profile=options["profile"], role=options["role"])
    changes = compute_changes(session, site, parsed, mark_leavers=options["mark_leavers"])
    if _fingerprint(changes) != json.loads(row.summary)["fingerprint"]:
        raise InvalidInput("The people register has changed since this preview. Preview the file again.")
    people = {p.external_id: p for p in session.scalars(select(Person).where(on_site(Person.site, site)))}
    for change in changes:
        if change.kind == "add":
            values = {k: after for k, (_before, after) in change.fields.items()}
            session.add(Person(site=site, external_id=change.external_id, created_at=now, **values))
        elif change.kind in ("update", "leave"):
            person = people[change.external_id]
            for name, (_before, after) in change.fields.items():
                setattr(person, name, after)
    session.flush()
    row.status, row.applied_by, row.applied_at = "applied", actor.name, now
    summary = {k: v for k, v in json.loads(row.summary).items() if k not in ("fingerprint", "problem_lines")}
    audit(session, site=site, actor=actor, action="directory.apply", object_type="directory_import",
          object_id=row.id, detail={"file": row.filename, "sha256": row.sha256, **summary,
                                    "people": [c.external_id for c in changes if c.kind != "conflict"][:200]},
          now=now)
    if any(c.kind != "conflict" for c in changes):
        bump_overlay(session, site=site, now=now)
    return summary


def discard(session: Session, *, site: str, now: datetime, actor: Actor, import_id: int) -> None:
    actor.require(Permission.EDIT_REGISTERS, doing="import the school's directory")
    row = get_import(session, site, import_id)
    if row.status == "preview":
        row.status = "discarded"
        audit(session, site=site, actor=actor, action="directory.discard", object_type="directory_import",
              object_id=row.id, detail={"file": row.filename}, now=now)


def changes_of(row: DirectoryImport) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = json.loads(row.changes)
    return loaded
