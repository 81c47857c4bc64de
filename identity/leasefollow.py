"""Following the school's DHCP lease files as the servers write them.

Each file is looked at every few seconds; a file that changed is read and its leases merged
into the store (schoolgate.identity.leasestore), which makes reading it again harmless.
dhcpd and Kea append to their files and rewrite them now and then: while the file only grows,
just the new part is read (from where the last whole record ended); a rewritten file (new
inode, or shorter) is read from the start. Windows exports and dnsmasq files are rewritten
whole each time and read whole. A file that is missing or unreadable is reported once and
tried again; one that is not a lease file of its format is reported and skipped until it
changes. Nothing here throws past `poll`: the daemon keeps following the other files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.identity.exports import ExportError, decode_export
from schoolgate.identity.leaseformats import FORMATS, LeaseFile, LeaseFormatError, parse_lease_file
from schoolgate.identity.leasestore import record_leases

log = logging.getLogger(__name__)

APPENDED = {"isc", "kea"}  # formats whose servers append, so the new part can be read alone


class LeaseSpecError(ValueError):
    pass


def parse_spec(spec: str) -> tuple[str, Path]:
    """`isc:/var/lib/dhcp/dhcpd.leases` -> ("isc", path)."""
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in FORMATS or not path:
        raise LeaseSpecError(f"{spec!r}: write FORMAT:PATH, FORMAT one of {', '.join(FORMATS)}")
    return fmt, Path(path)


@dataclass
class FollowedFile:
    format: str
    path: Path
    inode: int | None = None
    size: int = -1
    mtime_ns: int = -1
    offset: int = 0  # bytes of whole records read so far (appended formats)
    header: str = ""  # Kea: the header line, put in front of each new part
    problem: str = ""  # the last trouble reported, so it is reported once
    counters: dict[str, int] = field(default_factory=lambda: {"reads": 0, "leases": 0, "bad_records": 0,
                                                              "errors": 0})


class LeaseFollower:
    def __init__(self, specs: list[str], sessions: sessionmaker[Session], site: str, *, tz: tzinfo,
                 now: Callable[[], datetime], day_first: bool | None = None) -> None:
        self.files = [FollowedFile(*parse_spec(spec)) for spec in specs]
        self.sessions = sessions
        self.site = site
        self.tz = tz
        self.now = now
        self.day_first = day_first

    def poll(self) -> int:
        """Read what changed; returns how many leases were merged."""
        merged = 0
        for followed in self.files:
            try:
                merged += self._poll_one(followed)
            except (OSError, ExportError, LeaseFormatError, SQLAlchemyError) as err:
                followed.counters["errors"] += 1
                self._report(followed, f"{followed.path}: {err}")
        return merged

    def _report(self, followed: FollowedFile, problem: str) -> None:
        if problem != followed.problem:
            log.warning("lease file %s", problem)
            followed.problem = problem

    def _poll_one(self, followed: FollowedFile) -> int:
        stat = os.stat(followed.path)
        if (stat.st_ino, stat.st_size, stat.st_mtime_ns) == (followed.inode, followed.size, followed.mtime_ns):
            return 0
        rewritten = stat.st_ino != followed.inode or stat.st_size < followed.offset
        if followed.format not in APPENDED or rewritten:
            followed.offset, followed.header = 0, ""
        with open(followed.path, "rb") as handle:
            handle.seek(followed.offset)
            data = handle.read()
        parsed, consumed_bytes = self._parse(followed, data)
        if parsed.leases:
            with self.sessions.begin() as session:
                report = record_leases(session, self.site, parsed, origin=str(followed.path), now=self.now())
            if report.changed:
                log.info("%s: %s", followed.path, report.summary())
        for problem in parsed.problems[:20]:
            log.warning("%s: %s", followed.path, problem)
        followed.counters["reads"] += 1
        followed.counters["leases"] += len(parsed.leases)
        followed.counters["bad_records"] += len(parsed.problems)
        followed.offset += consumed_bytes
        # Only what was read counts as seen: a record still being written is read next time.
        followed.inode, followed.mtime_ns = stat.st_ino, stat.st_mtime_ns
        followed.size = stat.st_size if followed.format not in APPENDED else followed.offset
        followed.problem = ""
        return len(parsed.leases)

    def _parse(self, followed: FollowedFile, data: bytes) -> tuple[LeaseFile, int]:
        if followed.format not in APPENDED:
            text, _encoding = decode_export(data, what=str(followed.path))
            return parse_lease_file(text, followed.format, tz=self.tz, day_first=self.day_first), len(data)
        # Appended files are UTF-8 from Unix servers; surrogateescape keeps a byte count exact.
        text = data.decode("utf-8", "surrogateescape")
        prefix = ""
        if followed.format == "kea":
            if not followed.header:
                followed.header = text.split("\n", 1)[0] + "\n" if "\n" in text else ""
            elif followed.offset:
                prefix = followed.header
        parsed = parse_lease_file(prefix + text, followed.format, tz=self.tz)
        consumed = max(0, parsed.consumed - len(prefix))
        return parsed, len(text[:consumed].encode("utf-8", "surrogateescape"))

    def stats(self) -> list[dict[str, Any]]:
        return [{"file": str(f.path), "format": f.format, **f.counters, "problem": f.problem} for f in self.files]
