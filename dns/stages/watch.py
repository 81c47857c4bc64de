"""Steer watched services' connections into the proxy: feed their answer addresses to @watched.

When an allowed answer is for a name in the service catalogue (decision.service), or for a name
whose verdict depends on the page (decision.url_scoped: a block or exception for pages under a
URL prefix, which the proxy enforces by seeing the URL), its A/AAAA addresses go into the
gateway's watched sets with a timeout. A background thread does the
adding, so a query never waits for nftables. Fresh upstream answers are always fed (they may
carry new addresses); answers served again from the cache are fed at most every
`refresh_s` seconds per name, to keep the entries' timeouts from running out.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from schoolgate.dns.chain import Answer, Result, Stage, is_ready, settle, then
from schoolgate.dns.message import Message, MessageError
from schoolgate.dns.wire import TYPE_A, TYPE_AAAA, Query, servfail
from schoolgate.gateway.sets import WatchedSets
from schoolgate.policy.types import Verdict

log = logging.getLogger(__name__)


class WatchedFeeder:
    """A thread that hands address batches to the WatchedSets."""

    def __init__(self, sets: WatchedSets, timeout_s: int, max_queue: int = 10_000) -> None:
        self.sets = sets
        self.timeout_s = timeout_s
        self._queue: queue.Queue[list[str] | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self.added = 0
        self.dropped = 0
        self.errors = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="schoolgate-dns-watched", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None

    def feed(self, addresses: list[str]) -> None:
        if self._thread is None:
            self._add(addresses)
            return
        try:
            self._queue.put_nowait(addresses)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = set(item)
            # Gather whatever else is waiting: one nftables call for a burst of answers.
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._add(list(batch))
                    return
                batch.update(more)
            self._add(list(batch))

    def _add(self, addresses: list[str]) -> None:
        if not addresses:
            return
        try:
            self.sets.add(addresses, self.timeout_s)
            self.added += len(addresses)
        except Exception as err:  # nftables refusing must not stop resolving
            self.errors += 1
            log.warning("could not add %d addresses to the watched sets: %s", len(addresses), err)


class WatchStage(Stage):
    name = "watch"

    def __init__(self, feeder: WatchedFeeder, refresh_s: float = 60.0) -> None:
        super().__init__()
        self.feeder = feeder
        self.refresh_s = refresh_s
        self._fed: dict[tuple[str, int], float] = {}

    def resolve(self, query: Query) -> Result:
        result = self.pass_on(query)
        decision = query.decision
        if (
            decision is None
            or (decision.service is None and not decision.url_scoped)
            or decision.verdict is Verdict.BLOCK
            or query.qtype not in (TYPE_A, TYPE_AAAA)
        ):
            return result
        if is_ready(result):
            key = (query.qname, query.qtype)
            now = time.monotonic()
            if now - self._fed.get(key, -1e9) < self.refresh_s:
                return result
            if len(self._fed) > 50_000:
                self._fed.clear()
            self._fed[key] = now
            if decision.url_scoped:
                return self._steer_first(query, result)
            self._feed(result)  # type: ignore[arg-type]
            return result
        if decision.url_scoped:
            return self._steer_first(query, result)
        return then(result, self._feed)

    async def _steer_first(self, query: Query, result: Result) -> Answer:
        """A name whose verdict depends on the page: the answer waits until its addresses are
        steered to the proxy, so that not even the first connection gets past it (a device that
        trusts the school CA would otherwise open the whole site, or reach a blocked page,
        before the proxy could see it). If they cannot be steered, SERVFAIL: never more open."""
        answer = await settle(result)
        if not answer:
            return answer
        try:
            addresses = Message(answer).answer_addresses()
        except MessageError:
            return answer
        if not addresses:
            return answer
        try:
            await asyncio.to_thread(self.feeder.sets.add_now, addresses, self.feeder.timeout_s)
        except Exception as err:
            self.feeder.errors += 1
            self._fed.pop((query.qname, query.qtype), None)
            log.error("could not steer %s to the proxy; answering SERVFAIL: %s", query.qname, err)
            return servfail(query)
        self.feeder.added += len(addresses)
        return answer

    def _feed(self, answer: Answer) -> Answer:
        if answer:
            try:
                addresses = Message(answer).answer_addresses()
            except MessageError:
                return answer
            if addresses:
                self.feeder.feed(addresses)
        return answer
