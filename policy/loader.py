"""Reading policy files from disk: the only part of schoolgate.policy that does I/O.

`load_policy(path)` reads the TOML and the list files it names and hands them to the pure
compiler. `PolicyHolder` is what the daemons share: it reloads when the policy file or one of
its list files changes, and if the new version has a mistake it keeps answering with the last
good policy and exposes the error, so a typo never switches the filter off.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from schoolgate.policy.compiler import Installed, ListReader, compile_policy, list_sources
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.model import ListSource
from schoolgate.policy.types import Ban, PolicyException, SiteBlock
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


def _watched_files(path: Path, policy: CompiledPolicy) -> list[Path]:
    files = [path]
    for entry in policy.lists:
        if not entry.file:  # a subscription: its versions are in the list store
            continue
        target = Path(entry.file)
        files.append(target if target.is_absolute() else path.parent / target)
    return files


def _stamp(files: Iterable[Path]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for file in files:
        try:
            st = os.stat(file)
        except OSError:
            out.append((-1, -1))
        else:
            out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass(frozen=True)
class Overlaid:
    exceptions: tuple[PolicyException, ...] = ()
    bans: tuple[Ban, ...] = ()
    blocks: tuple[SiteBlock, ...] = ()


class PolicyHolder:
    """The current good policy for a daemon, reloaded when its files change.

    `policy` is the compiled policy with the latest overlay applied; reading it is a plain
    attribute read, so request handlers never wait for a reload. `error` is the mistake that
    stopped the latest reload (None when the files on disk are in force).
    """

    def __init__(
        self,
        path: str | Path,
        loader: Callable[[Path], CompiledPolicy] = load_policy,
    ) -> None:
        self.path = Path(path)
        self._loader = loader
        self._lock = threading.Lock()
        self._compiled: CompiledPolicy | None = None
        self._overlay = Overlaid()
        self._stamp: tuple[tuple[int, int], ...] = ()
        self._files: list[Path] = [self.path]
        self.policy: CompiledPolicy | None = None
        self.error: ConfigError | None = None
        self.generation = 0  # counts successful loads

    def load(self) -> CompiledPolicy:
        """First load: raises ConfigError if the policy is bad (a daemon cannot start without one)."""
        with self._lock:
            stamp = _stamp([self.path])
            compiled = self._loader(self.path)
            self._install(compiled, stamp)
            assert self.policy is not None
            return self.policy

    def _install(self, compiled: CompiledPolicy, policy_stamp: tuple[tuple[int, int], ...]) -> None:
        self._compiled = compiled
        self._files = _watched_files(self.path, compiled)
        # Stamp the list files now; the policy file's stamp was taken before reading it so a
        # change made while compiling is seen next time.
        self._stamp = policy_stamp + _stamp(self._files[1:])
        self.error = None
        self.generation += 1
        self._apply()

    def _apply(self) -> None:
        if self._compiled is None:
            return
        overlay = self._overlay
        if overlay.exceptions or overlay.bans or overlay.blocks:
            self.policy = self._compiled.with_overlay(overlay.exceptions, overlay.bans, overlay.blocks)
        else:
            self.policy = self._compiled

    def changed(self) -> bool:
        return _stamp(self._files) != self._stamp

    def reload_if_changed(self) -> bool:
        """Reload if a file changed. True if a new policy is now in force; on a mistake the
        old policy stays, `error` says what is wrong, and False is returned."""
        if not self.changed():
            return False
        with self._lock:
            stamp = _stamp([self.path])
            try:
                compiled = self._loader(self.path)
            except ConfigError as err:
                self.error = err
                # Remember the broken version so it is not recompiled on every poll.
                self._stamp = stamp + _stamp(self._files[1:])
                return False
            self._install(compiled, stamp)
            return True

    def set_overlay(
        self,
        exceptions: Iterable[PolicyException] = (),
        bans: Iterable[Ban] = (),
        blocks: Iterable[SiteBlock] = (),
    ) -> None:
        """Lay the database's exceptions, bans and site blocks over the compiled policy."""
        with self._lock:
            self._overlay = Overlaid(tuple(exceptions), tuple(bans), tuple(blocks))
            self._apply()
