"""`schoolgate events`: the event-writing process `schoolgate run` starts for the daemons whose
events it has the channels of.

    schoolgate events --config F --source dns=FD --source proxy=FD [--watch] [--scheduler]

Each `--source` is one daemon's channel (schoolgate.store.events.channel), inherited as
descriptor FD: its reading end, made by the supervisor before it started the daemon, whose
workers hold the sending end. Each is written with that daemon's own settings (its batch size,
bursts and page cache, its `daemon_status` row), in one process (schoolgate.store.events.writing):
with the DNS daemon and the proxy under one supervisor, one writing process costs the idle
appliance one Python process less than a writer each. With `--watch` it also runs net watch
(schoolgate.gateway.circumvention.keep_watching) in a thread beside them: the one process that
records what devices did, one Python process fewer again than net watch on its own. With
`--scheduler` the scheduler (schoolgate.scheduler.runner.keep_scheduling) runs there too, in
threads of its own: its jobs wake a few times a minute, and a process of its own cost the idle
appliance about 24 MB (bench/memory.py). Each companion that fails is started again by itself
(schoolgate.companions), never ending the writing.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schoolgate.store.events.writing import Companion, Source, WritingSettings

# The daemons whose events a writing process can write: where their settings are.
SETTINGS_OF: dict[str, str] = {"dns": "schoolgate.dns.daemon", "proxy": "schoolgate.proxy.events"}


def settings_of(daemon: str) -> WritingSettings:
    """How `daemon`'s events are written (its module's WRITER_SETTINGS)."""
    if daemon not in SETTINGS_OF:
        raise ValueError(f"--source {daemon}: no such daemon writes events (one of {', '.join(SETTINGS_OF)})")
    settings: WritingSettings = importlib.import_module(SETTINGS_OF[daemon]).WRITER_SETTINGS
    return settings


def source_argument(text: str) -> tuple[str, int]:
    """`dns=7` -> ("dns", 7)."""
    daemon, sep, fd = text.partition("=")
    if not sep or not fd.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give DAEMON=FD, e.g. dns=7")
    if daemon not in SETTINGS_OF:
        raise argparse.ArgumentTypeError(f"{text!r}: {daemon!r} is not one of {', '.join(SETTINGS_OF)}")
    return daemon, int(fd)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "events",
        help="write the events the daemons hand over on their channels (`schoolgate run` starts it)",
        description="Write the events the DNS daemon's and the proxy's workers hand over on the channels "
        "inherited from `schoolgate run`, each with its daemon's settings and status row, until every "
        "sender has gone or SIGTERM.",
    )
    parser.add_argument("--config", required=True, help="the appliance configuration (schoolgate.toml)")
    parser.add_argument(
        "--source", action="append", required=True, type=source_argument, metavar="DAEMON=FD",
        help="a daemon's channel, inherited as descriptor FD (repeatable): " + ", ".join(SETTINGS_OF),
    )
    parser.add_argument(
        "--watch", action="store_true",
        help="also run net watch (the NFLOG reader, the blocked address sets and the census) beside them",
    )
    parser.add_argument(
        "--scheduler", action="store_true",
        help="also run the scheduler (digest, alerts, expiry, retention, self-tests) beside them",
    )
    parser.set_defaults(func=_run)


def sources_from(pairs: list[tuple[str, int]]) -> list[Source]:
    """The sources named on the command line, each with its daemon's settings."""
    from schoolgate.store.events.channel import inherited_end
    from schoolgate.store.events.writing import Source

    daemons = [daemon for daemon, _ in pairs]
    if len(set(daemons)) != len(daemons):
        raise ValueError(f"--source: each daemon once ({', '.join(daemons)})")
    return [Source(inherited_end(fd, f"--source {daemon}={fd}"), settings_of(daemon)) for daemon, fd in pairs]


def _run(args: argparse.Namespace) -> int:
    from schoolgate.config import load_config_or_report
    from schoolgate.store.events.writing import run_writing_sources

    config = load_config_or_report(args.config, "schoolgate events")
    if config is None:
        return 2
    try:
        sources = sources_from(args.source)
    except ValueError as err:
        print(f"schoolgate events: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("SCHOOLGATE_LOG_LEVEL", "INFO").upper(),
        format=f"%(asctime)s %(levelname)s [events {os.getpid()}] %(name)s: %(message)s",
        force=True,
    )
    companions: list[tuple[str, Companion]] = []
    if args.watch:
        from schoolgate.gateway.circumvention import keep_watching

        companions.append(("net watch", functools.partial(keep_watching, config)))
    if args.scheduler:
        from schoolgate.scheduler.runner import keep_scheduling

        companions.append(("scheduler", functools.partial(keep_scheduling, config)))
    return run_writing_sources(config, config.database_url, sources, companions)
