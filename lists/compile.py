"""Compiling a downloaded list into one list store version.

The parsers are the policy's own (schoolgate.policy.lists), so a name means the same whether
it comes from a local file or a subscription. Names become 64-bit keys as they are read; for a
set of millions the keys are sorted and merged with numpy (about a second for five million,
against ten in pure Python). Only this module imports numpy, and only the `lists update` and
`lists import` commands run it: no daemon on the DNS or proxy path loads it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from schoolgate.lists.archive import ArchiveError, Limits, SetReport, read_set
from schoolgate.policy.lists import (
    ListStats,
    Network,
    adguard_names,
    parse_adguard_services,
    parse_list,
    parse_urls,
    split_addresses,
)
from schoolgate.policy.liststore import Buffer, StoreBuilder, bucket_bits_for, layout
from schoolgate.policy.model import ListSource


class CompileError(ValueError):
    """The download is not a usable list; the message says why."""


class NumpyBuilder(StoreBuilder):
    """The same store as StoreBuilder, sorted and merged with numpy (identical bytes)."""

    def pieces(self, info: Mapping[str, Any]) -> list[Buffer]:
        """The version's bytes, in pieces (the big sections are views of numpy arrays, not
        copies). Memory: about 20 bytes a name at the peak (keys, their sort order and the
        sorted keys), released as soon as each is done with."""
        import numpy as np

        total = sum(len(keys) for keys in self.names.values())
        keys = np.empty(total, dtype=np.uint64)
        codes = np.empty(total, dtype=np.uint8)  # the source, +64 for an exact-host entry
        at = 0
        for (source, exact), part in list(self.names.items()):
            size = len(part)
            keys[at : at + size] = np.frombuffer(part, dtype=np.uint64)
            codes[at : at + size] = source + (64 if exact else 0)
            at += size
            del self.names[(source, exact)]  # each part is freed once copied
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        codes = codes[order]
        del order
        repeated = keys[1:] == keys[:-1]
        if not repeated.any():
            # The usual case: every name in one folder only. A key's class is its code's.
            unique, key_codes = keys, codes
            code_pairs = {int(c): ((1 << c, 0) if c < 64 else (0, 1 << (c - 64))) for c in np.unique(codes).tolist()}
            key_pairs = list(code_pairs.values())

            def classes(number: Mapping[tuple[int, int], int], width: int) -> Buffer:
                lookup = np.zeros(128, dtype="<u1" if width == 1 else "<u2")
                for code, pair in code_pairs.items():
                    lookup[code] = number[pair]
                return lookup[key_codes].data.cast("B")
        else:
            unique, classes, key_pairs = _merge_repeats(np, keys, codes, repeated)
        del repeated
        count = len(unique)
        bits = bucket_bits_for(count)
        if bits:
            index = np.searchsorted(unique >> np.uint64(64 - bits), np.arange((1 << bits) + 1, dtype=np.uint64))
        else:
            index = np.array([0, count])
        return layout(
            self, count=count, key_bytes=unique.astype("<u8", copy=False).data.cast("B"),
            index_bytes=index.astype("<u4").data.cast("B"), key_pairs=key_pairs, class_bytes=classes,
            info=info,
        )


def _merge_repeats(np: Any, keys: Any, codes: Any, repeated: Any) -> tuple[Any, Any, list[tuple[int, int]]]:
    """Names listed more than once (in several folders, or with and without subdomains): one
    key each, its class the union of its entries' (suffix mask, exact mask)."""
    starts = np.flatnonzero(np.concatenate(([True], ~repeated)))
    shift = (codes & np.uint8(63)).astype(np.uint64)
    one = np.uint64(1)
    suffix_bits = np.where(codes < 64, np.left_shift(one, shift), np.uint64(0))
    exact_bits = np.where(codes >= 64, np.left_shift(one, shift), np.uint64(0))
    suffix = np.bitwise_or.reduceat(suffix_bits, starts)
    exact = np.bitwise_or.reduceat(exact_bits, starts)
    unique = keys[starts]
    pairs = np.empty(len(unique), dtype=[("s", "<u8"), ("e", "<u8")])
    pairs["s"] = suffix
    pairs["e"] = exact
    distinct, inverse = np.unique(pairs, return_inverse=True)
    key_pairs = [(int(s), int(e)) for s, e in distinct.tolist()]

    def classes(number: Mapping[tuple[int, int], int], width: int) -> Buffer:
        lookup = np.array([number[p] for p in key_pairs], dtype="<u1" if width == 1 else "<u2")
        per_key: memoryview = lookup[inverse.reshape(-1)].data
        return per_key.cast("B")

    return unique, classes, key_pairs


@dataclass
class CompiledVersion:
    """A version ready to install: its file name, its bytes in pieces, and what it holds."""

    name: str
    pieces: list[Buffer]
    info: dict[str, Any]
    stats: dict[str, ListStats] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(memoryview(p).nbytes for p in self.pieces)


def version_name(list_id: str, at: datetime, digest: str) -> str:
    return f"{list_id}-{at:%Y%m%dT%H%M%SZ}-{digest[:12]}.sgl"


def _feed(
    builder: StoreBuilder,
    source_number: int,
    fmt: str,
    lines: Iterable[str],
    stats: ListStats,
    *,
    services: Sequence[str] | None = None,
) -> None:
    exact: list[str] = []
    networks: list[Network] = []
    if fmt == "adguard-services":
        try:
            known = parse_adguard_services("".join(lines))
        except ValueError as err:
            raise CompileError(str(err)) from err
        chosen = list(services) if services is not None else list(known)
        missing = [s for s in chosen if s not in known]
        if missing:
            raise CompileError(f"the download has no service {missing[0]!r}")
        builder.add_names(adguard_names(known, chosen, stats, exact), source_number)
    else:
        builder.add_names(split_addresses(parse_list(fmt, lines, stats, exact), networks, stats), source_number)
    builder.add_names(exact, source_number, exact=True)
    for network in networks:
        builder.add_network(network, source_number)


def compile_download(
    source: ListSource,
    path: Path,
    *,
    seed: int,
    now: datetime,
    digest: str,
    limits: Limits | None = None,
    extra_info: Mapping[str, Any] | None = None,
) -> CompiledVersion:
    """Parse the download at `path` (a file, or for squidguard a folder or archive) in the
    list's format and lay it out as one version."""
    sources = [folder for folder, _ in source.categories] if source.format == "squidguard" else [""]
    builder = NumpyBuilder(seed, sources)
    stats: dict[str, ListStats] = {}
    report = SetReport()
    present: list[str] = []
    if source.format == "squidguard":
        number = {folder: i for i, folder in enumerate(sources)}
        for listed in read_set(path, limits or Limits(max_total_bytes=max(source.max_bytes * 16, 1 << 30)), report):
            if listed.category not in present:
                present.append(listed.category)
            if listed.category not in number:
                for _ in listed.lines:  # an unmapped folder: read past it, never use it
                    pass
                continue
            counted = stats.setdefault(listed.category, ListStats())
            if listed.kind == "domains":
                _feed(builder, number[listed.category], "plain", listed.lines, counted)
            else:
                for host, url_path in parse_urls(listed.lines, counted):
                    builder.add_url(host, url_path, number[listed.category])
        if not present:
            raise CompileError("no category folders with a domains or urls file: not a squidguard set")
    else:
        counted = stats.setdefault("", ListStats())
        try:
            with path.open(encoding="utf-8", errors="replace") as handle:
                _feed(builder, 0, source.format, handle, counted, services=source.services)
        except OSError as err:
            raise CompileError(f"cannot read the download: {err}") from err
    accepted = sum(s.accepted for s in stats.values())
    if accepted == 0:
        raise CompileError(f"the download holds no entries in {source.format} format")
    entries: Counter[str] = Counter()
    for folder, counted in stats.items():
        for category in source.categories_of(folder) or ("(no category)",):
            entries[category] += counted.accepted
    skipped: Counter[str] = Counter()
    for counted in stats.values():
        skipped.update(counted.skipped)
    used = [f for f in present if f in sources]
    unmapped = sorted(f for f in present if f not in sources) if source.format == "squidguard" else []
    name = version_name(source.id, now, digest)
    info: dict[str, Any] = {
        "list": source.id,
        "version": name,
        "format": source.format,
        "url": source.url,
        "compiled_at": now.isoformat(),
        "download_sha256": digest,
        "all_sources": present if source.format == "squidguard" else [""],
        "used_sources": used,
        "unmapped": unmapped,
        "mapping": [[folder, list(mapped)] for folder, mapped in source.categories],
        "entries": dict(sorted(entries.items())),
        "entries_by_source": {folder: s.accepted for folder, s in sorted(stats.items())},
        "urls": sum(s.urls for s in stats.values()),
        "addresses": sum(s.addresses for s in stats.values()),
        "skipped": dict(sorted(skipped.items())),
        "links_skipped": len(report.links),
        "duplicates_skipped": len(report.duplicates),
        "summary": _summary(stats, unmapped),
        **(extra_info or {}),
    }
    pieces = builder.pieces(info)
    return CompiledVersion(name, pieces, info, stats)


def _summary(stats: Mapping[str, ListStats], unmapped: Sequence[str]) -> str:
    accepted = sum(s.accepted for s in stats.values())
    urls = sum(s.urls for s in stats.values())
    addresses = sum(s.addresses for s in stats.values())
    skipped = sum(s.skipped_total for s in stats.values())
    text = f"{accepted} entries"
    if addresses:
        text += f"; {addresses} addresses (blocked by address)"
    if urls:
        text += f"; {urls} URL prefixes (enforced only where the proxy sees the path)"
    if skipped:
        text += f"; {skipped} lines skipped"
    if unmapped:
        text += f"; {len(unmapped)} folders not mapped"
    return text


def file_digest(path: Path) -> str:
    """The SHA-256 of a download (a file), or of a folder's list files in a stable order."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(file.read_bytes())
        return digest.hexdigest()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["ArchiveError", "CompileError", "CompiledVersion", "NumpyBuilder", "compile_download"]
