"""The DNS daemon, run as its own process (as systemd runs it on an appliance), carries only what
its path needs: no web console, proxy, scheduler or certificate code.

Each of those packages is megabytes of memory in every process that imports it, and a Raspberry Pi
runs every daemon at once. The test asks a real `schoolgate dns` process, once it answers, which
modules it has imported: a lazy import at the point of use that slips back to the top of a module
shows here, named.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from authority import Authority
from conftest import Daemon, init_database, wait_for

# Packages the DNS daemon has no use for: the console's Flask and gunicorn, the proxy's mitmproxy
# and its TLS stack, the scheduler's APScheduler, the certificate authority's cryptography.
NOT_ON_THE_DNS_PATH = (
    "flask", "werkzeug", "jinja2", "gunicorn", "mitmproxy", "mitmproxy_rs", "OpenSSL", "cryptography",
    "aioquic", "h2", "apscheduler",
)
# Other daemons' areas: only their entries in the command table (`cli`, cheap by design) may load.
OTHER_AREAS = ("schoolgate.console", "schoolgate.proxy", "schoolgate.scheduler")


def not_needed(module: str) -> bool:
    if any(module == name or module.startswith(name + ".") for name in NOT_ON_THE_DNS_PATH):
        return True
    return any(module.startswith(area + ".") and module != area + ".cli" for area in OTHER_AREAS)


# Runs the daemon as the `schoolgate` command does, and writes the names in sys.modules to the
# file given in argv[1] when it gets SIGUSR1 (the handler runs between the daemon's own steps).
REPORTER = """
import json, signal, sys
report = sys.argv.pop(1)

def dump(_signum, _frame):
    with open(report + ".tmp", "w") as out:
        json.dump(sorted(sys.modules), out)
    import os
    os.replace(report + ".tmp", report)

signal.signal(signal.SIGUSR1, dump)
from schoolgate.cli import main
sys.exit(main(sys.argv[1:]))
"""


class ReportingDaemon(Daemon):
    """`schoolgate dns` run by REPORTER, otherwise exactly as the other DNS tests start it."""

    def __init__(self, workdir: Path, upstreams: list[str], report: Path) -> None:
        super().__init__(workdir, upstreams)
        self.report = report
        self.command = [sys.executable, "-P", "-c", REPORTER, str(report)]


def imported_by(daemon: ReportingDaemon) -> set[str]:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR1)
    return set(json.loads(wait_for(lambda: daemon.report.is_file() and daemon.report.read_text(), timeout=10)))


def test_the_dns_daemon_imports_nothing_of_the_console_proxy_or_scheduler(
    tmp_path: Path, authority: Authority
) -> None:
    (tmp_path / "var").mkdir()
    daemon = ReportingDaemon(tmp_path, [authority.address], tmp_path / "modules.json")
    init_database(daemon.db_url)
    daemon.start()  # returns once it answers a query
    try:
        modules = imported_by(daemon)
    finally:
        assert daemon.stop() == 0, daemon.log_text()
    # What it needs is there (the report is of the running daemon, not of an empty interpreter).
    assert {"schoolgate.dns.server", "schoolgate.dns.resolver", "schoolgate.live"} <= modules
    carried = sorted(m for m in modules if not_needed(m))
    assert not carried, f"the DNS daemon imports {carried}"
