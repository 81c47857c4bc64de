"""`schoolgate db upgrade|check|spool|revision` and `schoolgate audit verify`.

Imports stay inside the handlers: every `schoolgate` command imports this module.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from schoolgate.config import load_config_or_report


def register(sub: argparse._SubParsersAction[Any]) -> None:
    db = sub.add_parser("db", help="database schema: upgrade, check; the event spool")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)

    upgrade = db_sub.add_parser("upgrade", help="bring the database schema to the newest revision")
    upgrade.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    upgrade.set_defaults(func=_upgrade)

    check = db_sub.add_parser("check", help="exit 0 if the database is at the newest revision and matches the models")
    check.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    check.set_defaults(func=_check)

    spool = db_sub.add_parser(
        "spool", help="events waiting in this appliance's spool for the central database (a trust's appliances)"
    )
    spool.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    spool.add_argument("--ship", action="store_true", help="ship them now (the daemons do this on their own)")
    spool.add_argument("--timeout", type=float, default=60.0, help="with --ship: give up after this many seconds")
    spool.set_defaults(func=_spool)

    revision = db_sub.add_parser(
        "revision", help="(development) write a new migration from the difference to the models"
    )
    revision.add_argument("-m", "--message", required=True)
    revision.add_argument(
        "--initial",
        action="store_true",
        help="(before the first release only) rewrite the single initial revision from the models",
    )
    revision.set_defaults(func=_revision)

    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = audit_sub.add_parser("verify", help="check the audit log's hash chain for the site")
    verify.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    verify.add_argument("--site", help="the site to check (default: the config's site)")
    verify.set_defaults(func=_verify)


def _upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.store.db import current_revision, init_db, make_engine

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    engine = make_engine(config.database_url)
    try:
        before = current_revision(engine)
        init_db(engine)
        after = current_revision(engine)
    except SQLAlchemyError as err:
        print(f"schoolgate db upgrade: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if before == after:
        print(f"database already at {after}")
    else:
        print(f"database upgraded from {before or 'empty'} to {after}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.store.db import current_revision, head_revision, make_engine, schema_differences

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    engine = make_engine(config.database_url)
    try:
        current = current_revision(engine)
        head = head_revision()
        if current != head:
            print(
                f"database at revision {current or 'none (empty)'}, newest is {head}: "
                f"run `schoolgate db upgrade --config {args.config}`",
                file=sys.stderr,
            )
            return 1
        diff = schema_differences(engine)
    except SQLAlchemyError as err:
        print(f"schoolgate db check: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    if diff:
        print(f"database at {current} but it differs from the models:", file=sys.stderr)
        for item in diff:
            print(f"  {item}", file=sys.stderr)
        return 1
    print(f"database at {current}, schema matches the models")
    return 0


def _revision(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from alembic import command

    from schoolgate.store.db import MIGRATIONS_DIR, alembic_config, init_db, make_engine

    versions = MIGRATIONS_DIR / "versions"
    if args.initial:
        existing = sorted(p for p in versions.glob("*.py") if p.name != "__init__.py")
        if [p.name for p in existing] not in ([], [INITIAL_FILE]):
            names = ", ".join(p.name for p in existing)
            print(f"--initial: there is more than the initial revision ({names})", file=sys.stderr)
            return 1
        for path in existing:
            path.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'head.db'}"
        engine = make_engine(url) if args.initial else init_db(url)
        try:
            config = alembic_config(engine)
            if args.initial:
                script = command.revision(config, message=args.message, autogenerate=True, rev_id=INITIAL_REV)
                generated = Path(getattr(script, "path", ""))
                if generated.is_file() and generated.name != INITIAL_FILE:
                    generated.rename(versions / INITIAL_FILE)
            else:
                command.revision(config, message=args.message, autogenerate=True)
        finally:
            engine.dispose()
    return 0


def _spool(args: argparse.Namespace) -> int:
    from schoolgate.store.events import spool_paths

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    paths = spool_paths(config.data_dir)
    if not paths:
        print(f"no event spool in {config.data_dir}: nothing waits")
        return 0
    status = 0
    for path in paths:
        status = max(status, _one_spool(config, path, args))
    return status


def _one_spool(config: Any, path: Any, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.store.db import make_engine
    from schoolgate.store.events import EventWriter
    from schoolgate.store.spool import EventSpool

    spool = EventSpool(path)
    try:
        pending, size = spool.pending(), spool.size_bytes()
    finally:
        spool.close()
    print(f"{pending} events wait in {path} ({size / 1024**2:.1f} MiB)")
    if not args.ship or pending == 0:
        return 0
    engine = make_engine(config.database_url)
    writer = EventWriter(engine, spool_path=path)
    try:
        shipped_all = writer.ship(timeout=args.timeout)
        stats = writer.stop(timeout=1.0)
    except SQLAlchemyError as err:
        print(f"schoolgate db spool: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"shipped {stats['shipped']} ({stats['duplicates']} were already there); {stats['spool_pending']} wait")
    if shipped_all and stats["spool_pending"]:
        print("a running daemon is shipping the rest")
    if not shipped_all:
        print(f"schoolgate db spool: the database did not take them all: {stats['last_error']}", file=sys.stderr)
        return 1
    return 0


INITIAL_REV = "0001_initial"
INITIAL_FILE = "0001_initial.py"


def _verify(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.store.audit import verify
    from schoolgate.store.db import make_engine, session_factory

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    site = args.site or config.site.id
    engine = make_engine(config.database_url)
    try:
        with session_factory(engine, readonly=True)() as session:
            result = verify(session, site)
    except SQLAlchemyError as err:
        print(f"schoolgate audit verify: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"{site}: {result.describe()}", file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1
