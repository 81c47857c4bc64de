"""The body of a daemon's event-writing process: the batches its workers hand over on the
event channel (``channel.receive_events``) into one ``EventWriter``, until every worker has
gone. The DNS daemon and the proxy each fork one; they differ only in their settings."""

from __future__ import annotations

import gc
import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WritingSettings:
    """How one daemon's event-writing process writes."""

    status_name: str  # its daemon_status row ("dns.events", "proxy.events")
    batch_rows: int  # rows per transaction at most
    # After SIGTERM, how long it waits for the workers' last events (its parent may have been
    # killed while a worker hangs, holding the channel open).
    stop_grace_s: float = 8.0
    sqlite_cache_kib: int | None = None  # the SQLite page cache of its connections (None: SQLite's)
    # > 0: read the channel in bursts this far apart, one transaction each (receive_events); the
    # supervisor's loss estimate must count the wait (runner.EXTRA_HOLD_S).
    gather_s: float = 0.0


def run_writing_process(config: Any, database_url: str, reading: socket.socket, settings: WritingSettings) -> int:
    """Write what arrives on `reading` until every sender has closed the channel, or
    `settings.stop_grace_s` after SIGTERM or SIGINT. `config` is the appliance's AppConfig."""
    from schoolgate.store.db import make_engine
    from schoolgate.store.events.channel import receive_events
    from schoolgate.store.events.writer import StatusTarget, make_event_writer

    stop_by: list[float] = []
    # The supervisor's heap (the compiled policy above all) is never this process's: keep the
    # collector from walking it (and so copying its pages) as the rows come and go.
    gc.freeze()

    def asked_to_stop(signum: int, frame: Any) -> None:
        if not stop_by:
            stop_by.append(time.monotonic() + settings.stop_grace_s)

    signal.signal(signal.SIGTERM, asked_to_stop)
    signal.signal(signal.SIGINT, asked_to_stop)
    engine = make_engine(database_url, sqlite_cache_kib=settings.sqlite_cache_kib)
    writer = make_event_writer(
        engine, config, batch_size=settings.batch_rows,
        status=StatusTarget(site=config.site.id, name=settings.status_name, interval=1.0),
    )
    writer.start()
    log.info("%s: writing the workers' events", settings.status_name)
    bursts: dict[str, Any] = (
        {"gather": settings.gather_s, "gathered": writer.write_now, "max_gathered": settings.batch_rows}
        if settings.gather_s > 0 else {}
    )
    try:
        for _ in receive_events(reading, writer.submit_many, stop_after=lambda: stop_by[0] if stop_by else None,
                                **bursts):
            pass
    finally:
        stats = writer.stop()
        log.info("%s: event writer stopped; events written %s, dropped %s", settings.status_name, stats.get("written"),
                 stats.get("dropped"))
        engine.dispose()
    return 0
