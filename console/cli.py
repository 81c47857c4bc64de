"""`schoolgate console` (serve the web console) and `schoolgate users add|list|reset-password`.

Imports stay inside the handlers so `schoolgate --help` stays quick.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from schoolgate.config import load_config_or_report


def register(sub: argparse._SubParsersAction[Any]) -> None:
    console = sub.add_parser("console", help="serve the web console (gunicorn, TLS)")
    console.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    console.add_argument("--plain-http", action="store_true",
                         help="serve without TLS (development only; also [console] plain_http)")
    console.add_argument("--listen", help="HOST:PORT to listen on (default: [console] listen)")
    console.add_argument("--threads", type=int, default=8, help="request threads (default 8)")
    console.add_argument("--listen-fd", type=int, action="append", default=[], metavar="FD",
                         help="serve this inherited listening socket (repeatable; `schoolgate run` passes it) "
                              "and sleep after [console] idle_minutes without a connection; systemd's "
                              "LISTEN_FDS is read the same way")
    console.add_argument("--issue-cert", action="store_true",
                         help="issue the console's TLS certificate from the school CA, then exit")
    console.set_defaults(func=_console)

    users = sub.add_parser("users", help="console accounts: add, list, reset-password")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    add = users_sub.add_parser("add", help="create a console account and print a one-time password")
    add.add_argument("username")
    add.add_argument("--role", action="append", required=True, dest="roles",
                     help="technician, dsl, headteacher or admin (repeat for several), or trust_admin alone")
    add.add_argument("--name", help="the name printed on forms (default: the username)")
    add.add_argument("--email")
    add.add_argument("--person", metavar="ID",
                     help="their id in the people register: a teacher's classes are its groups, and concerns "
                          "about this person are never sent to this account")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input instead of generating one")
    add.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    add.set_defaults(func=_users_add)

    listing = users_sub.add_parser("list", help="list console accounts and their roles")
    listing.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    listing.set_defaults(func=_users_list)

    reset = users_sub.add_parser("reset-password",
                                 help="set a new one-time password (also unlocks the account)")
    reset.add_argument("username")
    reset.add_argument("--password-stdin", action="store_true")
    reset.add_argument("--reset-totp", action="store_true", help="also clear the second factor (lost phone)")
    reset.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
    reset.set_defaults(func=_users_reset)


def _err(message: str) -> int:
    print(f"schoolgate: {message}", file=sys.stderr)
    return 1


def _console(args: argparse.Namespace) -> int:
    from schoolgate.console.activation import ActivationError, inherited_sockets
    from schoolgate.console.server import ServeError, issue_console_cert, serve

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        if args.issue_cert:
            files = issue_console_cert(config)
            print(f"certificate: {files.cert}\nkey: {files.key}")
            return 0
        serve(config, plain_http=args.plain_http or config.console.plain_http, listen=args.listen,
              threads=args.threads, fds=inherited_sockets(args.listen_fd))
    except (ServeError, ActivationError) as err:
        return _err(str(err))
    return 0


def _session(config: Any) -> Any:
    from schoolgate.store.db import init_db, session_factory

    return session_factory(init_db(config.database_url))()


def _read_password(prompt_stdin: bool) -> str | None:
    if not prompt_stdin:
        return None
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _audit(session: Any, config: Any, action: str, user: Any, detail: dict[str, Any]) -> None:
    from schoolgate.console.accounts import audit_user

    audit_user(session, site=config.site.id, actor="system:cli", action=action, user=user, detail=detail)


def _users_add(args: argparse.Namespace) -> int:
    from schoolgate.console import accounts
    from schoolgate.services.permissions import ConsoleRole, parse_roles

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        roles = parse_roles(args.roles)
    except ValueError as err:
        return _err(str(err))
    given = _read_password(args.password_stdin)
    password = given if given is not None else accounts.generate_password()
    try:
        # Hashed before the transaction opens: it must not hold the database while it hashes.
        password_hash = accounts.new_password_hash(password)
    except accounts.AccountError as err:
        return _err(str(err))
    session = _session(config)
    try:
        user = accounts.create_user(session, username=args.username, display_name=args.name or args.username,
                                    roles=roles, password_hash=password_hash, email=args.email,
                                    # A trust admin's account belongs to no one school.
                                    site=None if ConsoleRole.TRUST_ADMIN in roles else config.site.id)
        if args.person:
            user.person_external_id = args.person.strip()[:100] or None
        _audit(session, config, "user.create", user,
               {"roles": sorted(user.role_names), "person": user.person_external_id})
        session.commit()
    except accounts.AccountError as err:
        session.rollback()
        return _err(str(err))
    finally:
        session.close()
    print(f"created {user.username} ({', '.join(sorted(user.role_names))})")
    if given is None:
        print(f"one-time password: {password}")
    if accounts.totp_required(user):
        print("two-factor sign-in will be set up at the first sign-in")
    return 0


def _users_list(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from schoolgate.store.models import ConsoleUser

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    session = _session(config)
    try:
        users = session.scalars(select(ConsoleUser).order_by(ConsoleUser.username)).all()
        for user in users:
            state = "active" if user.active else "disabled"
            totp = "totp" if user.totp_secret else "no-totp"
            print(f"{user.username}\t{','.join(sorted(user.role_names))}\t{state}\t{totp}\t{user.display_name}")
    finally:
        session.close()
    return 0


def _users_reset(args: argparse.Namespace) -> int:
    from schoolgate.console import accounts

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    from schoolgate.console import sessions

    given = _read_password(args.password_stdin)
    password = given if given is not None else accounts.generate_password()
    try:
        password_hash = accounts.new_password_hash(password)
    except accounts.AccountError as err:
        return _err(str(err))
    session = _session(config)
    try:
        user = accounts.find_user(session, args.username)
        if user is None:
            return _err(f"no console user {args.username!r}")
        user.password_hash = password_hash
        if args.reset_totp:
            user.totp_secret = None
        # Every browser signed in to the account signs in again with the new password.
        ended = sessions.end_all(session, user.id, now=datetime.now(UTC), reason=sessions.RESET_BY_ADMIN)
        _audit(session, config, "user.reset_password", user, {"reset_totp": bool(args.reset_totp),
                                                               "sessions_ended": ended})
        session.commit()
    except accounts.AccountError as err:
        session.rollback()
        return _err(str(err))
    finally:
        session.close()
    print(f"password reset for {user.username}")
    if given is None:
        print(f"one-time password: {password}")
    return 0
