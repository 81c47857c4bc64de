"""One round of list updates: for each subscription, download (if changed), compile, install.

The round for one list either installs a new version completely (compiled, written, checked,
named in the manifest) or changes nothing but the manifest's note of what went wrong: a failed
download, a corrupt archive, a file over the cap, a server that hangs, a pin that does not
match, all keep the last good version in force and say why (`last_error`).

A 304 (not modified) installs nothing, unless the policy now maps the set's folders
differently from the version in force: then the kept download is compiled again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from schoolgate.lists.archive import ArchiveError
from schoolgate.lists.compile import CompiledVersion, CompileError, compile_download, file_digest
from schoolgate.lists.fetch import FetchError, fetch
from schoolgate.lists.state import ListState, ListStateError
from schoolgate.policy.liststore import StoreError
from schoolgate.policy.model import ListSource

INSTALLED = "installed"
NOT_MODIFIED = "not_modified"
FAILED = "failed"

_KEEP_PREVIOUS = 1  # versions kept besides the one in force (a daemon mid-reload may still open it)


@dataclass(frozen=True)
class Outcome:
    list_id: str
    result: str  # installed, not_modified or failed
    message: str
    version: str | None  # the version in force afterwards

    @property
    def failed(self) -> bool:
        return self.result == FAILED


def _mapping(source: ListSource) -> list[list[Any]]:
    return [[folder, list(mapped)] for folder, mapped in source.categories]


def _recorded(entry: Mapping[str, Any], source: ListSource) -> bool:
    """Whether the version in force was compiled for this source as the policy now writes it."""
    return (
        entry.get("mapping") == _mapping(source)
        and entry.get("format") == source.format
        and entry.get("services") == (list(source.services) if source.services is not None else None)
    )


class Updater:
    """Updates and imports for one state folder; `now` is passed in (the clock is the caller's)."""

    def __init__(self, state: ListState) -> None:
        self.state = state

    # -- the round ----------------------------------------------------------------------------
    def update(self, sources: Iterable[ListSource], now: datetime, *, force: bool = False) -> list[Outcome]:
        """Update every subscription in `sources` (local `file` lists are read by the policy)."""
        outcomes: list[Outcome] = []
        with self.state.locked():
            for source in sources:
                if source.url is None:
                    continue
                outcomes.append(self._update_one(source, now, force=force))
            self._tidy()
        return outcomes

    def import_path(self, source: ListSource, path: Path, now: datetime) -> Outcome:
        """Install a version from a local file, folder or archive, with the same checks."""
        with self.state.locked():
            entry = self._entry(source.id)
            try:
                if not path.exists():
                    raise CompileError(f"{path} not found")
                digest = file_digest(path)
                compiled = self._compile(source, path, now, digest)
                kept = self._keep_download(source.id, path) if path.is_file() else None
                outcome = self._install(source, compiled, now, {
                    "origin": f"imported from {path}", "fetched_at": now.isoformat(), "etag": None,
                    "last_modified": None, "download": kept,
                })
            except (ArchiveError, CompileError, StoreError, ListStateError, OSError, ValueError) as err:
                outcome = self._fail(source, entry, now, f"import of {path} refused: {err}")
            self._tidy()
            return outcome

    # -- one list -----------------------------------------------------------------------------
    def _entry(self, list_id: str) -> dict[str, Any]:
        entry = self.state.manifest()["lists"].get(list_id)
        return dict(entry) if isinstance(entry, dict) else {}

    def _update_one(self, source: ListSource, now: datetime, *, force: bool) -> Outcome:
        assert source.url is not None
        entry = self._entry(source.id)
        download = self.state.downloads / source.id
        have = bool(entry.get("version")) and download.is_file() and not force
        try:
            fetched = fetch(
                source.url,
                self.state.downloads,
                max_bytes=source.max_bytes,
                timeout_s=source.timeout_s,
                etag=entry.get("etag") if have else None,
                last_modified=entry.get("last_modified") if have else None,
                sha256=source.sha256,
            )
        except FetchError as err:
            return self._fail(source, entry, now, f"download from {source.url} failed: {err}")
        if fetched.not_modified:
            if _recorded(entry, source):
                entry.update(checked_at=now.isoformat(), verified_at=now.isoformat(), last_error=None,
                             last_error_at=None, url=source.url)
                self._save(source.id, entry)
                return Outcome(source.id, NOT_MODIFIED, "not modified since the version in force",
                               entry.get("version"))
            body = download  # the policy maps the set differently now: compile the kept download again
            digest = str(entry.get("download_sha256") or file_digest(download))
        else:
            assert fetched.path is not None and fetched.sha256 is not None
            body, digest = fetched.path, fetched.sha256
            if have and digest == entry.get("download_sha256") and _recorded(entry, source):
                # The server ignored the conditional request but sent the same bytes.
                with contextlib.suppress(OSError):
                    body.unlink()
                entry.update(checked_at=now.isoformat(), verified_at=now.isoformat(), last_error=None,
                             last_error_at=None, url=source.url, etag=fetched.etag,
                             last_modified=fetched.last_modified)
                self._save(source.id, entry)
                return Outcome(source.id, NOT_MODIFIED, "the same file as the version in force",
                               entry.get("version"))
        try:
            compiled = self._compile(source, body, now, digest)
            kept = self._keep_download(source.id, body, move=body != download)
            return self._install(source, compiled, now, {
                "origin": fetched.url, "fetched_at": now.isoformat() if not fetched.not_modified
                else entry.get("fetched_at"), "etag": fetched.etag, "last_modified": fetched.last_modified,
                "download": kept,
            })
        except (ArchiveError, CompileError, StoreError, ListStateError, OSError, ValueError) as err:
            return self._fail(source, entry, now, f"the download from {source.url} was refused: {err}")
        finally:
            if body != download:
                with contextlib.suppress(OSError):
                    body.unlink()

    def _compile(self, source: ListSource, path: Path, now: datetime, digest: str) -> CompiledVersion:
        seed = self.state.seed(create=True)
        assert seed is not None
        return compile_download(source, path, seed=seed, now=now, digest=digest)

    def _keep_download(self, list_id: str, path: Path, *, move: bool = False) -> str:
        """Keep the download as downloads/<id> (for a recompile after a mapping change)."""
        target = self.state.downloads / list_id
        if path == target:
            return target.name
        self.state.downloads.mkdir(parents=True, exist_ok=True)
        if move:
            os.replace(path, target)
        else:
            temporary = target.with_name(f".{list_id}.copy")
            shutil.copyfile(path, temporary)
            os.replace(temporary, target)
        return target.name

    def _install(self, source: ListSource, compiled: CompiledVersion, now: datetime,
                 fetched: Mapping[str, Any]) -> Outcome:
        self.state.install_version(compiled.name, compiled.pieces)
        info = compiled.info
        manifest = self.state.manifest()
        previous = manifest["lists"].get(source.id) or {}
        entry: dict[str, Any] = {
            "version": compiled.name,
            "previous_version": previous.get("version") if isinstance(previous, dict) else None,
            "url": source.url,
            "format": source.format,
            "services": list(source.services) if source.services is not None else None,
            "mapping": _mapping(source),
            "installed_at": now.isoformat(),
            "checked_at": now.isoformat(),
            "verified_at": now.isoformat(),  # last known to be the source's current version
            "download_sha256": info["download_sha256"],
            "size": compiled.size,
            "entries": info["entries"],
            "entries_by_source": info["entries_by_source"],
            "urls": info["urls"],
            "addresses": info["addresses"],
            "skipped": info["skipped"],
            "unmapped": info["unmapped"],
            "all_sources": info["all_sources"],
            "links_skipped": info["links_skipped"],
            "summary": info["summary"],
            "last_error": None,
            "last_error_at": None,
            **fetched,
        }
        manifest["lists"][source.id] = entry
        self.state.write_manifest(manifest)
        return Outcome(source.id, INSTALLED, f"installed {compiled.name}: {info['summary']}", compiled.name)

    def _fail(self, source: ListSource, entry: dict[str, Any], now: datetime, message: str) -> Outcome:
        entry.update(url=source.url, last_error=message, last_error_at=now.isoformat(), checked_at=now.isoformat())
        self._save(source.id, entry)
        version = entry.get("version")
        kept = f"; keeping {version}" if version else "; no version is installed yet"
        return Outcome(source.id, FAILED, message + kept, version)

    def _save(self, list_id: str, entry: Mapping[str, Any]) -> None:
        manifest = self.state.manifest()
        manifest["lists"][list_id] = dict(entry)
        self.state.write_manifest(manifest)

    def _tidy(self) -> None:
        """Remove versions neither in force nor the one before it."""
        keep: set[str] = set()
        for entry in self.state.manifest()["lists"].values():
            if isinstance(entry, dict):
                keep.update(str(v) for v in (entry.get("version"), entry.get("previous_version"))[: 1 + _KEEP_PREVIOUS]
                            if v)
        self.state.remove_versions(keep)
