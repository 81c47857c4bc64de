"""The audit log: append-only and hash-chained, one chain per site.

Each entry's ``hash`` is sha256 over the canonical JSON of its own fields (site, seq, time,
actor, action, object, detail) and the previous entry's hash, so that editing, deleting,
inserting or reordering a row breaks the chain at that row. ``seq`` numbers a site's chain
from 1 without gaps, and the ``generations`` row ``audit_log`` counts the entries ever
appended, so that cutting entries off the end is noticed too.

A hash chain proves the log was not changed by anyone who does not also recompute every
later hash and the counter; it is a tamper-evidence seal for the console, not a signature.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from schoolgate.store.coltypes import utcnow
from schoolgate.store.models import AuditEntry, Generation
from schoolgate.store.overlay import bump_generation, read_generation

GENESIS = "0" * 64
COUNTER = "audit_log"  # the generations row counting a site's entries


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat() if value.tzinfo else value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"audit detail value {value!r} ({type(value).__name__}) is not JSON")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def entry_hash(
    *,
    site: str,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object_type: str,
    object_id: str,
    detail: str,
    prev_hash: str,
) -> str:
    """sha256 of the canonical JSON of an entry's fields and the previous hash."""
    fields = {
        "site": site,
        "seq": seq,
        "at": _timestamp(at),
        "actor": actor,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(canonical_json(fields).encode("utf-8")).hexdigest()


class _ChainRow(Protocol):
    id: int
    site: str
    seq: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    detail: str
    prev_hash: str
    hash: str


_CHAIN_COLUMNS = (
    AuditEntry.id,
    AuditEntry.site,
    AuditEntry.seq,
    AuditEntry.at,
    AuditEntry.actor,
    AuditEntry.action,
    AuditEntry.object_type,
    AuditEntry.object_id,
    AuditEntry.detail,
    AuditEntry.prev_hash,
    AuditEntry.hash,
)


def _hash_of(row: _ChainRow) -> str:
    return entry_hash(
        site=row.site,
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        object_type=row.object_type,
        object_id=row.object_id,
        detail=row.detail,
        prev_hash=row.prev_hash,
    )


def _lock_chain(session: Session, site: str) -> int:
    """Serialise appends to the site's chain; returns the new entry count.

    Bumping the counter row is the lock: an UPDATE takes SQLite's write lock (already held
    under BEGIN IMMEDIATE) and a row lock on PostgreSQL, held until the caller commits.
    """
    return bump_generation(session, site, COUNTER)


def record(
    session: Session,
    *,
    site: str,
    actor: str,
    action: str,
    object_type: str,
    object_id: str | int | None,
    detail: Mapping[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Append an entry to the site's chain in the caller's session (the caller commits).

    Use a write session: on SQLite it must have started with BEGIN IMMEDIATE (the default
    of schoolgate.store.db sessions) so that concurrent appends queue up instead of failing.
    """
    if at is not None and at.tzinfo is None:
        raise ValueError("audit.record needs an aware datetime for `at`")
    count = _lock_chain(session, site)
    last = session.execute(
        select(AuditEntry).where(AuditEntry.site == site).order_by(AuditEntry.seq.desc()).limit(1)
    ).scalar_one_or_none()
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS if last is None else last.hash
    when = (at or utcnow()).astimezone(UTC)
    detail_text = canonical_json(dict(detail or {}))
    oid = "" if object_id is None else str(object_id)
    entry = AuditEntry(
        site=site,
        seq=seq,
        at=when,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=oid,
        detail=detail_text,
        prev_hash=prev,
    )
    entry.hash = _hash_of(entry)
    if count < seq:  # the counter was lost or reset: never let it claim fewer than exist
        session.execute(
            update(Generation)
            .where(Generation.site == site, Generation.name == COUNTER)
            .values(value=seq)
            .execution_options(synchronize_session=False)
        )
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int  # entries looked at
    recorded: int  # entries the counter says were appended
    broken_seq: int | None = None  # first broken position in the chain
    broken_id: int | None = None  # its row id, when the row exists
    reason: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"audit chain intact: {self.checked} {'entry' if self.checked == 1 else 'entries'}"
        where = f"entry {self.broken_seq}" if self.broken_seq is not None else "the chain"
        if self.broken_id is not None:
            where += f" (row id {self.broken_id})"
        return f"audit chain broken at {where}: {self.reason}"


def verify(session: Session, site: str, *, batch: int = 5000) -> VerifyResult:
    """Walk the site's chain from the start; name the first row that does not fit."""
    recorded = read_generation(session, site, COUNTER)
    expected_seq = 1
    prev_hash = GENESIS
    prev_id = 0
    checked = 0
    last_seq = 0
    while True:
        # Plain column rows, not ORM objects: a long chain does not fill the session.
        rows: Sequence[Any] = session.execute(
            select(*_CHAIN_COLUMNS)
            .where(AuditEntry.site == site, AuditEntry.seq > last_seq)
            .order_by(AuditEntry.seq)
            .limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            checked += 1
            broken = _check_row(row, expected_seq, prev_hash, prev_id)
            if broken:
                return VerifyResult(False, checked, recorded, row.seq, row.id, broken)
            expected_seq += 1
            prev_hash = row.hash
            prev_id = row.id
            last_seq = row.seq
    if checked < recorded:
        return VerifyResult(
            False,
            checked,
            recorded,
            checked + 1,
            None,
            f"missing: {recorded} entries were appended but the chain ends at entry {checked} (deleted from the end)",
        )
    if checked > recorded:
        return VerifyResult(
            False,
            checked,
            recorded,
            recorded + 1,
            None,
            f"{checked} entries in the chain but only {recorded} were appended (inserted at the end)",
        )
    return VerifyResult(True, checked, recorded)


def _check_row(row: _ChainRow, expected_seq: int, prev_hash: str, prev_id: int) -> str:
    if row.seq != expected_seq:
        return f"expected entry {expected_seq} but found {row.seq}: entries are missing (deleted)"
    if row.prev_hash != prev_hash:
        return (
            "its prev_hash does not match the hash of the entry before it "
            "(an entry before it was deleted, inserted, reordered or rewritten)"
        )
    if _hash_of(row) != row.hash:
        return "its contents do not match its hash (edited)"
    if row.id <= prev_id:
        return f"row id {row.id} comes after row id {prev_id} in the chain (reordered)"
    return ""
