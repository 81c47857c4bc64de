"""No database transaction is open while the console hashes a password.

It used to be: a POST opened its transaction (on SQLite, BEGIN IMMEDIATE: the write lock) when
it loaded the signed-in user, then checked and hashed passwords inside it. 117 wrong
password-change attempts in 20 s held the lock so long that requests failed with HTTP 500 and
the DNS and proxy daemons could not write or pick up policy changes. Two tests:

- on SQLite and PostgreSQL, every Argon2 call the console makes, on every page that makes one,
  finds no transaction of the console's open (checked from outside, during the call);
- on SQLite, the appliance's database, password changes are hammered from several browsers
  while another process commits the way the event writer does, with a lock timeout of one
  password hash measured in this run: the time any commit would wait if a hash held the lock.
  Every commit must succeed within it.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from console_testkit import (
    PASSWORD,
    Console,
    SpyHasher,
    build_console,
    csrf_from,
    hidden_fields,
    password_hash,
    post_form,
    seed,
    totp_now,
)
from sqlalchemy import text

from schoolgate.console import accounts
from schoolgate.services.permissions import ConsoleRole
from schoolgate.store.db import DEFAULT_BUSY_TIMEOUT_MS


def _open_transactions_checker(console: Console) -> Callable[[], str | None]:
    """A check, made from outside the console, that it holds no transaction right now."""
    if console.extra["backend"] == "sqlite":
        path = console.config.database_url.removeprefix("sqlite:///")

        def sqlite_free() -> str | None:
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")  # fails at once if anyone holds the write lock
                other.execute("ROLLBACK")
                return None
            except sqlite3.OperationalError as err:
                return str(err)
            finally:
                other.close()

        return sqlite_free
    engine = console.factory.kw["bind"]
    from sqlalchemy import create_engine

    outside = create_engine(engine.url)

    def postgres_free() -> str | None:
        with outside.connect() as conn:
            states = conn.execute(text(
                "SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")).scalars().all()
        return f"console connections {states}" if states else None

    return postgres_free


def test_no_transaction_is_open_during_any_password_hash(console: Console, monkeypatch: Any) -> None:
    ids = seed(console)
    check = _open_transactions_checker(console)
    problems: list[str] = []
    where: list[str] = ["setup"]

    def before(kind: str) -> None:
        problem = check()
        if problem is not None:
            problems.append(f"{where[0]}: {kind} with a transaction open ({problem})")

    # An account whose hash has older parameters, so signing in rehashes it too.
    with console.session() as session:
        weak = PasswordHasher(time_cost=1, memory_cost=8192).hash(PASSWORD)
        accounts.create_user(session, username="oldhash", display_name="Old Hash", site="kingswood",
                             roles=frozenset({ConsoleRole.TECHNICIAN}), password_hash=weak)
        session.commit()
    spy = SpyHasher(accounts._HASHER, before)
    monkeypatch.setattr(accounts, "_HASHER", spy)

    where[0] = "sign-in"
    technician = console.login("technician")
    console.client().post("/login", data={"username": "nobody", "password": "x"})  # no CSRF: refused, no hash
    oldhash = console.client()
    token = csrf_from(oldhash.get("/login").get_data(as_text=True))
    assert oldhash.post("/login", data={"csrf_token": token, "username": "oldhash",
                                        "password": PASSWORD}).status_code == 302
    where[0] = "change password"
    for current in ("wrong current password", PASSWORD):
        post_form(technician, "/account", "/account/password", {
            "current_password": current, "new_password": "a brand new passphrase",
            "confirm_password": "a brand new passphrase"})
    where[0] = "second factor"
    dsl = console.login("dsl")
    page = dsl.get("/account/totp").get_data(as_text=True)
    post_form(dsl, "/account/totp", "/account/totp", {"current_password": PASSWORD, "current_code": "000000",
                                                      "code": "000000"})
    assert page
    where[0] = "signature"
    head = console.login("headteacher")
    url = f"/requests/{ids['request']}"
    post_form(head, url, f"{url}/decide", {"decision": "decline", "reasons": "no", "signer_name": "H",
                                           "password": PASSWORD,
                                           "code": totp_now(console.accounts["headteacher"].totp_secret or "",
                                                            console.clock)})
    where[0] = "accounts admin"
    admin = console.login("admin")
    post_form(admin, "/users/new", "/users/new", {"username": "newtech", "display_name": "New", "roles": "technician"})
    victim = ids["user"]
    post_form(admin, f"/users/{victim}", f"/users/{victim}/reset-password", {})

    kinds = set(spy.calls)
    assert kinds == {"verify", "hash"} and len(spy.calls) >= 10, spy.calls
    assert problems == []


WRITER = textwrap.dedent("""
    import json, os, sqlite3, sys, time
    path, lock_timeout, stop_file, max_seconds = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
    db = sqlite3.connect(path, timeout=lock_timeout, isolation_level=None)
    db.execute("PRAGMA busy_timeout=%d" % int(lock_timeout * 1000))
    db.execute("INSERT OR IGNORE INTO generations (site, name, value, changed_at) "
               "VALUES ('kingswood', 'slow_step_probe', 0, '2026-11-23 10:35:00.000000')")
    print("ready", flush=True)
    waits, errors, end = [], [], time.monotonic() + max_seconds
    while not os.path.exists(stop_file) and time.monotonic() < end:
        started = time.perf_counter()
        try:
            # As the event writer and an overlay bump do: take the write lock, write, commit.
            db.execute("BEGIN IMMEDIATE")
            db.execute("UPDATE generations SET value = value + 1 WHERE site = 'kingswood' AND name = 'slow_step_probe'")
            db.execute("COMMIT")
        except sqlite3.OperationalError as err:
            errors.append(str(err))
            if db.in_transaction:
                db.execute("ROLLBACK")
        waits.append(time.perf_counter() - started)
        time.sleep(0.005)
    print(json.dumps({"waits": waits, "errors": errors}), flush=True)
""")


def test_hammered_password_changes_never_hold_the_write_lock(
    tmp_path: Path, console_template: Any, monkeypatch: Any
) -> None:
    """On SQLite only: its single write lock is what stalled the appliance (PostgreSQL locks
    rows; the test above covers it).

    The other writer has the appliance's lock timeout (store.db's busy timeout): no commit may
    fail. And no commit may wait as long as one password hash takes meanwhile (the median of
    the hashes the console made during the run, under the same load): a commit that waited
    that long was waiting for a hash done holding the lock."""
    console = build_console(tmp_path, console_template)
    spy = SpyHasher(accounts._HASHER)
    monkeypatch.setattr(accounts, "_HASHER", spy)
    browsers = 4
    changes_each = 6
    clients = []
    with console.session() as session:
        for number in range(browsers):
            accounts.create_user(session, username=f"hammer{number}", display_name=f"Hammer {number}",
                                 site="kingswood", roles=frozenset({ConsoleRole.TECHNICIAN}),
                                 password_hash=password_hash())
        session.commit()
    for number in range(browsers):
        client = console.client()
        client.environ_base["REMOTE_ADDR"] = f"10.41.10.{100 + number}"
        token = csrf_from(client.get("/login").get_data(as_text=True))
        assert client.post("/login", data={"csrf_token": token, "username": f"hammer{number}",
                                           "password": PASSWORD}).status_code == 302
        clients.append(client)
    spy.seconds.clear()

    stop = tmp_path / "stop"
    lock_timeout = DEFAULT_BUSY_TIMEOUT_MS / 1000
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, console.config.database_url.removeprefix("sqlite:///"), f"{lock_timeout:.3f}",
         str(stop), "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        statuses: list[int] = []
        passwords = [PASSWORD, "an alternative long passphrase"]

        def hammer(client: Any) -> None:
            for change in range(changes_each):
                page = client.get("/account").get_data(as_text=True)
                response = client.post("/account/password", data={
                    "csrf_token": csrf_from(page), **hidden_fields(page, "/account/password"),
                    "current_password": passwords[change % 2], "new_password": passwords[(change + 1) % 2],
                    "confirm_password": passwords[(change + 1) % 2]})
                statuses.append(response.status_code)

        threads = [threading.Thread(target=hammer, args=(client,)) for client in clients]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        hammered = time.perf_counter() - started
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=120)
    result = json.loads(out.strip().splitlines()[-1])
    waits = result["waits"]
    one_hash = statistics.median(spy.seconds)
    print(f"{len(spy.seconds)} hashes, median {one_hash * 1000:.0f} ms; {len(statuses)} password changes in "
          f"{hammered:.1f} s; {len(waits)} commits, longest {max(waits) * 1000:.0f} ms, "
          f"median {statistics.median(waits) * 1000:.1f} ms")
    assert statuses == [302] * (browsers * changes_each), statuses
    assert result["errors"] == [], result["errors"][:3]
    assert len(spy.seconds) == 2 * browsers * changes_each  # each change: check the old, hash the new
    assert len(waits) >= 10, "the writer hardly ran while the passwords were changed"
    assert max(waits) < one_hash, (max(waits), one_hash)
