"""The proxy's event-writing process: every worker's events, written by one process.

Building a row and inserting it cost a killed connection a sixth of its CPU when each proxy
worker ran its own EventWriter thread, and that thread held the worker's interpreter lock
while connections waited. So the workers hand compact events over the store's event channel
(schoolgate.store.events.channel, as the DNS workers do) and one process writes them.

`schoolgate run` makes the channel before it starts the proxy: the workers get its sending
end (`schoolgate proxy --events-fd N`), and the supervisor keeps both ends, so a restarted
worker or writer finds the same socket and what is sent while the writer restarts waits in it.
The reading end goes to the supervisor's event-writing process (`schoolgate events`,
schoolgate.writers): "proxy.events" when it supervises the proxy alone (the proxy's systemd
unit), the one that writes the DNS daemon's events too when it runs both. Either way these
settings are the proxy's, and its status row is "proxy.events" (its writer's ledger); each
worker's row counts what it handed over.

It stops once every sender has gone (the end of its stream: the workers have handed over
their last events), or WRITER_STOP_GRACE_S after SIGTERM if a sender hangs.
"""

from __future__ import annotations

import socket

from schoolgate.config import AppConfig
from schoolgate.store.events.writing import WritingSettings

WRITER_STATUS_NAME = "proxy.events"
WRITER_STOP_GRACE_S = 8.0  # after SIGTERM, how long it waits for the workers' last events
# Rows per transaction: the writing process sees every worker's stream, so its batches fill
# (the DNS event writer measured 2,000 rows a transaction as cheaper per event than 500).
WRITER_BATCH_ROWS = 2000
WRITER_SETTINGS = WritingSettings(
    status_name=WRITER_STATUS_NAME, batch_rows=WRITER_BATCH_ROWS, stop_grace_s=WRITER_STOP_GRACE_S
)


def events_socket(fd: int) -> socket.socket:
    """The channel's end this process inherited as descriptor `fd` (`--events-fd`)."""
    from schoolgate.store.events.channel import inherited_end

    return inherited_end(fd, f"--events-fd {fd}")


def run_event_writer(config: AppConfig, reading: socket.socket) -> int:
    """Write the batches read from `reading` until every sender has gone."""
    from schoolgate.store.events.writing import run_writing_process

    return run_writing_process(config, config.database_url, reading, WRITER_SETTINGS)
