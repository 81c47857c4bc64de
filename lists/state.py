"""The list state folder: compiled versions, the manifest that names the ones in force, the seed.

    <dir>/manifest.json          which version of each list is in force, and how each list stands
    <dir>/versions/<file>.sgl    compiled list versions (schoolgate.policy.liststore layout)
    <dir>/downloads/<id>         the last good download of each subscription (for a recompile)
    <dir>/seed                   the appliance's 64-bit key seed (random, made once)
    <dir>/.lock                  held while an update or import runs

Every file is written to a temporary name in the same folder, flushed to disk and renamed over
the old one, so a reader sees the old file or the new one, never half of either. A version goes
in force when the manifest that names it is renamed into place; the daemons watch the manifest.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import mmap
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from schoolgate.policy.liststore import Buffer, ListStore, StoreError
from schoolgate.policy.model import ListSource

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
VERSION_SUFFIX = ".sgl"
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.sgl").fullmatch


class ListStateError(RuntimeError):
    """The state folder cannot be used (missing, unreadable, or a version is damaged)."""


def state_dir_of(config: Any) -> Path:
    """The list state folder of an appliance configuration (`[lists] dir`, else data_dir/lists)."""
    lists = getattr(config, "lists", None)
    configured = getattr(lists, "dir", "") if lists is not None else ""
    return Path(configured) if configured else Path(config.data_dir) / "lists"


def write_atomic(path: Path, pieces: Iterable[Buffer], *, mode: int = 0o640) -> int:
    """Write `pieces` to `path` through a temporary file in the same folder: flushed, synced,
    renamed, and the folder synced. Returns the size written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    size = 0
    try:
        with os.fdopen(handle, "wb") as out:
            for piece in pieces:
                out.write(piece)
                size += memoryview(piece).nbytes
            out.flush()
            os.fchmod(out.fileno(), mode)
            # The folder's group (schoolgate), so the daemons can read what root wrote.
            with contextlib.suppress(OSError):
                os.fchown(out.fileno(), -1, os.stat(path.parent).st_gid)
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _sync_dir(path.parent)
    return size


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Mapped:
    """One version file mapped read-only: the store over it, and the file it came from."""

    name: str
    store: ListStore
    inode: tuple[int, int]  # (device, inode): processes reading one version share one inode


class ListState:
    """One appliance's list state folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.versions = self.folder / "versions"
        self.downloads = self.folder / "downloads"
        self.manifest_path = self.folder / MANIFEST

    # -- the manifest -------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The manifest ({"format", "lists": {id: entry}}); an empty one if there is none yet."""
        try:
            text = self.manifest_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"format": MANIFEST_FORMAT, "lists": {}}
        except OSError as err:
            raise ListStateError(f"cannot read {self.manifest_path}: {err.strerror}") from err
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ListStateError(f"{self.manifest_path} is damaged: {err}") from err
        if not isinstance(data, dict) or not isinstance(data.get("lists"), dict):
            raise ListStateError(f"{self.manifest_path} is damaged: no lists")
        return data

    def write_manifest(self, data: Mapping[str, Any]) -> None:
        body = json.dumps({**data, "format": MANIFEST_FORMAT}, indent=1, sort_keys=True, default=str) + "\n"
        write_atomic(self.manifest_path, [body.encode("utf-8")])

    def stamp(self) -> tuple[int, int, int]:
        """What changes when the manifest is replaced (inode, mtime, size); zeros if absent."""
        try:
            st = os.stat(self.manifest_path)
        except OSError:
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # -- the seed -----------------------------------------------------------------------------
    def seed(self, *, create: bool = False) -> int | None:
        """The appliance's key seed: the same for every version, so a daemon hashes a host's
        suffixes once for all lists. Random, made once, readable only by schoolgate."""
        path = self.folder / "seed"
        try:
            return int(path.read_text(encoding="ascii").strip(), 16)
        except FileNotFoundError:
            if not create:
                return None
        except (OSError, ValueError) as err:
            raise ListStateError(f"cannot read the list seed {path}: {err}") from err
        value = secrets.randbits(64)
        write_atomic(path, [f"{value:016x}\n".encode("ascii")], mode=0o640)
        return int(path.read_text(encoding="ascii").strip(), 16)

    # -- versions -----------------------------------------------------------------------------
    def version_path(self, name: str) -> Path:
        if not _VERSION_NAME(name):
            raise ListStateError(f"{name!r} is not a list version file name")
        return self.versions / name

    def install_version(self, name: str, pieces: Iterable[Buffer]) -> Path:
        """Write a compiled version (not yet in force: the manifest decides that), then check
        that it reads back whole."""
        path = self.version_path(name)
        write_atomic(path, pieces)
        try:
            mapped = self.open_version(name)
            try:
                verify_store(mapped.store)
            finally:
                mapped.store.release()
        except (StoreError, ListStateError):
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return path

    def open_version(self, name: str) -> Mapped:
        """Map a version read-only. The kernel shares its pages between every process that maps
        it, and the mapping stays valid after the file is replaced or removed."""
        path = self.version_path(name)
        try:
            with path.open("rb") as handle:
                st = os.fstat(handle.fileno())
                if st.st_size == 0:
                    raise ListStateError(f"list version {name} is empty")
                # MAP_POPULATE: the page tables are filled now, at start-up, not by a page
                # fault in the middle of answering a query (the pages are shared with every
                # other process that maps the version, and counted once).
                buffer = mmap.mmap(handle.fileno(), 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                                   prot=mmap.PROT_READ)
        except FileNotFoundError as err:
            raise ListStateError(f"list version {name} is missing from {self.versions}") from err
        except OSError as err:
            raise ListStateError(f"cannot map list version {name}: {err.strerror}") from err
        try:
            store = ListStore(buffer)
        except StoreError as err:
            problem = str(err)
        else:
            return Mapped(name, store, (st.st_dev, st.st_ino))
        # Not closed here: views the failed reader made may still hold it; dropping the last
        # reference unmaps it.
        del buffer
        raise ListStateError(f"list version {name}: {problem}")

    def remove_versions(self, keep: Iterable[str]) -> list[str]:
        """Delete version files not in `keep` (a daemon still mapping one keeps its pages)."""
        wanted = set(keep)
        removed: list[str] = []
        if not self.versions.is_dir():
            return removed
        for path in self.versions.iterdir():
            if path.suffix == VERSION_SUFFIX and path.name not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path.name)
        return removed

    # -- one update at a time ------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, *, wait: bool = False) -> Iterator[None]:
        """Hold the state folder's lock (an update or import); raise if another holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        handle: IO[bytes] = (self.folder / ".lock").open("ab")
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as err:
                if err.errno in (errno.EAGAIN, errno.EACCES):
                    raise ListStateError("another list update is running; try again when it has finished") from err
                raise
            yield
        finally:
            handle.close()


def verify_store(store: ListStore) -> None:
    """The whole structure checked before a version goes live: with numpy for millions of keys
    (only the commands that install versions get here, never a daemon), else in Python."""
    if store.key_count < 100_000:
        store.verify()
        return
    import numpy as np

    index, keys, classes, shift = store.arrays()
    sorted_keys = np.frombuffer(keys, dtype=np.uint64)
    if not bool(np.all(sorted_keys[1:] > sorted_keys[:-1])):
        raise StoreError("damaged list store: keys out of order")
    buckets = np.frombuffer(index, dtype=np.uint32)
    expected = np.searchsorted(sorted_keys >> np.uint64(shift), np.arange(len(buckets), dtype=np.uint64))
    if not np.array_equal(buckets, expected):
        raise StoreError("damaged list store: the bucket index does not match the keys")
    per_key = np.frombuffer(classes, dtype=np.uint8 if classes.itemsize == 1 else np.uint16)
    if len(per_key) and int(per_key.max()) >= len(store.classes):
        raise StoreError("damaged list store: a key names a class that does not exist")
    store.verify_entries()


class Installed:
    """The versions in force, mapped, for compiling a policy: `installed(source)` is the store of
    a subscription (or None). Mappings are kept while the manifest names the same version, so a
    reload that changes only the policy file maps nothing again."""

    def __init__(self, state: ListState) -> None:
        self.state = state
        self._mapped: dict[str, Mapped] = {}
        self.errors: dict[str, str] = {}  # list id -> why its version could not be used

    def refresh(self) -> dict[str, Any]:
        """Read the manifest and map what it names; returns the manifest."""
        manifest = self.state.manifest()
        self.errors = {}
        mapped: dict[str, Mapped] = {}
        for list_id, entry in manifest["lists"].items():
            name = entry.get("version") if isinstance(entry, dict) else None
            if not name:
                continue
            known = self._mapped.get(list_id)
            if known is not None and known.name == name:
                mapped[list_id] = known
                continue
            try:
                mapped[list_id] = self.state.open_version(str(name))
            except ListStateError as err:
                self.errors[list_id] = str(err)
                if known is not None:  # keep the version already in use
                    mapped[list_id] = known
        self._mapped = mapped
        return manifest

    def __call__(self, source: ListSource) -> ListStore | None:
        found = self._mapped.get(source.id)
        return found.store if found is not None else None

    def mapped(self) -> dict[str, Mapped]:
        return dict(self._mapped)
