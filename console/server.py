"""Serving the console with gunicorn, over TLS unless plain HTTP is asked for.

One process with threads: the sign-in rate limiter and the TOTP replay guard live in memory,
and one process keeps them exact; eight threads are plenty for a school's staff. That process
is gunicorn's threaded worker run on its own, without gunicorn's arbiter: with one worker the
arbiter only watches and restarts it, which the service manager (systemd, or `schoolgate run`)
already does, and on a Raspberry Pi its own Python process cost about 7 MB (bench/memory.py).
The certificate is, in order: `[console] tls_cert`/`tls_key`; one issued earlier by the
school CA into `<data_dir>/console-tls/`; or one issued now by the school CA (the proxy's
`schoolgate ca init`), when this process can read the CA key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from schoolgate.config import AppConfig
from schoolgate.console.activation import Sleep

log = logging.getLogger(__name__)

TLS_DIR = "console-tls"
CERT_NAME = "console"
RENEW_BEFORE = timedelta(days=30)


class ServeError(RuntimeError):
    """The console cannot start; the message says what to do."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"listen address {listen!r} must look like 127.0.0.1:8443 or [::1]:8443")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _cert_valid(path: Path, now: datetime) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > now


def console_names(config: AppConfig) -> tuple[list[str], list[str]]:
    """The hostnames and addresses the console's certificate must cover."""
    names: list[str] = []
    ips: list[str] = []
    base_host = urlsplit(config.console.base_url).hostname
    listen_host, _ = parse_listen(config.console.listen)
    for candidate in (base_host, listen_host, config.network.appliance_ipv4, config.network.appliance_ipv6):
        if not candidate or candidate in ("0.0.0.0", "::"):
            continue
        try:
            ipaddress.ip_address(candidate)
        except ValueError:
            if candidate not in names:
                names.append(candidate)
        else:
            if candidate not in ips:
                ips.append(candidate)
    return names, ips


def issue_console_cert(config: AppConfig) -> TlsFiles:
    """Issue (or renew) the console's certificate from the school CA."""
    from schoolgate import ca

    ca_dir = Path(config.proxy.ca_dir) if config.proxy.ca_dir else config.data_dir / "ca"
    names, ips = console_names(config)
    out = config.data_dir / TLS_DIR
    try:
        cert, key = ca.issue_server_cert(ca_dir, names, ips, out_dir=out, name=CERT_NAME)
    except ca.CAError as err:
        raise ServeError(
            f"no TLS certificate for the console: {err}. Set [console] tls_cert and tls_key, "
            "or create the school CA (`schoolgate ca init`) and run `schoolgate console --issue-cert` as root; "
            "for development only, use --plain-http."
        ) from err
    return TlsFiles(cert=cert, key=key)


def find_tls(config: AppConfig, now: datetime | None = None) -> TlsFiles:
    now = now or datetime.now(UTC)
    if config.console.tls_cert or config.console.tls_key:
        if not (config.console.tls_cert and config.console.tls_key):
            raise ServeError("[console] tls_cert and tls_key must be given together")
        files = TlsFiles(Path(config.console.tls_cert), Path(config.console.tls_key))
        for path in (files.cert, files.key):
            if not path.is_file():
                raise ServeError(f"[console] TLS file {path} does not exist")
        return files
    issued = config.data_dir / TLS_DIR
    # The names schoolgate.ca.issue_server_cert gives the files.
    cert, key = issued / f"{CERT_NAME}-cert.pem", issued / f"{CERT_NAME}-key.pem"
    if key.is_file() and _cert_valid(cert, now):
        return TlsFiles(cert, key)
    return issue_console_cert(config)


#: TLS 1.2 suites the console offers: forward-secret AEAD only (Mozilla's "intermediate" minus
#: DHE). No CBC suite: those are the ones padding-oracle attacks (Lucky13 and kin) go after. TLS
#: 1.3's suites are all AEAD and are set by OpenSSL on their own.
TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
])


def tls_context(_config: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """gunicorn's ssl_context hook: TLS 1.2 or newer, AEAD suites only, no compression or
    client-initiated renegotiation."""
    context = default_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def run_worker_alone(app: Any, fds: list[int] | None = None, sleep: Sleep | None = None) -> None:
    """Serve `app` (a gunicorn application, its configuration loaded) with one gunicorn worker
    in this process until SIGTERM (finishing the requests in flight) or SIGINT; with `sleep`,
    also once idle (schoolgate.console.activation).

    What the arbiter would do for its one worker, done here: open the listening sockets (or
    take `fds`, already listening, from the service manager), build the worker and run it.
    The worker stops by itself if its parent changes (its supervisor died), as it would if the
    arbiter died.
    """
    from gunicorn import sock

    cfg = app.cfg
    logger = cfg.logger_class(cfg)
    listeners = sock.create_sockets(cfg, logger, fds=fds or None)
    worker_class = cfg.worker_class
    if sleep is not None:
        from schoolgate.console.activation import sleeping_worker

        worker_class = sleeping_worker(worker_class, sleep)
    worker = worker_class(1, os.getppid(), listeners, app, cfg.timeout / 2.0, cfg, logger)
    worker.pid = os.getpid()
    logger.info("Serving with one %s worker (pid %s), no arbiter%s", cfg.worker_class_str, worker.pid,
                f"; asleep after {sleep.idle_s:g} s with no connection" if sleep is not None else "")
    try:
        worker.init_process()
    finally:
        worker.tmp.close()
        for listener in listeners:
            listener.close()


def serve(
    config: AppConfig, *, plain_http: bool, listen: str | None = None, threads: int = 8,
    fds: list[int] | None = None,
) -> None:
    """Serve the console in the foreground until SIGTERM/SIGINT.

    With `fds` (listening sockets from systemd or `schoolgate run`) it is socket-activated:
    it also stops, cleanly, after `[console] idle_minutes` with no connection (0: never)."""
    from gunicorn.app.base import BaseApplication

    host, port = parse_listen(listen or config.console.listen)
    tls = None if plain_http else find_tls(config)
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    options: dict[str, Any] = {
        "bind": [bind],
        "workers": 1,
        "worker_class": "gthread",
        "threads": max(1, threads),
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": "-",
        "errorlog": "-",
        "loglevel": "info",
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "forwarded_allow_ips": "",  # no proxy in front: the peer address is the client's
        "proc_name": "schoolgate-console",
        "control_socket_disable": True,
    }
    if tls is not None:
        options.update(certfile=str(tls.cert), keyfile=str(tls.key), ssl_context=tls_context)

    class ConsoleServer(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            from schoolgate.clock import clock_from_env
            from schoolgate.console.app import create_app
            from schoolgate.identity.neighbours import NeighbourTable

            # On the gateway the kernel's neighbour table has each LAN client's MAC; elsewhere
            # lookups miss and the request form falls back to the register's fixed addresses.
            return create_app(config, tls=tls is not None, clock=clock_from_env(), neighbours=NeighbourTable())

    if fds:
        from schoolgate.console.activation import listening_elsewhere

        for address in listening_elsewhere(fds, listen or config.console.listen):
            log.warning("serving the socket it was given on %s, not [console] listen %s: the socket unit's "
                        "address is out of date (run deploy/install.sh again)", address, config.console.listen)
    sleep = Sleep.from_minutes(config.console.idle_minutes) if fds else None
    run_worker_alone(ConsoleServer(), fds=fds, sleep=sleep)
