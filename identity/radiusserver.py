"""The RADIUS accounting listener: datagrams in, sessions recorded, Accounting-Responses out.

Requests are gathered for a moment and written in one transaction; only then is each answered,
because a controller that gets its Accounting-Response forgets the record (RFC 2866 §2: the
server must have recorded it first). If the database is away no answer goes out and the
controller sends again. A datagram that is not a good Accounting-Request from a known
controller is dropped and counted by why (`dropped`), never answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.identity.radius import AccountingRecord, BadPacket, RadiusClient, decode, reply
from schoolgate.identity.sessionstore import record_accounting

log = logging.getLogger(__name__)

BATCH_DELAY_S = 0.01
MAX_PENDING = 5000  # beyond this a burst is dropped (and counted); the controller sends it again


class AccountingServer(asyncio.DatagramProtocol):
    def __init__(
        self,
        clients: list[RadiusClient],
        sessions: sessionmaker[Session],
        site: str,
        now: Callable[[], datetime],
    ) -> None:
        self.clients = clients
        self.sessions = sessions
        self.site = site
        self.now = now
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[tuple[Any, Any, AccountingRecord]] = []
        self.flushing: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {"received": 0, "recorded": 0, "answered": 0, "write_errors": 0}
        self.dropped: dict[str, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.counters["received"] += 1
        try:
            packet, record = decode(data, addr[0], self.clients, self.now())
        except BadPacket as bad:
            self._drop(bad.kind, f"from {addr[0]}: {bad.reason}")
            return
        if len(self.pending) >= MAX_PENDING:
            self._drop("overload", f"from {addr[0]}: too many records waiting for the database")
            return
        self.pending.append((addr, packet, record))
        if self.flushing is None or self.flushing.done():
            self.flushing = asyncio.get_running_loop().create_task(self._flush())

    def _drop(self, kind: str, why: str) -> None:
        self.dropped[kind] = self.dropped.get(kind, 0) + 1
        # The first few of each kind are logged; after that only counted (a flood must not fill the log).
        if self.dropped[kind] <= 10 or self.dropped[kind] % 1000 == 0:
            log.warning("RADIUS packet dropped (%s, %d so far) %s", kind, self.dropped[kind], why)

    async def _flush(self) -> None:
        while self.pending:
            await asyncio.sleep(BATCH_DELAY_S)
            batch, self.pending = self.pending, []
            try:
                await asyncio.to_thread(self._write, [record for _, _, record in batch])
            except SQLAlchemyError as err:
                self.counters["write_errors"] += 1
                log.error("could not record %d accounting records (the controller will send them again): %s",
                          len(batch), err)
                continue
            self.counters["recorded"] += len(batch)
            for addr, packet, _record in batch:
                if self.transport is not None:
                    self.counters["answered"] += 1  # counted first: whoever got the answer sees the count
                    self.transport.sendto(reply(packet), addr)

    def _write(self, records: list[AccountingRecord]) -> None:
        with self.sessions.begin() as session:
            record_accounting(session, self.site, records)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "dropped": dict(self.dropped), "pending": len(self.pending)}

    async def drain(self, timeout: float = 5.0) -> None:
        """Write (and answer) what is waiting, before stopping."""
        if self.flushing is not None:
            await asyncio.wait_for(asyncio.shield(self.flushing), timeout)


async def serve(server: AccountingServer, listen: list[tuple[str, int]]) -> list[asyncio.DatagramTransport]:
    loop = asyncio.get_running_loop()
    transports = []
    for host, port in listen:
        transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=(host, port))
        transports.append(transport)
    return transports
