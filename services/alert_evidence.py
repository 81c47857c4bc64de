"""The evidence of an alert case: what the device did, where, when and how often.

A DSL judges a case from a phone, so a case carries its evidence as items a person can read
("Tried to open a VPN, proxy or encrypted-DNS site: nordvpn.com, 2 attempts, 10:15 to 10:17,
blocked"), not a count of rows. Items are kept per kind and target and stored with the case
(``Alert.evidence``, JSON), so they outlive the events' retention.

An attempt is what a person did once: one device reaching one target, with every request
within ``ATTEMPT_SPAN`` of the previous one belonging to the same attempt. A page view makes
a burst of requests (a DNS lookup, the page, its images, a retry); it is one attempt.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, tzinfo

from schoolgate.timewords import clock_words

ATTEMPT_SPAN = timedelta(seconds=30)
MAX_ITEMS = 40  # per case: the rest is counted, not itemised


@dataclass(frozen=True, slots=True)
class EvidenceItem:
    kind: str  # what was tried (a signal kind, or "blocked_site", "search_term" ...)
    label: str  # plain words for the kind: "Tried to open a VPN, proxy or encrypted-DNS site"
    target: str  # the site, the address and port, or the term
    first: datetime
    last: datetime
    attempts: int = 1
    requests: int = 1
    outcome: str = ""  # "blocked", "refused", "answered by schoolgate instead" ...
    intent: bool = True  # shows intent by itself (see services.signals)
    connected: bool = False  # the device made a connection, not only a DNS lookup
    address: str | None = None  # where it was sent (the gateway's attempts)
    provider: str | None = None  # the public resolver behind the address or name, if one
    note: str = ""  # what the DSL should know about it, in plain words
    event_id: int | None = None  # the newest event folded in: an event is never counted twice

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.target

    def merged(self, other: EvidenceItem, span: timedelta = ATTEMPT_SPAN) -> EvidenceItem:
        """This item with `other` (same kind and target) folded in.

        Events reach a case in id order, so an item whose newest event is no newer than ours
        is already in (a rule may hand the same context evidence over again)."""
        if other.event_id is not None and self.event_id is not None and other.event_id <= self.event_id:
            return self
        attempts = self.attempts
        if other.first > self.last + span or other.last < self.first - span:
            attempts += other.attempts  # apart from what we have: attempts of their own
        else:
            attempts += max(0, other.attempts - 1)  # the first joins an attempt we have
        return replace(
            self,
            # a connection says more than a lookup: "tried to open" rather than "looked up"
            label=other.label if other.connected and not self.connected else self.label,
            first=min(self.first, other.first),
            last=max(self.last, other.last),
            attempts=attempts,
            requests=self.requests + other.requests,
            connected=self.connected or other.connected,
            note=self.note or other.note,
            event_id=max(self.event_id or 0, other.event_id or 0) or None,
        )

    def words(self, zone: tzinfo) -> str:
        """One line a DSL can read on a phone; times on the school's clock (`zone`, the policy's
        `[school] timezone`), in words."""
        first, last = self.first.astimezone(zone), self.last.astimezone(zone)
        start, end = clock_words(first), clock_words(last)
        when = f"at {start}" if start == end else f"{start} to {end}"
        if first.date() != last.date():
            when = f"{first.day} {first:%b}, {start} to {last.day} {last:%b}, {end}"
        times = f"{self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        if self.requests > self.attempts:
            times += f" ({self.requests} requests)"
        outcome = f", {self.outcome}" if self.outcome else ""
        note = f". {self.note}" if self.note else ""
        return f"{self.label}: {self.target}, {times}, {when}{outcome}{note}"

    def as_json(self) -> dict[str, object]:
        values = asdict(self)
        values["first"] = self.first.isoformat()
        values["last"] = self.last.isoformat()
        return values

    @classmethod
    def from_json(cls, values: dict[str, object]) -> EvidenceItem:
        data = dict(values)
        data["first"] = datetime.fromisoformat(str(data["first"]))
        data["last"] = datetime.fromisoformat(str(data["last"]))
        known = {name for name in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]


class Evidence:
    """A case's items, merged by kind and target, oldest first; bounded."""

    def __init__(self, items: Iterable[EvidenceItem] = (), omitted: int = 0) -> None:
        self._items: dict[tuple[str, str], EvidenceItem] = {}
        self.omitted = omitted  # attempts beyond MAX_ITEMS items, counted only
        for item in items:
            self.add(item)

    def add(self, item: EvidenceItem) -> None:
        found = self._items.get(item.key)
        if found is not None:
            self._items[item.key] = found.merged(item)
        elif len(self._items) >= MAX_ITEMS:
            self.omitted += item.attempts
        else:
            self._items[item.key] = item

    def extend(self, items: Iterable[EvidenceItem]) -> None:
        for item in items:
            self.add(item)

    def __iter__(self) -> Iterator[EvidenceItem]:
        return iter(sorted(self._items.values(), key=lambda i: (i.first, i.kind, i.target)))

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    @property
    def attempts(self) -> int:
        return sum(item.attempts for item in self._items.values()) + self.omitted

    def span(self) -> tuple[datetime, datetime] | None:
        if not self._items:
            return None
        return min(i.first for i in self._items.values()), max(i.last for i in self._items.values())

    def lines(self, zone: tzinfo, limit: int = 8) -> list[str]:
        items = list(self)
        out = [item.words(zone) for item in items[:limit]]
        rest = len(items) - limit
        if rest > 0 or self.omitted:
            more = max(0, rest) + (1 if self.omitted else 0)
            out.append(f"and {more} more (see the case)")
        return out

    def to_json(self) -> str:
        return json.dumps({"items": [i.as_json() for i in self], "omitted": self.omitted}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Evidence:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            items = [EvidenceItem.from_json(v) for v in data.get("items", [])]
            return cls(items, int(data.get("omitted", 0)))
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()  # unreadable evidence must not stop a case being shown or folded
