"""Allowed connections passed through, folded per client, name and minute on the proxy's loop.

Nearly every connection the front door passes through is plain allowed traffic, which the
events table keeps at domain level: one row per client and name per minute, with a `count`
(schoolgate.store.events.fold.AllowedAggregator). Making a full EventRecord for each such
connection only for the aggregator to fold it away (a record, a copy for its count, a lock
and a minute computed from a datetime) cost a passthrough more of its CPU than judging it.
So, as the DNS workers' events stage does for allowed queries, each one here is a count in a
slot of the minute; a slot becomes one record when its minute is over (`flush_due`, from the
loop's tick) and goes on to the same sink as before (`submit_allowed`: the aggregator, which
writes it as it wrote the folded records before).

The row is the one the aggregator made of the same connections: the first connection's
decision, client and time, the count of them all. Used from the event loop only (no lock).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from schoolgate.policy.types import Client, Decision, Target, Verdict
from schoolgate.store.events import EventRecord

MAX_HELD = 50_000  # slots held at once; beyond it every slot is handed over early (a flood of names)

# (minute, client ip, client mac, host, verdict) -> [count, decision, client, first time]
Slot = list[object]


def is_plain_allow(decision: Decision) -> bool:
    """Allowed and not flagged: the traffic kept per domain per minute (EventRecord.is_plain_allow
    of the record it makes)."""
    return (decision.verdict is Verdict.ALLOW or decision.verdict is Verdict.SAFE_SEARCH) and not decision.flags


class AllowedPasses:
    """Counts plain allowed connections per (minute, client, name) until the minute is over."""

    def __init__(self, submit: Callable[[EventRecord], bool], site: str, *, max_held: int = MAX_HELD) -> None:
        self._submit = submit
        self._site = site
        self._max_held = max_held
        self._slots: dict[tuple[object, ...], Slot] = {}
        self._held = 0  # connections counted in the slots
        self.folded = 0  # connections counted into a slot another one opened

    def add(self, decision: Decision, client: Client, host: str, ts: datetime) -> None:
        """One allowed, unflagged connection of `client` to `host` at `ts` (see is_plain_allow)."""
        key = (int(ts.timestamp()) // 60, client.ip, client.mac, host, decision.verdict)
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) >= self._max_held:
                self.flush_all()
            self._slots[key] = [1, decision, client, ts]
        else:
            slot[0] += 1  # type: ignore[operator]
            self.folded += 1
        self._held += 1

    def held(self) -> tuple[int, int]:
        """(slots, connections) held now: lost if the process is killed before they are handed over."""
        return len(self._slots), self._held

    def flush_due(self, now: datetime) -> int:
        """Hand over the slots of minutes before `now`'s; returns how many."""
        current = int(now.timestamp()) // 60
        due = [key for key in self._slots if key[0] < current]  # type: ignore[operator]
        for key in due:
            self._hand_over(key, self._slots.pop(key))
        return len(due)

    def flush_all(self) -> int:
        """Hand over every slot (at shutdown, and when too many are held)."""
        slots, self._slots = self._slots, {}
        for key, slot in slots.items():
            self._hand_over(key, slot)
        return len(slots)

    def _hand_over(self, key: tuple[object, ...], slot: Slot) -> None:
        count, decision, client, ts = slot
        assert isinstance(count, int) and isinstance(decision, Decision)
        assert isinstance(client, Client) and isinstance(ts, datetime) and isinstance(key[3], str)
        self._held -= count
        self._submit(EventRecord.from_decision(
            decision, client, Target(host=key[3]), site=self._site, source="proxy", ts=ts, count=count
        ))
