"""Reading policy files from disk: the only part of schoolgate.policy that does I/O.

`load_policy(path)` reads the TOML and the list files it names and hands them to the pure
compiler. Keeping the policy current in a running daemon (reloading on change, keeping the
last good version on a mistake) is schoolgate.live's job.
"""

from __future__ import annotations

import re
import secrets
import tomllib
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

from schoolgate.policy.compiler import Installed, ListReader, compile_policy, list_sources
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.model import ListSource
from schoolgate.tomlpos import ConfigError

_TOML_LINE = re.compile(r"\(at line (\d+), column (\d+)\)")


def list_reader(base: Path) -> ListReader:
    """Opens list files relative to the policy file's folder, line by line."""

    def read(file: str) -> Iterator[str]:
        target = Path(file)
        if not target.is_absolute():
            target = base / target
        # Lines in blocks of about a megabyte, chained in C: no Python step per line.
        return chain.from_iterable(_blocks(target))

    return read


def _blocks(target: Path) -> Iterator[list[str]]:
    with target.open(encoding="utf-8") as handle:
        while block := handle.readlines(1 << 20):
            yield block


def parse_toml(path: Path, text: str) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        found = _TOML_LINE.search(message)
        line = int(found.group(1)) if found else None
        plain = _TOML_LINE.sub("", message).strip()
        raise ConfigError(path, line, "", f"not valid TOML: {plain}") from err


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, None, "", "policy file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "", "the policy file is not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(path, None, "", f"cannot read the policy file: {err.strerror}") from err


def load_policy(path: str | Path, *, installed: Installed | None = None, seed: int | None = None) -> CompiledPolicy:
    """Read, check and compile a policy file; raise ConfigError naming file, line and field.

    `installed` gives each subscription's version in force (schoolgate.lists.state.Installed);
    without it subscriptions are empty (and `warnings` says so). `seed` keys the local lists'
    store: the list state's seed, so one hash of a name serves every list; random if None.
    """
    path = Path(path)
    text = _read(path)
    data = parse_toml(path, text)
    if seed is None:
        seed = secrets.randbits(64)
    return compile_policy(str(path), text, data, list_reader(path.parent.resolve()), installed=installed, seed=seed)


def load_list_sources(path: str | Path) -> tuple[ListSource, ...]:
    """The policy's [lists], checked, without compiling the rest of the policy."""
    path = Path(path)
    text = _read(path)
    return list_sources(str(path), text, parse_toml(path, text))


def list_files(path: Path, policy: CompiledPolicy) -> list[Path]:
    """The policy file and the local list files it reads (what a reload watches)."""
    files = [path]
    for entry in policy.lists:
        if not entry.file:  # a subscription: its versions are in the list store
            continue
        target = Path(entry.file)
        files.append(target if target.is_absolute() else path.parent / target)
    return files
