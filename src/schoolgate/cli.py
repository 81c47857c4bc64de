"""The `schoolgate` command. Each area adds its own subcommands from its `cli` module.

An area's `cli.register(subparsers)` must stay cheap to import: heavy imports (mitmproxy,
Flask) happen inside the command that needs them, so `schoolgate policy check` is quick.
Running one command builds only its own area's parser (`AREAS` says which area registers it):
the console, started by systemd when a connection wakes it, does not import every area's
commands before it serves. `schoolgate --help` (or a word that names no command) builds them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterable, Sequence

from schoolgate import __version__

# Each area's commands module, and the commands it registers (tests/test_cli.py holds each area
# to its list), in the order `schoolgate --help` shows them.
AREAS: dict[str, tuple[str, ...]] = {
    "schoolgate.policy.cli": ("policy",),
    "schoolgate.store.cli": ("audit", "db"),
    "schoolgate.identity.cli": ("devices", "directory", "identity"),
    "schoolgate.dns.cli": ("dns",),
    "schoolgate.proxy.cli": ("ca", "proxy"),
    "schoolgate.gateway.cli": ("net",),
    "schoolgate.lab.cli": ("lab",),
    "schoolgate.console.cli": ("console", "users"),
    "schoolgate.scheduler.cli": ("scheduler",),
    "schoolgate.lists.cli": ("lists",),
    "schoolgate.selftest.cli": ("selftest",),
    "schoolgate.review.cli": ("review-pack",),
    "schoolgate.runner": ("run",),
    "schoolgate.writers": ("events",),
    "schoolgate.doctor": ("doctor",),
    "schoolgate.backup": ("backup", "restore"),
}


def build_parser(areas: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The command line with every area's commands, or only those of `areas` (keys of AREAS)."""
    parser = argparse.ArgumentParser(
        prog="schoolgate",
        description="Network filtering and monitoring appliance for UK primary schools.",
    )
    parser.add_argument("--version", action="version", version=f"schoolgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in AREAS if areas is None else areas:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that area has no commands yet
                continue
            raise
        module.register(sub)
    return parser


def parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The parser `argv` needs: its command's area alone when its first word names a command."""
    first = argv[0] if argv else None
    for area, commands in AREAS.items():
        if first in commands:
            return build_parser([area])
    return build_parser()


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command. `parser`: one built earlier by build_parser (the supervisor builds it once
    before forking its daemons, so that none of them builds every area's commands again)."""
    if parser is None:
        parser = parser_for(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = handler(args)
    return result
