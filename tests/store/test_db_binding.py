"""sqlite3 binds None as NULL without looking for an adapter (store.db.bind_none_directly)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from schoolgate.store.db import bind_none_directly, make_engine


def test_an_engine_registers_the_direct_binding_of_none(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        adapter = sqlite3.adapters.get((type(None), sqlite3.PrepareProtocol))
        assert adapter is not None
        assert adapter(None) is None
    finally:
        engine.dispose()


def test_none_is_still_stored_as_null_and_other_values_as_they_were(tmp_path: Path) -> None:
    bind_none_directly()
    bind_none_directly()  # twice is once
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    values = [None, 0, "", "None", 1.5, b"\x00"]
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (n INTEGER, v)")
            connection.exec_driver_sql("INSERT INTO t VALUES (?, ?)", [(n, v) for n, v in enumerate(values)])
            connection.execute(text("INSERT INTO t VALUES (:n, :v)"), [{"n": 10, "v": None}])
        with engine.connect() as connection:
            stored = connection.exec_driver_sql("SELECT n, v, typeof(v) FROM t ORDER BY n").all()
        assert [(n, v) for n, v, _ in stored] == [*enumerate(values), (10, None)]
        assert [kind for _, _, kind in stored] == ["null", "integer", "text", "text", "real", "blob", "null"]
    finally:
        engine.dispose()
