"""The `schoolgate` command. Each area adds its own subcommands from its `cli` module.

An area's `cli.register(subparsers)` must stay cheap to import: heavy imports (mitmproxy,
Flask) happen inside the command that needs them, so `schoolgate policy check` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from schoolgate import __version__

AREAS = (
    "schoolgate.policy.cli",
    "schoolgate.store.cli",
    "schoolgate.identity.cli",
    "schoolgate.dns.cli",
    "schoolgate.proxy.cli",
    "schoolgate.gateway.cli",
    "schoolgate.lab.cli",
    "schoolgate.console.cli",
    "schoolgate.scheduler.cli",
    "schoolgate.lists.cli",
    "schoolgate.selftest.cli",
    "schoolgate.review.cli",
    "schoolgate.runner",
    "schoolgate.writers",
    "schoolgate.doctor",
    "schoolgate.backup",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schoolgate",
        description="Network filtering and monitoring appliance for UK primary schools.",
    )
    parser.add_argument("--version", action="version", version=f"schoolgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that area has no commands yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run one command. `parser`: one built earlier by build_parser (the supervisor builds it once
    before forking its daemons, so that none of them builds every area's commands again)."""
    parser = parser or build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = handler(args)
    return result
