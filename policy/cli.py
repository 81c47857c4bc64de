"""`schoolgate policy check` and `schoolgate policy explain`.

check: is the policy file right? explain: what would the appliance do for this device, this
site, at this time, and why? With --config, explain also uses the device register and the
database's exceptions, bans and site blocks, exactly as the daemons do.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schoolgate.policy.types import Client, Ownership, Role


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("policy", help="check a policy file, or explain a decision")
    commands = parser.add_subparsers(dest="policy_command", metavar="ACTION", required=True)

    check = commands.add_parser("check", help="check a policy file and summarise it")
    check.add_argument("file", type=Path, help="the policy file (policy.toml)")
    check.add_argument("--config", type=Path, help="the appliance config: use the list versions installed on it")
    check.set_defaults(func=_check)

    explain = commands.add_parser("explain", help="what would happen for a device, a site and a time")
    explain.add_argument("file", type=Path, nargs="?", help="the policy file (default: the one --config names)")
    explain.add_argument("--ip", required=True, help="the device's address")
    explain.add_argument("--mac", help="the device's MAC address")
    explain.add_argument("--role", choices=[r.value for r in Role], help="treat the device as this role")
    explain.add_argument("--year-group", type=int, help="a pupil's year group (Reception = 0)")
    explain.add_argument("--group", action="append", default=[], help="a class or team (repeatable)")
    explain.add_argument(
        "--ownership",
        choices=[o.value for o in Ownership],
        help="treat the device as school-owned or personal (default: as the register says; unknown without it)",
    )
    explain.add_argument("--host", help="the name asked for, e.g. www.facebook.com")
    explain.add_argument("--url", help="the full URL, when the proxy can see it")
    explain.add_argument("--at", help="the instant, ISO 8601 (no offset: school time); default: now")
    explain.add_argument("--config", type=Path, help="the appliance config (schoolgate.toml): use the database")
    explain.add_argument("--text", action="store_true", help="print a sentence instead of JSON")
    explain.set_defaults(func=_explain)


def _load(file: Path, config: Any | None) -> Any:
    """The policy file compiled as the daemons have it: with the list versions installed on
    the appliance when its configuration is given (schoolgate.live), else without them."""
    if config is None:
        from schoolgate.policy.loader import load_policy

        return load_policy(file)
    from schoolgate.lists.state import state_dir_of
    from schoolgate.live import LivePolicy

    return LivePolicy(file, lists_dir=state_dir_of(config), site=config.site.id).load()


def _check(args: argparse.Namespace) -> int:
    from schoolgate.tomlpos import ConfigError

    try:
        config = None
        if args.config is not None:
            from schoolgate.config import load_config

            config = load_config(args.config)
        policy = _load(args.file, config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    catalogue = sum(len(s.domains) + len(s.hosts) for s in policy.services)
    print(
        f"{args.file}: OK. {policy.school.name}: {len(policy.rules)} rules, {len(policy.services)} services "
        f"({catalogue} domains), {len(policy.lists)} lists ({policy.entries.count} names), "
        f"{len(policy.windows)} windows, {len(policy.networks)} networks, {len(policy.calendar.terms)} terms, "
        f"{len(policy.calendar.closures)} closure days."
    )
    for entry in policy.lists:
        where = entry.file or (entry.source.url if entry.source is not None else "")
        print(f"  list {entry.id} ({where}, {entry.format}): {entry.summary}")
    for category in policy.categories:
        traits = [
            "built-in" if category.builtin else "the policy's own",
            *(["locked"] if category.locked else []),
            *(["always open"] if category.always_allowed else []),
        ]
        print(f"  category {category.id} ({category.name}; {', '.join(traits)}): canary {category.canary or '-'}")
    if policy.document is not None:
        document = policy.document
        approved = document.approved or "approval not recorded"
        print(f"  document: {document.title} ({approved}); review by {document.review_by}")
    for warning in policy.warnings:
        print(f"  warning: {warning}")
    from schoolgate.policy.upkeep import upkeep_warnings

    today = datetime.now(policy.school.zone).date()
    for upkeep in upkeep_warnings(policy, today):
        print(f"  warning: {upkeep.message}")
    for window in policy.windows:
        print(f"  window {window.describe()}")
    return 0


def _instant(text: str | None, policy_zone: Any) -> datetime:
    if not text:
        return datetime.now(UTC)
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=policy_zone)
    return value


def _explain(args: argparse.Namespace) -> int:
    from schoolgate.policy.engine import decide
    from schoolgate.policy.explain import decision_to_dict, explain_text
    from schoolgate.policy.types import Target
    from schoolgate.tomlpos import ConfigError

    host = args.host
    if not host and args.url:
        from schoolgate.policy.engine import url_key

        key = url_key(args.url)
        host = key[0] if key else None
    if not host:
        print("error: give --host (or --url)", file=sys.stderr)
        return 2
    config = None
    try:
        if args.config is not None:
            from schoolgate.config import load_config

            config = load_config(args.config)
        file = args.file or (config.policy if config is not None else None)
        if file is None:
            print("error: give the policy file, or --config", file=sys.stderr)
            return 2
        policy = _load(file, config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        now = _instant(args.at, policy.school.zone)
    except ValueError:
        print(f"error: --at {args.at!r} is not an ISO 8601 time, e.g. 2026-11-23T10:35", file=sys.stderr)
        return 2
    client = Client(ip=args.ip, mac=args.mac.lower() if args.mac else None)
    notes: list[str] = []
    if config is not None:
        from sqlalchemy.exc import SQLAlchemyError

        try:
            client, policy, notes = _from_database(config, policy, args, now)
        except SQLAlchemyError as err:
            print(
                f"error: cannot read the device register and exceptions from {config.database_url}: "
                f"{err.__class__.__name__}: {getattr(err, 'orig', None) or err} "
                "(has the database been created? schoolgate db upgrade)",
                file=sys.stderr,
            )
            return 1
    overrides: dict[str, Any] = {}
    if args.role:
        overrides["role"] = Role(args.role)
    if args.year_group is not None:
        overrides["year_group"] = args.year_group
    if args.group:
        overrides["groups"] = client.groups | frozenset(args.group)
    if args.ownership:
        overrides["ownership"] = Ownership(args.ownership)
    if overrides:
        from dataclasses import replace

        client = replace(client, **overrides)
    decision = decide(policy, client, Target(host=host, url=args.url), now)
    if args.text:
        print(explain_text(decision, policy, now))
        return 0
    out = decision_to_dict(decision, policy)
    out["host"] = host
    out["url"] = args.url
    out["at"] = now.isoformat()
    out["client"] = {
        "ip": client.ip,
        "mac": client.mac,
        "device_id": client.device_id,
        "device_name": client.device_name,
        "person_id": client.person_id,
        "person_name": client.person_name,
        "year_group": client.year_group,
        "groups": sorted(client.groups),
        "ownership": client.ownership.value if client.ownership is not None else None,
    }
    out["policy"] = {"school": policy.school.id, "file": str(file), "fingerprint": policy.fingerprint}
    out["text"] = explain_text(decision, policy, now)
    if notes:
        out["notes"] = notes
    print(json.dumps(out, ensure_ascii=False, indent=2))
    return 0


def _from_database(config: Any, policy: Any, args: argparse.Namespace, now: datetime) -> tuple[Client, Any, list[str]]:
    """The device register and the overlay (exceptions, bans, site blocks) for the site."""
    from schoolgate.identity.register import load_register
    from schoolgate.identity.resolver import IdentityResolver
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.overlay import load_overlay

    engine = make_engine(config.database_url)
    try:
        sessions = session_factory(engine, readonly=True)
        with sessions() as session:
            register = load_register(session, config.site.id)
            overlay = load_overlay(session, config.site.id, now)
    finally:
        engine.dispose()
    client = IdentityResolver(register).resolve(args.ip, args.mac)
    layered = policy.with_overlay(overlay.exceptions, overlay.bans, overlay.site_blocks)
    return client, layered, list(overlay.skipped)
