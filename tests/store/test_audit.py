"""The hash-chained audit log: every kind of tampering is caught at the first broken row."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.cli import main
from schoolgate.store import audit
from schoolgate.store.models import AuditEntry, Generation

SITE = "testschool"
OTHER = "otherschool"
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
ENTRIES = 6


def fill(sessions: sessionmaker[Session], site: str = SITE, n: int = ENTRIES) -> None:
    with sessions.begin() as session:
        for i in range(1, n + 1):
            audit.record(
                session,
                site=site,
                actor=f"tech{i}",
                action="exception.create",
                object_type="exception",
                object_id=i,
                detail={"domain": f"site{i}.example", "until": T0 + timedelta(days=i), "tags": {"b", "a"}},
                at=T0 + timedelta(minutes=i),
            )


def row(session: Session, seq: int, site: str = SITE) -> AuditEntry:
    return session.scalars(select(AuditEntry).where(AuditEntry.site == site, AuditEntry.seq == seq)).one()


def forged_hash(entry: AuditEntry) -> str:
    return audit.entry_hash(
        site=entry.site,
        seq=entry.seq,
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        object_type=entry.object_type,
        object_id=entry.object_id,
        detail=entry.detail,
        prev_hash=entry.prev_hash,
    )


# -- tampering, each as an attacker with write access to the database would do it


def edit_actor(s: Session) -> None:
    row(s, 3).actor = "someone-else"


def edit_detail(s: Session) -> None:
    row(s, 3).detail = '{"domain":"evil.example"}'


def edit_time(s: Session) -> None:
    row(s, 3).at = row(s, 3).at + timedelta(seconds=1)


def edit_and_rehash(s: Session) -> None:
    entry = row(s, 3)
    entry.actor = "someone-else"
    entry.hash = forged_hash(entry)


def delete_middle(s: Session) -> None:
    s.delete(row(s, 3))


def delete_first(s: Session) -> None:
    s.delete(row(s, 1))


def delete_last(s: Session) -> None:
    s.delete(row(s, ENTRIES))


def renumber_after_delete(s: Session) -> None:
    s.delete(row(s, 3))
    s.flush()
    for seq in range(4, ENTRIES + 1):
        row(s, seq).seq = seq - 1
        s.flush()


def insert_at_end(s: Session) -> None:
    last = row(s, ENTRIES)
    entry = AuditEntry(
        site=SITE,
        seq=ENTRIES + 1,
        at=last.at + timedelta(minutes=1),
        actor="intruder",
        action="exception.create",
        object_type="exception",
        object_id="99",
        detail="{}",
        prev_hash=last.hash,
    )
    entry.hash = forged_hash(entry)
    s.add(entry)


def insert_in_middle(s: Session) -> None:
    for seq in range(ENTRIES, 2, -1):  # make room at 3, from the top to keep seq unique
        row(s, seq).seq = seq + 1
        s.flush()
    entry = AuditEntry(
        site=SITE,
        seq=3,
        at=T0,
        actor="intruder",
        action="exception.create",
        object_type="exception",
        object_id="99",
        detail="{}",
        prev_hash=row(s, 2).hash,
    )
    entry.hash = forged_hash(entry)
    s.add(entry)
    s.execute(update(Generation).where(Generation.site == SITE).values(value=ENTRIES + 1))


def swap_positions(s: Session) -> None:
    a, b = row(s, 2), row(s, 3)
    a.seq = -1
    s.flush()
    b.seq = 2
    s.flush()
    a.seq = 3


def swap_row_ids(s: Session) -> None:
    a, b = row(s, 2), row(s, 3)
    ida, idb = a.id, b.id
    s.execute(update(AuditEntry).where(AuditEntry.id == ida).values(id=-1))
    s.execute(update(AuditEntry).where(AuditEntry.id == idb).values(id=ida))
    s.execute(update(AuditEntry).where(AuditEntry.id == -1).values(id=idb))


def break_prev_link(s: Session) -> None:
    row(s, 4).prev_hash = "f" * 64


@dataclass(frozen=True)
class Case:
    name: str
    tamper: Callable[[Session], None]
    broken_seq: int
    reason: str


CASES = [
    Case("edit actor", edit_actor, 3, "edited"),
    Case("edit detail", edit_detail, 3, "edited"),
    Case("edit time", edit_time, 3, "edited"),
    Case("edit and recompute its hash", edit_and_rehash, 4, "prev_hash"),
    # A deleted row cannot be named: the first row that no longer fits is the one after it.
    Case("delete a middle row", delete_middle, 4, "expected entry 3 but found 4"),
    Case("delete the first row", delete_first, 2, "expected entry 1 but found 2"),
    Case("delete the last row", delete_last, ENTRIES, "deleted from the end"),
    Case("delete and renumber", renumber_after_delete, 3, "prev_hash"),
    Case("insert at the end", insert_at_end, ENTRIES + 1, "inserted at the end"),
    Case("insert in the middle", insert_in_middle, 4, "prev_hash"),
    Case("swap two rows' positions", swap_positions, 2, "prev_hash"),
    Case("swap two rows' ids", swap_row_ids, 3, "reordered"),
    Case("break a prev link", break_prev_link, 4, "prev_hash"),
]


def test_an_untouched_chain_verifies(sessions: sessionmaker[Session]) -> None:
    fill(sessions)
    with sessions() as session:
        result = audit.verify(session, SITE)
    assert result.ok, result.describe()
    assert result.checked == result.recorded == ENTRIES
    assert "intact" in result.describe()


def test_an_empty_chain_verifies(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert audit.verify(session, SITE).ok


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_tampering_is_detected_at_the_first_broken_row(sessions: sessionmaker[Session], case: Case) -> None:
    fill(sessions)
    fill(sessions, OTHER)
    with sessions.begin() as session:
        case.tamper(session)
    with sessions() as session:
        result = audit.verify(session, SITE)
        assert audit.verify(session, SITE, batch=2) == result  # the same across read batches
        assert audit.verify(session, OTHER).ok  # chains are per site
    assert not result.ok
    assert result.broken_seq == case.broken_seq, result.describe()
    assert case.reason in result.reason, result.describe()
    assert f"entry {case.broken_seq}" in result.describe()


def test_the_stored_rows_carry_the_chain(sessions: sessionmaker[Session]) -> None:
    fill(sessions, n=3)
    with sessions() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.seq)).all()
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == audit.GENESIS
    assert rows[1].prev_hash == rows[0].hash
    assert rows[2].prev_hash == rows[1].hash
    assert rows[0].detail == ('{"domain":"site1.example","tags":["a","b"],"until":"2026-11-24T09:00:00+00:00"}')


def test_details_that_are_not_json_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(TypeError, match="not JSON"), sessions.begin() as session:
        audit.record(session, site=SITE, actor="a", action="b", object_type="c", object_id=1, detail={"x": object()})


def test_concurrent_appends_from_several_connections_form_one_chain(engine: Engine) -> None:
    from schoolgate.store.db import session_factory

    errors: list[BaseException] = []
    per_thread, threads_n = 15, 4

    def append(k: int) -> None:
        factory = session_factory(engine)
        try:
            for i in range(per_thread):
                with factory.begin() as session:
                    audit.record(session, site=SITE, actor=f"t{k}", action="x", object_type="o", object_id=i)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=append, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with session_factory(engine)() as session:
        result = audit.verify(session, SITE)
        seqs = session.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)).all()
    assert result.ok, result.describe()
    assert seqs == list(range(1, per_thread * threads_n + 1))


def test_a_rolled_back_append_leaves_no_trace(sessions: sessionmaker[Session]) -> None:
    fill(sessions, n=2)
    with sessions() as session:
        audit.record(session, site=SITE, actor="a", action="b", object_type="c", object_id=1)
        session.rollback()
    with sessions() as session:
        result = audit.verify(session, SITE)
    assert result.ok and result.checked == 2


def test_audit_verify_cli(
    config_file: Path, sessions: sessionmaker[Session], capsys: pytest.CaptureFixture[str]
) -> None:
    fill(sessions)
    assert main(["audit", "verify", "--config", str(config_file)]) == 0
    assert "intact: 6 entries" in capsys.readouterr().out
    with sessions.begin() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq == 2))
    assert main(["audit", "verify", "--config", str(config_file)]) == 1
    assert "broken at entry 3" in capsys.readouterr().err
    assert main(["audit", "verify", "--config", str(config_file), "--site", OTHER]) == 0


def test_raw_sql_edit_is_caught(sessions: sessionmaker[Session]) -> None:
    fill(sessions)
    with sessions.begin() as session:
        session.execute(text("UPDATE audit_log SET object_id = '7' WHERE seq = 5"))
    with sessions() as session:
        result = audit.verify(session, SITE)
    assert (result.ok, result.broken_seq) == (False, 5)


def test_a_cut_tail_stays_visible_after_later_appends(sessions: sessionmaker[Session]) -> None:
    fill(sessions)
    with sessions.begin() as session:
        session.execute(delete(AuditEntry).where(AuditEntry.seq >= 5))
    with sessions.begin() as session:
        audit.record(session, site=SITE, actor="a", action="b", object_type="c", object_id=1)
    with sessions() as session:
        result = audit.verify(session, SITE)
    assert not result.ok
    assert "7 entries were appended but the chain ends at entry 5" in result.reason


def test_naive_times_are_refused(sessions: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="aware"), sessions.begin() as session:
        audit.record(session, site=SITE, actor="a", action="b", object_type="c", object_id=1, at=datetime(2026, 1, 1))
