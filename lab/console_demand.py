"""A console on demand on loopback, for the tests and the benchmark that wake it
(tests/appliance/test_console_on_demand.py, bench/console_wake.py): its configuration, its
database, and for TLS the school CA and the console's certificate, in one folder.

The console listens on 127.0.0.1:PORT with `[console] idle_minutes` given, so that it sleeps
between the requests that wake it; the rest is the example policy and the site every lab uses.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from schoolgate.lab.lab import DEFAULT_POLICY

SCHOOLGATE = [sys.executable, "-P", "-m", "schoolgate"]
SITE = "kingswood"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ConsoleSetup:
    """What `prepare` made: the configuration file, the console's port, and for TLS the
    client context that trusts the school CA which issued its certificate."""

    folder: Path
    config: Path
    port: int
    context: ssl.SSLContext | None

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def database(self) -> Path:
        return self.data_dir / "schoolgate.db"


def prepare(folder: Path, *, port: int, tls: bool, idle_minutes: float) -> ConsoleSetup:
    """Write the console's schoolgate.toml into `folder`, create its database, and for TLS the
    school CA and the console's certificate. A step that fails raises with its output."""
    config = folder / "schoolgate.toml"
    config.write_text(f"""
policy = "{DEFAULT_POLICY}"
data_dir = "{folder / 'data'}"
[site]
id = "{SITE}"
name = "Kingswood Primary School"
[console]
listen = "127.0.0.1:{port}"
base_url = "{'https' if tls else 'http'}://127.0.0.1:{port}"
plain_http = {'false' if tls else 'true'}
idle_minutes = {idle_minutes}
""")
    steps = [["db", "upgrade"], *([["ca", "init"], ["console", "--issue-cert"]] if tls else [])]
    for step in steps:
        done = subprocess.run([*SCHOOLGATE, *step, "--config", str(config)], capture_output=True, text=True,
                              timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"schoolgate {' '.join(step)} failed:\n{done.stdout}{done.stderr}")
    context = None
    if tls:
        context = ssl.create_default_context(cafile=str(folder / "data" / "ca" / "mitmproxy-ca-cert.pem"))
    return ConsoleSetup(folder, config, port, context)
