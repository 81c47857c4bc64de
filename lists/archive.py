"""Reading a squidguard list set: category folders holding `domains` and optionally `urls`, as a
folder or a (gzip, bzip2 or xz) tar archive such as UT1's blacklists.tar.gz.

Nothing is extracted to disk: the archive is read as a stream and each list file is handed on
line by line. The archive comes from the internet, so it is treated as hostile:

- a member whose name is absolute or climbs out with `..` refuses the whole archive (no honest
  list set has one);
- links (symbolic or hard) are never followed, only counted: UT1 ships aliases such as
  `aggressive -> agressif` as links, and the real folder is read under its own name;
- devices, pipes and other special members are skipped;
- a member larger than `max_member_bytes`, more than `max_members` members, or more than
  `max_total_bytes` unpacked in all refuses the archive (a decompression bomb).
"""

from __future__ import annotations

import codecs
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

LIST_FILES = ("domains", "urls")
_CATEGORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}").fullmatch


class ArchiveError(ValueError):
    """The list set cannot be read safely; the message says why."""


_BROKEN = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


@dataclass(frozen=True)
class Limits:
    max_total_bytes: int = 4 << 30
    max_member_bytes: int = 1 << 30
    max_members: int = 50_000


@dataclass
class SetReport:
    """What reading the set met besides list files."""

    links: list[str] = field(default_factory=list)
    other_files: int = 0
    special: int = 0
    duplicates: list[str] = field(default_factory=list)
    unpacked_bytes: int = 0


@dataclass(frozen=True)
class ListFile:
    category: str
    kind: str  # "domains" or "urls"
    lines: Iterator[str]


def _text(raw: IO[bytes]) -> Iterator[str]:
    """The lines of a binary stream, a megabyte at a time. Bytes that are not UTF-8 become
    U+FFFD, so the line is skipped as "not a domain name" and counted, instead of one bad byte
    losing a category of millions. (A streamed tar member cannot sit under a TextIOWrapper.)"""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    rest = ""
    while True:
        try:
            block = raw.read(1 << 20)
        except _BROKEN as err:
            raise ArchiveError(f"the archive is damaged: {err}") from err
        if not block:
            break
        lines = (rest + decoder.decode(block)).split("\n")
        rest = lines.pop()
        yield from lines
    rest += decoder.decode(b"", final=True)
    if rest:
        yield rest


def _place(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(category, kind) of a list file's path parts, or None if the path is not one."""
    if len(parts) < 2 or parts[-1] not in LIST_FILES or not _CATEGORY(parts[-2]):
        return None
    return parts[-2], parts[-1]


def read_set(path: Path, limits: Limits = Limits(), report: SetReport | None = None) -> Iterator[ListFile]:
    """Yield each list file of the set at `path` (a folder or an archive). Consume each file's
    lines before asking for the next: an archive is read as one stream."""
    report = report if report is not None else SetReport()
    if path.is_dir():
        yield from _read_folder(path, limits, report)
    else:
        yield from _read_archive(path, limits, report)


def _read_folder(root: Path, limits: Limits, report: SetReport) -> Iterator[ListFile]:
    seen: set[tuple[str, str]] = set()
    members = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        for name in list(dirs):
            if (here / name).is_symlink():
                report.links.append(str((here / name).relative_to(root)))
        dirs.sort()
        for name in sorted(files):
            file = here / name
            members += 1
            if members > limits.max_members:
                raise ArchiveError(f"more than {limits.max_members} files in the list set")
            relative = file.relative_to(root)
            if file.is_symlink():
                report.links.append(str(relative))
                continue
            if not file.is_file():
                report.special += 1
                continue
            place = _place(relative.parts)
            if place is None:
                report.other_files += 1
                continue
            size = file.stat().st_size
            if size > limits.max_member_bytes:
                raise ArchiveError(f"{relative} is {size} bytes, more than the {limits.max_member_bytes} allowed")
            report.unpacked_bytes += size
            if report.unpacked_bytes > limits.max_total_bytes:
                raise ArchiveError(f"the list set holds more than {limits.max_total_bytes} bytes")
            if place in seen:
                report.duplicates.append(str(relative))
                continue
            seen.add(place)
            with file.open("rb") as handle:
                yield ListFile(place[0], place[1], _text(handle))


def _read_archive(path: Path, limits: Limits, report: SetReport) -> Iterator[ListFile]:
    seen: set[tuple[str, str]] = set()
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for count, member in enumerate(archive, start=1):
                if count > limits.max_members:
                    raise ArchiveError(f"more than {limits.max_members} members in the archive")
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise ArchiveError(f"the archive holds an unsafe path {member.name!r}; refused")
                report.unpacked_bytes += max(member.size, 0)
                if member.size > limits.max_member_bytes:
                    raise ArchiveError(
                        f"{member.name} is {member.size} bytes unpacked, "
                        f"more than the {limits.max_member_bytes} allowed"
                    )
                if report.unpacked_bytes > limits.max_total_bytes:
                    raise ArchiveError(f"the archive unpacks to more than {limits.max_total_bytes} bytes")
                if member.issym() or member.islnk():
                    report.links.append(member.name)
                    continue
                if member.isdir():
                    continue
                if not member.isfile():
                    report.special += 1
                    continue
                place = _place(tuple(p for p in name.parts if p not in ("", ".")))
                if place is None:
                    report.other_files += 1
                    continue
                if place in seen:
                    report.duplicates.append(member.name)
                    continue
                seen.add(place)
                handle = archive.extractfile(member)
                if handle is None:  # pragma: no cover - a regular file always has data
                    continue
                yield ListFile(place[0], place[1], _text(handle))
    except _BROKEN as err:
        if isinstance(err, FileNotFoundError):
            raise ArchiveError(f"{path} not found") from err
        raise ArchiveError(f"not a readable tar archive (.tar.gz): {err}") from err
