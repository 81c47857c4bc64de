"""`schoolgate backup` and `schoolgate restore`: the appliance's data and configuration in one file.

A backup is a gzipped tar with, in order:

    manifest.json            format, schoolgate version, time, site, and per member its
                             sha256, size, mode and owner; per database table its row count
    database/schoolgate.db   a consistent copy of the SQLite database (or database/pg_dump.custom)
    config/...               every file in the configuration directory (schoolgate.toml,
                             policy.toml, the list files), plus the policy file if it lives elsewhere
    data/...                 the data directory apart from the live database: the school CA,
                             the console's TLS certificate and session secret
    ca/...                   the CA, when proxy.ca_dir points outside the data directory

The database copy uses SQLite's online backup API, so it is taken while the daemons keep
writing: the copy is one consistent snapshot, never a half-written file. For PostgreSQL the tool
is pg_dump; it is run when present, and the command says so plainly when it is not.

Restore verifies every checksum before it writes anything, and refuses to replace a data
directory that already holds data unless told --force.
"""

from __future__ import annotations

import argparse
import datetime as dt
import grp
import hashlib
import io
import json
import os
import pwd
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from schoolgate.config import AppConfig, load_config_or_report

FORMAT = 1
MANIFEST = "manifest.json"
DB_MEMBER = "database/schoolgate.db"
PG_MEMBER = "database/pg_dump.custom"
_CHUNK = 1 << 20


class BackupError(Exception):
    """The backup or restore cannot go ahead; the message says why and what to do."""


@dataclass(frozen=True)
class Member:
    """One file to put in the archive: where it comes from and its name inside."""

    name: str
    source: Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sqlite_path(config: AppConfig) -> Path | None:
    url = config.database_url
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def _ca_dir(config: AppConfig) -> Path:
    return Path(config.proxy.ca_dir) if config.proxy.ca_dir else config.data_dir / "ca"


def _files_under(directory: Path) -> Iterator[Path]:
    if not directory.is_dir():
        return
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
            yield path


def _is_within(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def collect_files(config: AppConfig, exclude: Path | None = None) -> list[Member]:
    """Configuration, policy, lists, CA and the data directory's small files (not the live DB).

    `exclude` is the archive being written, in case it is written inside one of these folders.
    """
    members: list[Member] = []
    config_dir = config.source.parent
    for path in _files_under(config_dir):
        if path == exclude or path.name.endswith(".partial"):
            continue
        members.append(Member("config/" + path.relative_to(config_dir).as_posix(), path))
    if not _is_within(config.policy, config_dir) and config.policy.is_file():
        members.append(Member("policy/" + config.policy.name, config.policy))
    database = _sqlite_path(config)
    skip = (
        {database, Path(f"{database}-wal"), Path(f"{database}-shm"), Path(f"{database}-journal")} if database else set()
    )
    for path in _files_under(config.data_dir):
        if path in skip or path.name.endswith((".tmp", ".partial")) or path == exclude:
            continue
        members.append(Member("data/" + path.relative_to(config.data_dir).as_posix(), path))
    ca_dir = _ca_dir(config)
    if not _is_within(ca_dir, config.data_dir):
        for path in _files_under(ca_dir):
            members.append(Member("ca/" + path.relative_to(ca_dir).as_posix(), path))
    return members


def snapshot_sqlite(source: Path, target: Path) -> dict[str, int]:
    """Copy a live SQLite database with the online backup API; return each table's row count.

    One step (pages=-1) copies the whole database under one read transaction: in WAL mode the
    writers carry on meanwhile, and the copy is the database exactly as of one commit.
    """
    if not source.exists():
        raise BackupError(f"the database {source} does not exist")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file in the archive
            check = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if check != "ok":
                raise BackupError(f"the copy of {source} failed SQLite's integrity check: {check}")
            return table_counts(dst)
        finally:
            dst.close()
    finally:
        src.close()


def table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {name: conn.execute(f'SELECT COUNT(*) FROM "{name}"').fetchone()[0] for name in names}


def dump_postgresql(url: str, target: Path) -> None:
    if shutil.which("pg_dump") is None:
        raise BackupError(
            "the database is PostgreSQL: pg_dump is the tool for it. Install it "
            "(sudo apt-get install postgresql-client) and run this again, or run "
            "pg_dump --format=custom yourself and keep that file with this backup."
        )
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(password=None).render_as_string(hide_password=False)
    done = subprocess.run(
        ["pg_dump", "--format=custom", f"--file={target}", f"--dbname={plain}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")


def _owner(stat: os.stat_result) -> tuple[str, str]:
    try:
        user = pwd.getpwuid(stat.st_uid).pw_name
    except KeyError:
        user = str(stat.st_uid)
    try:
        group = grp.getgrgid(stat.st_gid).gr_name
    except KeyError:
        group = str(stat.st_gid)
    return user, group


def create_backup(config: AppConfig, output: Path, now: dt.datetime | None = None) -> dict[str, Any]:
    """Write the backup archive to `output` (atomically) and return its manifest."""
    from schoolgate import __version__

    now = now or dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="schoolgate-backup-") as work:
        members = collect_files(config, exclude=output.resolve())
        database = _sqlite_path(config)
        tables: dict[str, int] = {}
        db_source: Path | None = None
        if database is not None:
            db_copy = Path(work) / "schoolgate.db"
            tables = snapshot_sqlite(database, db_copy)
            members.insert(0, Member(DB_MEMBER, db_copy))
            db_source = database
        else:
            dump = Path(work) / "pg_dump.custom"
            dump_postgresql(config.database_url, dump)
            members.insert(0, Member(PG_MEMBER, dump))
        entries: dict[str, dict[str, Any]] = {}
        for member in members:
            stat = (db_source or member.source).stat() if member.name == DB_MEMBER else member.source.stat()
            user, group = _owner(stat)
            entries[member.name] = {
                "sha256": sha256_file(member.source),
                "size": member.source.stat().st_size,
                "mode": stat.st_mode & 0o7777,
                "user": user,
                "group": group,
            }
        manifest = {
            "format": FORMAT,
            "schoolgate_version": __version__,
            "created": now.isoformat(),
            "site": config.site.id,
            "database": "sqlite" if database is not None else "postgresql",
            "tables": tables,
            "members": entries,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        # The archive holds the CA's private key and personal data: owner-only from the start.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
            data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(data), 0o600, int(now.timestamp())
            tar.addfile(info, io.BytesIO(data))
            for member in members:
                entry = entries[member.name]
                info = tarfile.TarInfo(member.name)
                info.size, info.mode, info.mtime = entry["size"], entry["mode"], int(now.timestamp())
                info.uname, info.gname = entry["user"], entry["group"]
                with member.source.open("rb") as handle:
                    tar.addfile(info, handle)
        os.replace(partial, output)
    return manifest


# ------------------------------------------------------------------------ restore


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and bool(path.parts)


def read_verified(archive: Path, work: Path) -> dict[str, Any]:
    """Unpack `archive` into `work` and check it against its manifest. Nothing else is touched."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            return _unpack_verified(archive, tar, work)
    except (OSError, EOFError, tarfile.TarError) as err:
        raise BackupError(f"{archive} is not a schoolgate backup (cannot read it as .tar.gz: {err})") from err


def _read_manifest(archive: Path, tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        handle = tar.extractfile(MANIFEST)
        assert handle is not None
        manifest = json.loads(handle.read())
        members = manifest["members"]
        if not isinstance(members, dict) or not all("sha256" in m and "mode" in m for m in members.values()):
            raise TypeError("members")
    except KeyError as err:
        raise BackupError(f"{archive} has no {MANIFEST}: not a schoolgate backup") from err
    except (ValueError, TypeError) as err:
        raise BackupError(f"{archive}: {MANIFEST} is damaged ({err})") from err
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} has backup format {manifest.get('format')!r}; this version reads {FORMAT}")
    return dict(manifest)


def _unpack_verified(archive: Path, tar: tarfile.TarFile, work: Path) -> dict[str, Any]:
    manifest = _read_manifest(archive, tar)
    expected: dict[str, dict[str, Any]] = manifest["members"]
    seen: set[str] = set()
    for info in tar.getmembers():
        if info.name == MANIFEST:
            continue
        if not info.isfile() or not _safe_name(info.name) or info.name not in expected or info.name in seen:
            raise BackupError(f"{archive}: unexpected member {info.name!r}; refusing to restore")
        source = tar.extractfile(info)
        assert source is not None
        target = work / info.name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with target.open("wb") as out:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected[info.name]["sha256"]:
            raise BackupError(f"{archive}: {info.name} does not match its checksum; the backup is damaged")
        seen.add(info.name)
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"{archive} lacks {', '.join(missing)}; the backup is incomplete")
    return manifest


def _data_dir_in_use(config: AppConfig) -> list[str]:
    if not config.data_dir.is_dir():
        return []
    return sorted(p.name for p in config.data_dir.iterdir())


def _place(source: Path, target: Path, entry: dict[str, Any]) -> None:
    """Put one restored file in place atomically, with its mode and (as root) its owner."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".restoring")
    shutil.copyfile(source, temporary)
    os.chmod(temporary, entry["mode"])
    if os.geteuid() == 0:
        try:
            uid = pwd.getpwnam(entry["user"]).pw_uid
        except KeyError:
            uid = 0
        try:
            gid = grp.getgrnam(entry["group"]).gr_gid
        except KeyError:
            gid = 0
        os.chown(temporary, uid, gid)
    os.replace(temporary, target)


def restore_backup(config: AppConfig, archive: Path, *, force: bool = False) -> dict[str, Any]:
    """Verify `archive`, then put its database, configuration and CA back in place."""
    with tempfile.TemporaryDirectory(prefix="schoolgate-restore-") as work_dir:
        work = Path(work_dir)
        manifest = read_verified(archive, work)
        present = _data_dir_in_use(config)
        if present and not force:
            raise BackupError(
                f"{config.data_dir} is not empty ({', '.join(present[:5])}{', ...' if len(present) > 5 else ''}). "
                "Restoring replaces the database and the CA there. Stop the services "
                "(sudo systemctl stop schoolgate.target) and run restore again with --force."
            )
        entries: dict[str, dict[str, Any]] = manifest["members"]
        database = _sqlite_path(config)
        if DB_MEMBER in entries:
            if database is None:
                raise BackupError(
                    "the backup holds a SQLite database but database.url names another server; "
                    "restore onto an appliance that uses SQLite"
                )
            for stale in (Path(f"{database}-wal"), Path(f"{database}-shm"), Path(f"{database}-journal")):
                stale.unlink(missing_ok=True)
            _place(work / DB_MEMBER, database, entries[DB_MEMBER])
        if PG_MEMBER in entries:
            dump = config.data_dir / "restored-pg_dump.custom"
            _place(work / PG_MEMBER, dump, entries[PG_MEMBER])
            print(
                f"the database is a PostgreSQL dump: pg_restore is the tool. It is in {dump}; load it with\n"
                f"  pg_restore --clean --if-exists --dbname=<database url> {dump}",
                file=sys.stderr,
            )
        ca_dir = _ca_dir(config)
        for name, entry in entries.items():
            top, _, rest = name.partition("/")
            if top == "config":
                target = config.source.parent / rest
            elif top == "policy":
                target = config.policy
            elif top == "data":
                target = config.data_dir / rest
            elif top == "ca":
                target = ca_dir / rest
            else:
                continue
            _place(work / name, target, entry)
        return manifest


# ------------------------------------------------------------------------ command line


def register(sub: argparse._SubParsersAction[Any]) -> None:
    backup = sub.add_parser("backup", help="copy the database, configuration and CA into one .tar.gz")
    backup.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    backup.add_argument("--output", required=True, help="the archive to write, e.g. /root/schoolgate-2026-11-21.tar.gz")
    backup.set_defaults(func=_backup)

    restore = sub.add_parser("restore", help="put a backup back in place (checks it first)")
    restore.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    restore.add_argument("--force", action="store_true", help="replace a data directory that already holds data")
    restore.add_argument("archive", help="the .tar.gz written by schoolgate backup")
    restore.set_defaults(func=_restore)


def _backup(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        manifest = create_backup(config, Path(args.output))
    except (BackupError, OSError, sqlite3.Error) as err:
        print(f"schoolgate backup: {err}", file=sys.stderr)
        return 1
    rows = sum(manifest["tables"].values())
    print(f"wrote {args.output}: {len(manifest['members'])} files, {rows} database rows")
    return 0


def _restore(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        manifest = restore_backup(config, Path(args.archive), force=args.force)
    except (BackupError, OSError, sqlite3.Error, ValueError) as err:
        print(f"schoolgate restore: {err}", file=sys.stderr)
        return 1
    print(
        f"restored {len(manifest['members'])} files from the backup of {manifest['created']} "
        f"(site {manifest['site']}); start the services: sudo systemctl start schoolgate.target"
    )
    return 0
