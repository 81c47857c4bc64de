"""`schoolgate lists update|import|status`.

    schoolgate lists update --config C [--id ID] [--force] [--json]
    schoolgate lists import --config C --id ID PATH
    schoolgate lists status --config C [--json]

update downloads every subscription of the policy (or one), checks, compiles and installs
it; the daemons pick a new version up within seconds, without a restart. import installs a
version from a local file, folder or archive with the same checks (a trust that mirrors lists,
an appliance with no internet at install time). A refused download or import keeps the last
good version and says why. Exit status: 0 when every list is in order, 1 when one failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("lists", help="update, import and show the list subscriptions")
    commands = parser.add_subparsers(dest="lists_command", metavar="ACTION", required=True)

    update = commands.add_parser("update", help="download, check and install every subscription now")
    update.add_argument("--config", type=Path, required=True, help="the appliance configuration (schoolgate.toml)")
    update.add_argument("--id", help="only this list")
    update.add_argument("--force", action="store_true", help="download even if the server says not modified")
    update.add_argument("--json", action="store_true", help="print the outcome as JSON")
    update.set_defaults(func=_update)

    imported = commands.add_parser("import", help="install a version from a local file, folder or archive")
    imported.add_argument("--config", type=Path, required=True, help="the appliance configuration")
    imported.add_argument("--id", required=True, help="the list, as named in the policy's [lists.ID]")
    imported.add_argument("path", type=Path, help="the list file, squidguard folder or .tar.gz")
    imported.set_defaults(func=_import)

    status = commands.add_parser("status", help="each list: source, version, age, entries, last error")
    status.add_argument("--config", type=Path, required=True, help="the appliance configuration")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)


def _now() -> datetime:
    from schoolgate.clock import clock_from_env

    return clock_from_env().now().astimezone(UTC)


def _setup(args: argparse.Namespace, prog: str) -> tuple[Any, Any, Any] | None:
    from schoolgate.config import load_config_or_report
    from schoolgate.lists.state import ListState, state_dir_of
    from schoolgate.policy.loader import load_list_sources
    from schoolgate.tomlpos import ConfigError

    config = load_config_or_report(args.config, prog)
    if config is None:
        return None
    try:
        sources = load_list_sources(config.policy)
    except ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None
    return config, ListState(state_dir_of(config)), sources


def _record(config: Any, outcomes: list[Any], now: datetime, prog: str) -> None:
    """Put each installed version in the audit log (and move the change counter)."""
    installed = [
        {"list": o.list_id, "version": o.version, "message": o.message} for o in outcomes if o.result == "installed"
    ]
    if not installed:
        return
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.services.list_changes import record_installed
    from schoolgate.store.db import make_engine, session_factory

    engine = make_engine(config.database_url)
    try:
        with session_factory(engine)() as session:
            record_installed(session, site=config.site.id, installed=installed, now=now)
            session.commit()
    except SQLAlchemyError as err:
        print(f"{prog}: warning: the new version is in force, but the audit log could not be written: "
              f"{err.__class__.__name__}: {getattr(err, 'orig', None) or err}", file=sys.stderr)
    finally:
        engine.dispose()


def _report(outcomes: list[Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps([{"list": o.list_id, "result": o.result, "message": o.message, "version": o.version}
                          for o in outcomes], indent=1))
    else:
        for outcome in outcomes:
            print(f"{outcome.list_id}: {outcome.result.replace('_', ' ')}: {outcome.message}")
    return 1 if any(o.failed for o in outcomes) else 0


def _update(args: argparse.Namespace) -> int:
    from schoolgate.lists.state import ListStateError
    from schoolgate.lists.update import Updater

    prog = "schoolgate lists update"
    setup = _setup(args, prog)
    if setup is None:
        return 2
    config, state, sources = setup
    wanted = [s for s in sources if s.url is not None and (args.id is None or s.id == args.id)]
    if args.id is not None and not wanted:
        known = ", ".join(s.id for s in sources if s.url is not None) or "none"
        print(f"{prog}: the policy has no subscription {args.id!r} (subscriptions: {known})", file=sys.stderr)
        return 2
    if not wanted:
        print("the policy subscribes to no lists (no [lists.ID] with url = ...): nothing to update")
        return 0
    now = _now()
    try:
        outcomes = Updater(state).update(wanted, now, force=args.force)
    except ListStateError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    _record(config, outcomes, now, prog)
    return _report(outcomes, args.json)


def _import(args: argparse.Namespace) -> int:
    from schoolgate.lists.state import ListStateError
    from schoolgate.lists.update import Updater

    prog = "schoolgate lists import"
    setup = _setup(args, prog)
    if setup is None:
        return 2
    config, state, sources = setup
    found = [s for s in sources if s.id == args.id]
    if not found:
        print(f"{prog}: the policy has no list {args.id!r} (lists: {', '.join(s.id for s in sources) or 'none'})",
              file=sys.stderr)
        return 2
    if found[0].url is None:
        print(f"{prog}: list {args.id!r} reads its file ({found[0].file}) with the policy; "
              "import is for subscriptions (url = ...)", file=sys.stderr)
        return 2
    now = _now()
    try:
        outcome = Updater(state).import_path(found[0], args.path.resolve(), now)
    except ListStateError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    _record(config, [outcome], now, prog)
    return _report([outcome], False)


def _status(args: argparse.Namespace) -> int:
    from schoolgate.lists.state import ListStateError
    from schoolgate.lists.status import list_statuses

    prog = "schoolgate lists status"
    setup = _setup(args, prog)
    if setup is None:
        return 2
    config, state, sources = setup
    try:
        manifest = state.manifest()
    except ListStateError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    statuses = list_statuses(sources, manifest, _now(), stale_days=float(config.lists.stale_days))
    if args.json:
        print(json.dumps([s.to_dict() for s in statuses], indent=1))
        return 0
    if not statuses:
        print("the policy has no [lists]")
    for status in statuses:
        print(status.describe())
        if status.entries:
            print("    " + ", ".join(f"{category} {count}" for category, count in sorted(status.entries.items())))
        if status.urls:
            print(f"    {status.urls} URL prefixes: enforced only where the proxy sees the path (devices that "
                  "trust the school CA), never by DNS")
        if status.addresses:
            print(f"    {status.addresses} addresses and networks, blocked by address at the gateway and the proxy")
        if status.unmapped:
            print(f"    not used (not mapped in the policy): {', '.join(status.unmapped)}")
    return 0
