"""`schoolgate devices import-leases FILE --config F`.

Imports stay inside the handler: every `schoolgate` command imports this module.
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
