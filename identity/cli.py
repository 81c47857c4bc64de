"""`schoolgate devices import-leases FILE`, `schoolgate identity leases import|show`.

`devices import-leases` adds the devices in a dnsmasq lease file to the device register;
`identity leases import` records any DHCP server's leases (Windows, ISC, Kea, dnsmasq) as the
evidence of who held an address when, and `identity leases show` answers that for an address.
Imports stay inside the handlers: every `schoolgate` command imports this module.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    devices = sub.add_parser("devices", help="the device register")
    devices_sub = devices.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    leases = devices_sub.add_parser("import-leases", help="add or update devices from a dnsmasq DHCP lease file")
    leases.add_argument("file", help="the lease file, e.g. /var/lib/misc/dnsmasq.leases")
    leases.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    leases.add_argument("--actor", default="dhcp-import", help="who the audit log names (default: %(default)s)")
    leases.add_argument("--include-expired", action="store_true", help="also import leases whose expiry has passed")
    leases.set_defaults(func=_import_leases)

    identity = sub.add_parser("identity", help="who is behind an address: DHCP leases, Wi-Fi sessions")
    identity_sub = identity.add_subparsers(dest="identity_command", metavar="ACTION", required=True)
    lease_cmd = identity_sub.add_parser("leases", help="the school's DHCP leases")
    lease_sub = lease_cmd.add_subparsers(dest="leases_command", metavar="ACTION", required=True)
    record = lease_sub.add_parser("import", help="record a DHCP server's lease file (once; the identity daemon "
                                                 "follows the files in [identity] lease_files)")
    record.add_argument("file", help="Windows DHCP CSV export, ISC dhcpd.leases, Kea lease CSV or dnsmasq leases")
    record.add_argument("--format", default="auto", choices=["auto", "windows", "isc", "kea", "dnsmasq"])
    record.add_argument("--date-order", default="auto", choices=["auto", "day-first", "month-first"],
                        help="Windows: how to read dates a file leaves ambiguous (default: the file, else day first)")
    record.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    record.set_defaults(func=_record_leases)
    show = lease_sub.add_parser("show", help="which device held an address at a time")
    show.add_argument("ip")
    show.add_argument(
        "--at", help="a time on the school's clock, e.g. 2026-11-23T09:15, or with an offset (default: now)"
    )
    show.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    show.set_defaults(func=_show_leases)
    directory = sub.add_parser("directory", help="people, classes and year groups from the school's directory")
    directory_sub = directory.add_subparsers(dest="directory_command", metavar="ACTION", required=True)
    load = directory_sub.add_parser(
        "import", help="preview (and with --apply, make) the changes an export brings to the people register"
    )
    load.add_argument("file", help="Google Workspace or Entra ID users CSV, SDS Student/Teacher.csv, or an MIS export")
    load.add_argument("--format", default="auto",
                      choices=["auto", "google", "entra", "sds-student", "sds-teacher", "mis"])
    load.add_argument("--role", choices=["pupil", "staff", "guest"], help="every row's role (a file of one kind)")
    load.add_argument("--mark-leavers", action="store_true",
                      help="mark as left the people of the file's roles who are not in it")
    load.add_argument("--apply", action="store_true", help="make the changes (without it: preview only)")
    load.add_argument("--actor", default="directory-import", help="who the audit log names (default: %(default)s)")
    load.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    load.set_defaults(func=_directory_import)
    history = directory_sub.add_parser("imports", help="the directory imports previewed and applied")
    history.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    history.set_defaults(func=_directory_imports)

    serve = identity_sub.add_parser("serve", help="the identity daemon: follow lease files, receive RADIUS accounting")
    serve.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    serve.set_defaults(func=_serve)


def _import_leases(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.config import load_config_or_report
    from schoolgate.identity.leases import import_leases
    from schoolgate.store.coltypes import utcnow
    from schoolgate.store.db import make_engine, session_factory

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        text = Path(args.file).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        print(f"schoolgate devices import-leases: cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return 2
    engine = make_engine(config.database_url)
    try:
        with session_factory(engine).begin() as session:
            report = import_leases(
                session,
                config.site.id,
                text,
                actor=args.actor,
                now=utcnow(),
                include_expired=args.include_expired,
            )
    except SQLAlchemyError as err:
        print(f"schoolgate devices import-leases: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    for problem in report.problems:
        print(f"{args.file}: {problem}", file=sys.stderr)
    print(f"{args.file}: {report.summary()}")
    return 1 if report.problems else 0


def _record_leases(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.config import load_config_or_report
    from schoolgate.identity.exports import ExportError, decode_export
    from schoolgate.identity.leaseformats import DATE_ORDERS, LeaseFormatError, parse_lease_file
    from schoolgate.identity.leasestore import record_leases
    from schoolgate.identity.zone import ZoneUnknown, school_zone
    from schoolgate.store.coltypes import utcnow
    from schoolgate.store.db import make_engine, session_factory

    prog = "schoolgate identity leases import"
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        zone = school_zone(config)
    except ZoneUnknown as err:
        print(f"{prog}: {err}; no lease was recorded", file=sys.stderr)
        return 2
    try:
        text, _encoding = decode_export(Path(args.file).read_bytes(), what=args.file)
        parsed = parse_lease_file(text, args.format, tz=zone, day_first=DATE_ORDERS[args.date_order])
    except OSError as err:
        print(f"{prog}: cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return 2
    except (ExportError, LeaseFormatError) as err:
        print(f"{prog}: {args.file}: {err}", file=sys.stderr)
        return 2
    engine = make_engine(config.database_url)
    try:
        with session_factory(engine).begin() as session:
            report = record_leases(session, config.site.id, parsed, origin=str(Path(args.file).resolve()),
                                   now=utcnow())
    except SQLAlchemyError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    for lease_problem in parsed.problems:
        print(f"{args.file}: {lease_problem}", file=sys.stderr)
    print(f"{args.file}: {parsed.summary()}; {report.summary()}")
    return 1 if parsed.problems else 0


def _show_leases(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, tzinfo

    from schoolgate.config import load_config_or_report
    from schoolgate.identity.leasestore import leases_at
    from schoolgate.identity.zone import ZoneUnknown, school_zone
    from schoolgate.store.coltypes import utcnow
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.timewords import local

    prog = "schoolgate identity leases show"
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    zone: tzinfo
    try:
        zone = school_zone(config)  # a technician reads and types the school's clock
    except ZoneUnknown as err:
        zone = UTC
        print(f"{prog}: {err}; times are shown in UTC", file=sys.stderr)
    try:
        at = datetime.fromisoformat(args.at) if args.at else utcnow()
    except ValueError:
        print(f"{prog}: {args.at!r} is not a time; write e.g. 2026-11-23T09:15", file=sys.stderr)
        return 2
    if at.tzinfo is None:
        at = at.replace(tzinfo=zone)

    def shown(moment: datetime) -> str:
        return local(moment, zone).isoformat(sep=" ", timespec="seconds")

    engine = make_engine(config.database_url)
    try:
        with session_factory(engine, readonly=True)() as session:
            rows = leases_at(session, config.site.id, args.ip, at)
    finally:
        engine.dispose()
    if not rows:
        print(f"no lease covers {args.ip} at {shown(at)}")
        return 1
    for row in rows:
        ends = shown(row.ends) if row.ends else "never"
        print(f"{row.ip} {row.mac} {row.hostname or '-'} from {shown(row.starts)} to {ends} "
              f"(last renewed {shown(row.renewed)}; {row.source}: {row.origin})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from schoolgate.config import load_config_or_report
    from schoolgate.identity.daemon import run_identity_daemon

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    return run_identity_daemon(config)


def _directory_import(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from schoolgate.config import load_config_or_report
    from schoolgate.services import directory
    from schoolgate.services.actor import Actor
    from schoolgate.services.errors import ServiceError
    from schoolgate.services.permissions import ConsoleRole
    from schoolgate.store.coltypes import utcnow
    from schoolgate.store.db import make_engine, session_factory

    prog = "schoolgate directory import"
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        data = Path(args.file).read_bytes()
    except OSError as err:
        print(f"{prog}: cannot read {args.file}: {err.strerror}", file=sys.stderr)
        return 2
    actor = Actor(name=args.actor, display_name=f"{args.actor} (command line)", roles=frozenset({ConsoleRole.ADMIN}))
    engine = make_engine(config.database_url)
    sessions = session_factory(engine)
    try:
        with sessions.begin() as session:
            row = directory.preview(session, site=config.site.id, now=utcnow(), actor=actor, data=data,
                                    filename=Path(args.file).name, profile=args.format, role=args.role,
                                    mark_leavers=args.mark_leavers)
            import_id, summary, changes = row.id, json.loads(row.summary), directory.changes_of(row)
        for change in changes:
            fields = "; ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in change["fields"].items())
            note = f" ({change['note']})" if change["note"] else ""
            print(f"{change['kind']:8} {change['external_id']} {change['name']}: {fields}{note}")
        for line, problem in summary["problem_lines"]:
            print(f"{args.file}: line {line}: {problem}", file=sys.stderr)
        print(f"{args.file}: {summary['format']}: {summary['add']} to add, {summary['update']} to change, "
              f"{summary['leave']} to mark as left, {summary['conflict']} conflicts, {summary['problems']} bad rows "
              f"(import {import_id})")
        if not args.apply:
            print("nothing changed: run again with --apply to make these changes")
            return 0
        with sessions.begin() as session:
            directory.apply(session, site=config.site.id, now=utcnow(), actor=actor, import_id=import_id)
        print(f"applied import {import_id}")
        return 0
    except ServiceError as err:
        print(f"{prog}: {args.file}: {err.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def _directory_imports(args: argparse.Namespace) -> int:
    import json

    from schoolgate.config import load_config_or_report
    from schoolgate.services import directory
    from schoolgate.store.db import make_engine, session_factory

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    engine = make_engine(config.database_url)
    try:
        with session_factory(engine, readonly=True)() as session:
            for row in directory.list_imports(session, config.site.id):
                s = json.loads(row.summary)
                print(f"{row.id}\t{row.created_at:%Y-%m-%d %H:%M}\t{row.status}\t{row.created_by}\t{row.filename}\t"
                      f"{s['format']}\t+{s['add']} ~{s['update']} -{s['leave']}")
    finally:
        engine.dispose()
    return 0
