"""`schoolgate backup` / `restore`: a consistent copy taken while a writer inserts, restored intact.

The database has the real schema (alembic head) and a writer thread commits events one by one
throughout the backup. The restored database must be exactly the source as of one commit: every
table's rows and content hash equal, and the events a gap-free prefix of what the writer wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from schoolgate import backup
from schoolgate.backup import BackupError
from schoolgate.config import AppConfig, DatabaseConfig, load_config

REPO = Path(__file__).resolve().parents[2]
SITE = "kingswood"
HISTORY = 10_000
APPLIANCE_TOML = f"""policy = "policy.toml"
data_dir = "../var"

[site]
id = "{SITE}"
name = "Kingswood Primary School"
"""


def make_appliance(base: Path) -> AppConfig:
    """An appliance layout: etc/ (config, policy, lists) and var/ (data), like /etc + /var/lib."""
    etc = base / "etc"
    etc.mkdir(parents=True)
    (etc / "schoolgate.toml").write_text(APPLIANCE_TOML)
    shutil.copy(REPO / "deploy/policy.example.toml", etc / "policy.toml")
    if (REPO / "deploy/lists").is_dir():
        shutil.copytree(REPO / "deploy/lists", etc / "lists")
    return load_config(etc / "schoolgate.toml")


def table_hashes(path: Path) -> dict[str, tuple[int, str]]:
    """table -> (row count, sha256 over its rows in a stable order)."""
    conn = sqlite3.connect(path)
    try:
        result = {}
        for (table,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ):
            digest = hashlib.sha256()
            rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            for row in sorted(rows, key=repr):
                digest.update(repr(row).encode())
            result[table] = (len(rows), digest.hexdigest())
        return result
    finally:
        conn.close()


def event(n: int) -> dict[str, object]:
    return {
        "site": SITE,
        "ts": dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC) + dt.timedelta(seconds=n),
        "source": "dns",
        "client_ip": f"10.41.{n // 250 % 250}.{n % 250 + 1}",
        "role": "pupil",
        "host": f"site{n}.example",
        "verdict": "block" if n % 3 == 0 else "allow",
        "rule_id": "r1",
        "url": f"https://site{n}.example/?q=<script>{n}</script>",
    }


class Writer(threading.Thread):
    """Commits one event per transaction until stopped, as a daemon's event flush would."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.committed = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.progress = threading.Condition()

    def run(self) -> None:
        from schoolgate.store.db import make_engine, session_factory
        from schoolgate.store.models import AccessEvent

        engine = make_engine(self.url)
        sessions = session_factory(engine)
        try:
            n = 0
            while not self.stop_event.is_set() and n < 200_000:
                with sessions() as session:
                    session.add(AccessEvent(**event(n)))  # type: ignore[arg-type]
                    session.commit()
                n += 1
                with self.progress:
                    self.committed = n
                    self.progress.notify_all()
        except BaseException as err:
            self.error = err
        finally:
            engine.dispose()

    def wait_for(self, count: int, timeout: float = 60) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.committed >= count or self.error is not None, timeout)
        assert self.error is None, self.error


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An appliance with a schema, people, a term of history and a CA; built once, copied per test."""
    from sqlalchemy import insert

    from schoolgate.ca import init_ca
    from schoolgate.store.db import init_db, make_engine, session_factory
    from schoolgate.store.models import AccessEvent, Person, Site

    base = tmp_path_factory.mktemp("backup-template")
    config = make_appliance(base / "school")
    engine = make_engine(config.database_url)
    init_db(engine)
    with session_factory(engine)() as session:
        session.add(Site(id=SITE, name="Kingswood Primary School"))
        session.flush()
        for i in range(50):
            session.add(Person(site=SITE, external_id=f"upn{i:04}", name=f"Pupil {i}", role="pupil", year_group=i % 7))
        # A term's worth of history, so that copying the database takes a while.
        session.execute(insert(AccessEvent), [event(n) for n in range(HISTORY)])
        session.commit()
    engine.dispose()
    init_ca(config.data_dir / "ca", school_name="Kingswood Primary School")
    (config.data_dir / "console-secret").write_text("s" * 64 + "\n")
    (config.data_dir / "console-secret").chmod(0o600)
    return base / "school"


@pytest.fixture
def appliance(template: Path, tmp_path: Path) -> AppConfig:
    shutil.copytree(template, tmp_path / "school", symlinks=True)
    return load_config(tmp_path / "school" / "etc" / "schoolgate.toml")


@pytest.fixture
def fresh(tmp_path: Path) -> AppConfig:
    return make_appliance(tmp_path / "fresh")


@pytest.fixture
def writer(appliance: AppConfig) -> Iterator[Writer]:
    thread = Writer(appliance.database_url)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop_event.set()
        thread.join(30)


def test_backup_during_writes_restores_the_same_data(
    appliance: AppConfig, fresh: AppConfig, writer: Writer, tmp_path: Path
) -> None:
    writer.wait_for(300)
    archive = tmp_path / "backup.tar.gz"
    started_at = writer.committed
    manifest = backup.create_backup(appliance, archive)
    writer.wait_for(writer.committed + 50)  # the writer carried on after the copy
    writer.stop_event.set()
    writer.join(30)

    restored = backup.restore_backup(fresh, archive)
    assert restored == manifest
    source = table_hashes(Path(appliance.database_url.removeprefix("sqlite:///")))
    copy = table_hashes(Path(fresh.database_url.removeprefix("sqlite:///")))
    assert {t: c for t, (c, _) in copy.items()} == manifest["tables"]

    # Events: a gap-free prefix of what the writer committed (one consistent snapshot).
    conn = sqlite3.connect(fresh.database_url.removeprefix("sqlite:///"))
    ids = [row[0] for row in conn.execute("SELECT id FROM events ORDER BY id")]
    copied_events = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    conn.close()
    assert HISTORY + started_at <= len(ids) < HISTORY + writer.committed
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    conn = sqlite3.connect(appliance.database_url.removeprefix("sqlite:///"))
    source_prefix = conn.execute("SELECT * FROM events WHERE id <= ? ORDER BY id", (ids[-1],)).fetchall()
    conn.close()
    assert copied_events == source_prefix

    # Every other table is identical, row for row.
    for table, value in source.items():
        if table != "events":
            assert copy[table] == value, table

    # Configuration, lists and the CA came back byte for byte, the key still owner-only.
    for name in ("schoolgate.toml", "policy.toml"):
        assert (fresh.source.parent / name).read_bytes() == (appliance.source.parent / name).read_bytes()
    for path in (appliance.source.parent / "lists").glob("*"):
        assert (fresh.source.parent / "lists" / path.name).read_bytes() == path.read_bytes()
    key = fresh.data_dir / "ca" / "mitmproxy-ca.pem"
    assert key.read_bytes() == (appliance.data_dir / "ca" / "mitmproxy-ca.pem").read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    assert (fresh.data_dir / "console-secret").stat().st_mode & 0o777 == 0o600
    assert not any(p.name.endswith((".restoring", "-wal", "-shm")) for p in fresh.data_dir.iterdir())
    assert archive.stat().st_mode & 0o777 == 0o600

    # The restored database is a working one: the schema is at head.
    from schoolgate.store.db import current_revision, head_revision, make_engine

    engine = make_engine(fresh.database_url)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_manifest_lists_every_member_with_its_checksum(appliance: AppConfig, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    manifest = backup.create_backup(appliance, archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        assert json.loads(tar.extractfile("manifest.json").read()) == manifest  # type: ignore[union-attr]
        for name in names[1:]:
            data = tar.extractfile(name).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == manifest["members"][name]["sha256"]
    assert set(names[1:]) == set(manifest["members"])
    assert {
        "database/schoolgate.db",
        "config/schoolgate.toml",
        "config/policy.toml",
        "data/ca/mitmproxy-ca.pem",
        "data/console-secret",
    } <= set(names)
    assert not any(n.endswith(("-wal", "-shm")) or n == "data/schoolgate.db" for n in names)
    assert manifest["format"] == 1 and manifest["site"] == SITE and manifest["tables"]["people"] == 50


def test_restore_refuses_a_data_directory_in_use(appliance: AppConfig, fresh: AppConfig, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    backup.create_backup(appliance, archive)
    fresh.data_dir.mkdir()
    (fresh.data_dir / "schoolgate.db").write_bytes(b"someone's data")
    with pytest.raises(BackupError, match=r"not empty.*--force"):
        backup.restore_backup(fresh, archive)
    assert (fresh.data_dir / "schoolgate.db").read_bytes() == b"someone's data"
    (fresh.data_dir / "schoolgate.db-wal").write_bytes(b"stale")
    backup.restore_backup(fresh, archive, force=True)
    assert not (fresh.data_dir / "schoolgate.db-wal").exists()
    assert table_hashes(Path(fresh.database_url.removeprefix("sqlite:///")))["people"][0] == 50


def rewrite_archive(source: Path, target: Path, change: str) -> None:
    """Copy an archive, damaging it in one way."""
    with tarfile.open(source) as src, tarfile.open(target, "w:gz") as dst:
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if change == "flip" and info.name == "config/policy.toml":
                data = data.replace(b"Kingswood", b"Kingsw00d", 1)
            if change == "drop" and info.name == "data/console-secret":
                continue
            dst.addfile(info, io.BytesIO(data))
        if change == "extra":
            evil = tarfile.TarInfo("../../etc/cron.d/evil")
            evil.size = 4
            dst.addfile(evil, io.BytesIO(b"evil"))


@pytest.mark.parametrize(
    ("change", "message"),
    [("flip", "does not match its checksum"), ("drop", "lacks data/console-secret"), ("extra", "unexpected member")],
)
def test_restore_checks_everything_before_writing(
    appliance: AppConfig, fresh: AppConfig, tmp_path: Path, change: str, message: str
) -> None:
    good = tmp_path / "good.tar.gz"
    bad = tmp_path / "bad.tar.gz"
    backup.create_backup(appliance, good)
    rewrite_archive(good, bad, change)
    policy_before = (fresh.source.parent / "policy.toml").read_bytes()
    with pytest.raises(BackupError, match=message):
        backup.restore_backup(fresh, bad)
    assert not fresh.data_dir.exists()  # nothing was written
    assert (fresh.source.parent / "policy.toml").read_bytes() == policy_before


def test_not_a_backup(fresh: AppConfig, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip")
    with pytest.raises(BackupError, match="not a schoolgate backup"):
        backup.restore_backup(fresh, junk)


def test_postgresql_says_pg_dump_is_the_tool(
    appliance: AppConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup.shutil, "which", lambda name: None)
    config = replace(appliance, database=DatabaseConfig(url="postgresql://schoolgate@db.trust.example/schoolgate"))
    with pytest.raises(BackupError, match="pg_dump is the tool"):
        backup.create_backup(config, tmp_path / "pg.tar.gz")
    assert not (tmp_path / "pg.tar.gz").exists()


def test_command_line_round_trip(appliance: AppConfig, fresh: AppConfig, tmp_path: Path) -> None:
    program = (
        "import argparse, sys\n"
        "from schoolgate import backup\n"
        "parser = argparse.ArgumentParser()\n"
        "backup.register(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    archive = tmp_path / "cli.tar.gz"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", program, *argv], capture_output=True, text=True, timeout=120)

    done = cli("backup", "--config", str(appliance.source), "--output", str(archive))
    assert done.returncode == 0 and "wrote" in done.stdout, done.stderr
    done = cli("restore", "--config", str(fresh.source), str(archive))
    assert done.returncode == 0 and "restored" in done.stdout, done.stderr
    done = cli("restore", "--config", str(fresh.source), str(archive))
    assert done.returncode == 1 and "--force" in done.stderr


def test_an_archive_written_into_the_data_directory_leaves_itself_out(appliance: AppConfig) -> None:
    archive = appliance.data_dir / "nightly.tar.gz"
    first = backup.create_backup(appliance, archive)
    second = backup.create_backup(appliance, archive)  # overwrites; must not contain the first
    for manifest in (first, second):
        assert not any(name.startswith("data/nightly.tar.gz") for name in manifest["members"])
