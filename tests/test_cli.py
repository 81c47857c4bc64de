"""The `schoolgate` command table: one command builds only its own area's parser, and AREAS
says truly which area registers which command."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

from schoolgate.cli import AREAS, build_parser, parser_for


def commands_of(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


@pytest.mark.parametrize("area", list(AREAS))
def test_each_area_registers_the_commands_the_table_lists(area: str) -> None:
    parser = argparse.ArgumentParser()
    importlib.import_module(area).register(parser.add_subparsers())
    assert commands_of(parser) == set(AREAS[area])


def test_no_command_is_listed_for_two_areas() -> None:
    listed = [command for commands in AREAS.values() for command in commands]
    assert len(listed) == len(set(listed))


@pytest.mark.parametrize(("argv", "commands"), [
    (["console", "--config", "c"], {"console", "users"}),
    (["users", "list", "--config", "c"], {"console", "users"}),
    (["dns", "--config", "c"], {"dns"}),
    (["run", "--config", "c"], {"run"}),
    (["review-pack", "--help"], {"review-pack"}),
    ([], None),  # no command: the help lists every one
    (["--help"], None),
    (["--version"], None),
    (["no-such-command"], None),  # argparse's error lists every command
])
def test_a_command_builds_only_its_own_areas_parser(argv: list[str], commands: set[str] | None) -> None:
    everything = {command for listed in AREAS.values() for command in listed}
    assert commands_of(parser_for(argv)) == (everything if commands is None else commands)
    assert commands_of(build_parser()) == everything


# The console as systemd starts it: the command line it parses imports no other area's commands.
IMPORTED_BY_PARSING = """
import json, sys
from schoolgate.cli import parser_for
parser_for(sys.argv[1:]).parse_args(sys.argv[1:])
print(json.dumps(sorted(sys.modules)))
"""


def test_parsing_the_consoles_command_line_imports_no_other_areas_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-c", IMPORTED_BY_PARSING, "console", "--config", "c", "--listen-fd", "3"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    imported = set(json.loads(done.stdout))
    others = {area for area in AREAS if area != "schoolgate.console.cli"}
    assert "schoolgate.console.cli" in imported
    assert not others & imported, sorted(others & imported)
