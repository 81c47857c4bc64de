"""`schoolgate run`: every daemon in one foreground process group, for development and demos.

On an appliance systemd runs each daemon as its own hardened service. Here the daemons are
children of one supervisor: each is restarted if it dies, and Ctrl-C (or SIGTERM) stops them
all, letting each flush its events first.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# The daemons in start order; each is a `schoolgate` subcommand taking --config.
DAEMONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dns", ()),
    ("proxy", ()),
    ("console", ()),
    ("scheduler", ()),
)
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    history: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv)
        self.history.append(time.monotonic())


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("run", help="run every daemon in the foreground (development, demo)")
    parser.add_argument("--config", required=True, help="appliance configuration (schoolgate.toml)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="DAEMON", help="run only these daemons (repeatable)"
    )
    parser.add_argument(
        "--first-run", action="store_true", help="prepare the database and the first admin account if missing"
    )
    parser.set_defaults(func=_run)


def _available_commands() -> set[str]:
    from schoolgate.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def _schoolgate(*args: str) -> list[str]:
    # -P: never put the working directory on sys.path, where our dns/ folder would hide dnspython.
    return [sys.executable, "-P", "-m", "schoolgate", *args]


def _child_argv(name: str, config: str, extra: tuple[str, ...]) -> list[str]:
    return _schoolgate(name, "--config", config, *extra)


def _first_run(config: str, commands: set[str]) -> None:
    if "db" in commands:
        subprocess.run(_schoolgate("db", "upgrade", "--config", config), check=True)
    if "users" in commands:
        listed = subprocess.run(
            _schoolgate("users", "list", "--config", config),
            capture_output=True,
            text=True,
            check=False,
        )
        if listed.returncode == 0 and "admin" not in listed.stdout.split():
            subprocess.run(
                _schoolgate("users", "add", "admin", "--role", "admin", "--config", config),
                check=True,
            )


def _run(args: argparse.Namespace) -> int:
    config = str(Path(args.config).resolve())
    commands = _available_commands()
    wanted = [d for d in DAEMONS if (not args.only or d[0] in args.only)]
    missing = [name for name, _ in wanted if name not in commands]
    present = [(name, extra) for name, extra in wanted if name in commands]
    for name in missing:
        print(f"schoolgate run: the {name} daemon is not part of this build; not started", file=sys.stderr)
    if not present:
        print("schoolgate run: nothing to run", file=sys.stderr)
        return 1
    if args.first_run:
        _first_run(config, commands)

    children = [Child(name, _child_argv(name, config, extra)) for name, extra in present]
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        print(f"schoolgate run: starting {child.name}", file=sys.stderr)
        child.start()
    try:
        while not stopping:
            time.sleep(0.2)
            for child in children:
                if child.process is None:
                    if time.monotonic() >= child.next_start:
                        child.start()
                    continue
                code = child.process.poll()
                if code is None:
                    continue
                delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
                print(
                    f"schoolgate run: {child.name} exited with status {code}; restarting in {delay:g} s",
                    file=sys.stderr,
                )
                child.restarts += 1
                child.process = None
                child.next_start = time.monotonic() + delay
    finally:
        _stop_children(children)
    return 0


def _stop_children(children: list[Child]) -> None:
    running = [c for c in children if c.process is not None and c.process.poll() is None]
    for child in running:
        assert child.process is not None
        os.kill(child.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"schoolgate run: {child.name} did not stop in time; killing it", file=sys.stderr)
            os.kill(child.process.pid, signal.SIGKILL)
            child.process.wait()
