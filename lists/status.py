"""How each list stands: what `lists status`, `doctor`, the console dashboard, the technician's
e-mail and the self-test read.

    from schoolgate.lists.status import read_statuses
    for status in read_statuses(config, now):
        status.state        # "ok", "stale", "missing", "failing" (ok, but the last attempt failed)
        status.to_dict()    # JSON-ready

A list is stale when its version has not been confirmed current (downloaded, or answered
"not modified") for more than `[lists] stale_days` days; a subscription with no version yet is
missing. Local `file` lists are read with the policy and are always current.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from schoolgate.policy.model import ListSource

OK = "ok"
STALE = "stale"
MISSING = "missing"
FAILING = "failing"


@dataclass(frozen=True)
class ListStatus:
    id: str
    kind: str  # "subscription" or "file"
    source: str  # the URL or the file
    format: str
    state: str
    version: str | None = None
    installed_at: datetime | None = None
    verified_at: datetime | None = None  # last confirmed to be the source's current version
    checked_at: datetime | None = None  # last attempt, successful or not
    age_days: float | None = None  # since verified_at
    entries: dict[str, int] = field(default_factory=dict)  # per policy category
    urls: int = 0  # host/path prefixes: enforced only where the proxy sees the path
    addresses: int = 0
    skipped: int = 0
    unmapped: tuple[str, ...] = ()  # the set's folders the policy does not map (not used)
    last_error: str | None = None
    last_error_at: datetime | None = None

    @property
    def needs_attention(self) -> bool:
        return self.state != OK

    def describe(self) -> str:
        """One line for a technician."""
        if self.kind == "file":
            return f"{self.id}: local file {self.source}, read with the policy"
        if self.state == MISSING:
            text = f"{self.id}: no version installed yet ({self.source})"
        else:
            total = sum(self.entries.values())
            age = f"{self.age_days:.1f} days" if self.age_days is not None else "unknown age"
            text = f"{self.id}: {self.version}, {total} entries, confirmed current {age} ago"
            if self.state == STALE:
                text += " (STALE)"
        if self.last_error:
            text += f"; last error: {self.last_error}"
        return text

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("installed_at", "verified_at", "checked_at", "last_error_at"):
            value = out[key]
            out[key] = value.isoformat() if value is not None else None
        out["unmapped"] = list(self.unmapped)
        out["url_entries_note"] = "URL prefixes are enforced only where the proxy sees the path, never by DNS"
        return out


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def list_statuses(
    sources: Iterable[ListSource], manifest: Mapping[str, Any], now: datetime, *, stale_days: float
) -> list[ListStatus]:
    """The status of each of the policy's lists (pure: the manifest and the instant are given)."""
    entries = manifest.get("lists", {}) if isinstance(manifest, Mapping) else {}
    out: list[ListStatus] = []
    for source in sources:
        if source.url is None:
            out.append(ListStatus(id=source.id, kind="file", source=str(source.file), format=source.format, state=OK))
            continue
        entry = entries.get(source.id)
        entry = entry if isinstance(entry, Mapping) else {}
        version = entry.get("version") or None
        verified = _when(entry.get("verified_at")) or _when(entry.get("installed_at"))
        age = (now - verified).total_seconds() / 86400 if verified is not None else None
        error = entry.get("last_error") or None
        if not version:
            state = MISSING
        elif age is None or age > stale_days:
            state = STALE
        elif error:
            state = FAILING
        else:
            state = OK
        raw_counts = entry.get("entries")
        counts: Mapping[str, Any] = raw_counts if isinstance(raw_counts, Mapping) else {}
        raw_skipped = entry.get("skipped")
        skipped: Mapping[str, Any] = raw_skipped if isinstance(raw_skipped, Mapping) else {}
        out.append(
            ListStatus(
                id=source.id,
                kind="subscription",
                source=source.url,
                format=source.format,
                state=state,
                version=str(version) if version else None,
                installed_at=_when(entry.get("installed_at")),
                verified_at=verified,
                checked_at=_when(entry.get("checked_at")),
                age_days=round(age, 2) if age is not None else None,
                entries={str(k): int(v) for k, v in counts.items()},
                urls=int(entry.get("urls") or 0),
                addresses=int(entry.get("addresses") or 0),
                skipped=sum(int(v) for v in skipped.values()),
                unmapped=tuple(str(u) for u in entry.get("unmapped") or ()),
                last_error=str(error) if error else None,
                last_error_at=_when(entry.get("last_error_at")),
            )
        )
    return out


def stale_after(config: Any) -> timedelta:
    return timedelta(days=float(config.lists.stale_days))


def read_statuses(config: Any, now: datetime) -> list[ListStatus]:
    """The appliance's lists as they stand (reads the policy's [lists] and the manifest).
    Raises ConfigError if the policy cannot be read, ListStateError if the manifest cannot."""
    from schoolgate.lists.state import ListState, state_dir_of
    from schoolgate.policy.loader import load_list_sources

    sources = load_list_sources(config.policy)
    manifest = ListState(state_dir_of(config)).manifest()
    return list_statuses(sources, manifest, now, stale_days=float(config.lists.stale_days))
