"""`schoolgate identity serve`: the daemon that listens to the school's own identity systems.

It follows the DHCP servers' lease files ([identity] lease_files) and receives the Wi-Fi
controller's RADIUS accounting ([identity] radius_listen), recording both in the database for
the DNS, proxy and gateway daemons, which reload them within a second. It runs under the one
supervisor (`schoolgate run`) and as the hardened schoolgate-identity unit; it needs no
privilege (port 1813 is not a privileged port). Its counters go to its daemon_status row
("identity") every few seconds: packets received, recorded and dropped by reason, and for
each lease file the reads, leases and bad records.

With nothing configured there is nothing to receive: it says so and exits cleanly at once,
before it opens the database. `schoolgate run` does not start it then, and its unit restarts
it on failure only, so a school without lease files or RADIUS pays no process for it. Once the
technician configures either, starting the unit (or the target) again runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("schoolgate.identity")

STATUS_NAME = "identity"
STATUS_EVERY_S = 5.0


class IdentityDaemonError(RuntimeError):
    pass


def radius_clients(config: Any) -> list[Any]:
    """The controllers allowed to send accounting, each with the shared secret from the file."""
    from schoolgate.identity.radius import RadiusClient

    path = Path(config.identity.radius_secret_file)
    try:
        secret = path.read_text(encoding="utf-8").strip().encode()
    except OSError as err:
        raise IdentityDaemonError(f"identity.radius_secret_file: cannot read {path}: {err.strerror}") from err
    if len(secret) < 8:
        raise IdentityDaemonError(f"identity.radius_secret_file: {path} holds no secret of 8 characters or more")
    return [RadiusClient(ipaddress.ip_network(c, strict=False), secret) for c in config.identity.radius_clients]


def _listen_address(value: str) -> tuple[str, int]:
    host, _sep, port = value.rpartition(":")
    host = host.strip("[]")
    return ("0.0.0.0" if host in ("", "*") else host), int(port)


def run_identity_daemon(config: Any, *, stop: threading.Event | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    try:
        return asyncio.run(_main(config, stop))
    except IdentityDaemonError as err:
        log.error("%s", err)
        return 2


NOTHING_TO_RECEIVE = (
    "no [identity] lease_files or radius_listen configured: nothing to receive, so not running "
    "(configure either, then start schoolgate-identity again)"
)


def has_something_to_receive(identity: Any) -> bool:
    return bool(identity.lease_files or identity.radius_listen)


async def _main(config: Any, stop: threading.Event) -> int:
    if not has_something_to_receive(config.identity):
        log.info("%s", NOTHING_TO_RECEIVE)
        return 0
    from schoolgate.clock import clock_from_env
    from schoolgate.identity.leasefollow import LeaseFollower
    from schoolgate.identity.leaseformats import DATE_ORDERS
    from schoolgate.identity.radiusserver import AccountingServer
    from schoolgate.identity.zone import ZoneUnknown, school_zone
    from schoolgate.store.db import make_engine, session_factory

    clock = clock_from_env()
    engine = make_engine(config.database_url)
    sessions = session_factory(engine)
    site = config.site.id
    identity = config.identity
    started = datetime.now(UTC)
    server: AccountingServer | None = None
    transport: asyncio.DatagramTransport | None = None
    follower: LeaseFollower | None = None
    if identity.radius_listen:
        server = AccountingServer(radius_clients(config), sessions, site, clock.now)
        loop = asyncio.get_running_loop()
        address = _listen_address(identity.radius_listen)
        transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=address)
        log.info("receiving RADIUS accounting on %s:%d from %s", *address, ", ".join(identity.radius_clients))
    waiting_for_zone: str | None = None  # why the lease files are not followed yet
    next_poll = next_status = 0.0
    try:
        while not stop.is_set():
            now = time.monotonic()
            if identity.lease_files and follower is None and now >= next_poll:
                # Lease times are local: without the policy's zone they would name the wrong
                # person, so the files wait (RADIUS goes on) until the policy can be read.
                try:
                    zone = school_zone(config)
                except ZoneUnknown as err:
                    if str(err) != waiting_for_zone:
                        log.error("lease files not followed: %s", err)
                    waiting_for_zone = str(err)
                    next_poll = time.monotonic() + identity.lease_poll_s
                else:
                    waiting_for_zone = None
                    order = DATE_ORDERS[identity.lease_date_order]
                    follower = LeaseFollower(
                        list(identity.lease_files), sessions, site, tz=zone, now=clock.now, day_first=order
                    )
                    log.info("following %d lease file(s): %s", len(follower.files), ", ".join(identity.lease_files))
            if follower is not None and now >= next_poll:
                await asyncio.to_thread(follower.poll)
                next_poll = time.monotonic() + identity.lease_poll_s
            if now >= next_status:
                leases = _lease_status(follower, identity.lease_files, waiting_for_zone)
                await asyncio.to_thread(_report, sessions, site, started, server, leases)
                next_status = time.monotonic() + STATUS_EVERY_S
            await asyncio.sleep(0.2)
    finally:
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await server.drain()
        if transport is not None:
            transport.close()
        with contextlib.suppress(Exception):
            _report(sessions, site, started, server, _lease_status(follower, identity.lease_files, waiting_for_zone))
        engine.dispose()
    return 0


def _lease_status(follower: Any, configured: Any, waiting_for_zone: str | None) -> list[dict[str, Any]]:
    """Each lease file's counters; a file not followed yet says why (doctor and the network page show it)."""
    if follower is not None:
        return list(follower.stats())
    if waiting_for_zone is None:
        return []
    problem = f"not followed: {waiting_for_zone}"
    return [{"file": str(path), "format": "", "leases": 0, "bad_records": 0, "problem": problem} for path in configured]


def _report(sessions: Any, site: str, started: datetime, server: Any, lease_files: list[dict[str, Any]]) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.store.events import write_status

    stats = {"radius": server.stats() if server is not None else None, "lease_files": lease_files}
    try:
        with sessions.begin() as session:
            write_status(session, site, STATUS_NAME, os.getpid(), started, stats)
    except SQLAlchemyError as err:  # the database may be briefly away: keep receiving
        log.warning("status not recorded: %s", err)
