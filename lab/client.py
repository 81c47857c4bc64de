"""Acting as the lab's devices and reading what the appliance recorded (tests and benches)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.dns.daemon import EVENTS_TICK_S as DNS_TICK_S
from schoolgate.dns.daemon import WRITER_SETTINGS as DNS_WRITING
from schoolgate.gateway.circumvention import NFLOG_READ_TIMEOUT_S
from schoolgate.lab.lab import Lab
from schoolgate.lab.netns import exec_in
from schoolgate.proxy.daemon import EVENTS_TICK_S as PROXY_TICK_S
from schoolgate.proxy.events import WRITER_SETTINGS as PROXY_WRITING
from schoolgate.store.db import DEFAULT_BUSY_TIMEOUT_MS
from schoolgate.store.events import EventWriter
from schoolgate.store.models import AccessEvent

# The longest an event takes to reach the database while the appliance is healthy: the daemon's
# tick (or net watch's NFLOG read) hands it over, its writing process gathers a burst, and the
# write may wait out another writer's lock (the busy timeout), fail, and be tried again after
# the writer's longest backoff. A wait for an event is bounded by this, not by a guess (it was
# 10 s, shorter than one lock wait).
EVENT_DELIVERY_S = (
    max(DNS_TICK_S, PROXY_TICK_S, NFLOG_READ_TIMEOUT_S)
    + max(DNS_WRITING.gather_s, PROXY_WRITING.gather_s)
    + DEFAULT_BUSY_TIMEOUT_MS / 1000
    + EventWriter.RETRY_MAX
)


@dataclass
class LabClient:
    """What a test or benchmark does with a running lab: act as a device, read the results."""

    lab: Lab
    sessions: Any

    def ns(self, device: str) -> str:
        return self.lab.device_namespace(device)

    @property
    def gateway(self) -> str:
        return self.lab.names.gateway

    @property
    def public_ca(self) -> str:
        return str(self.lab.public_ca)

    @property
    def school_ca(self) -> str:
        return str(self.lab.school_ca)

    def set_clock(self, instant: str) -> None:
        self.lab.set_clock(datetime.fromisoformat(instant))
        # Daemons re-read the clock file at most every 0.2 s.
        time.sleep(0.5)

    def run(self, device: str, argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return exec_in(self.ns(device), argv, check=False, timeout=timeout)

    def dig(self, device: str, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run(device, ["dig", "+time=3", "+tries=1", *extra, name])

    def resolve(self, device: str, name: str, *extra: str) -> list[str]:
        done = self.dig(device, name, "+short", *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        return [line for line in done.stdout.split() if re.match(r"^[\d.]+$", line)]

    def curl(self, device: str, url: str, *extra: str, ca: str | None = None,
             timeout: float = 8) -> subprocess.CompletedProcess[str]:
        argv = ["curl", "-sS", "--max-time", str(timeout), "--cacert", ca or self.public_ca, *extra, url]
        return self.run(device, argv, timeout=timeout + 5)

    def events(self, since_id: int = 0, **filters: Any) -> list[AccessEvent]:
        with self.sessions() as session:
            query = select(AccessEvent).where(AccessEvent.id > since_id).order_by(AccessEvent.id)
            for key, value in filters.items():
                query = query.where(getattr(AccessEvent, key) == value)
            return list(session.scalars(query))

    def last_event_id(self) -> int:
        rows = self.events()
        return rows[-1].id if rows else 0

    def wait_events(self, predicate: Callable[[AccessEvent], bool], since_id: int, *, count: int = 1,
                    timeout: float = EVENT_DELIVERY_S) -> list[AccessEvent]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(since_id) if predicate(e)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                seen = [(e.source, e.client_ip, e.host, e.verdict, e.rule_id, e.flags) for e in self.events(since_id)]
                raise AssertionError(f"expected {count} matching event(s); events since {since_id}: {seen}")
            time.sleep(0.1)

    def session(self) -> Session:
        session: Session = self.sessions()
        return session

    def counters(self) -> dict[str, int]:
        """The appliance's nftables counters (packets), from every schoolgate table (the bridge
        table holds the bridged-connection counter in bridge mode)."""
        done = exec_in(self.gateway, ["nft", "-j", "list", "counters"])
        items = json.loads(done.stdout)["nftables"]
        return {
            i["counter"]["name"]: i["counter"]["packets"]
            for i in items
            if "counter" in i and i["counter"].get("table") == "schoolgate"
        }

    def log(self, name: str) -> str:
        """A process's log; the appliance daemons share the log of their supervisor."""
        from schoolgate.lab.lab import DAEMONS, SUPERVISOR

        return self.lab.log_path(SUPERVISOR if name in DAEMONS else name).read_text(errors="replace")

    def chromium(self, device: str, url: str, *, trust: tuple[str, ...] = (), profile: str | None = None,
                 timeout: float = 60, args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """Load `url` in headless Chromium on a device; stdout is the page's DOM.

        `trust`: CA certificates put in the device's NSS database (what "the device trusts
        the school CA" means on Linux). `profile`: a folder kept between calls, so that a
        second load reuses what the first one learnt (e.g. Alt-Svc: the browser then tries
        QUIC). QUIC is left enabled. `args`: more switches, e.g. --origin-to-force-quic-on.
        """
        import tempfile
        from pathlib import Path

        home = Path(profile) if profile else Path(tempfile.mkdtemp(prefix="sg-chromium-"))
        self.browser_home(home, trust)
        argv = [
            "env", f"HOME={home}", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={home / 'profile'}", "--virtual-time-budget=5000", *args, "--dump-dom", url,
        ]
        try:
            return self.run(device, argv, timeout=timeout)
        finally:
            if profile is None:
                import shutil

                shutil.rmtree(home, ignore_errors=True)

    def browser_home(self, home: Any, trust: tuple[str, ...] = ()) -> None:
        """A home folder whose NSS database trusts the lab's public CA and `trust`: what "the
        device trusts the school CA" means to Chromium on Linux. Kept if it exists."""
        from pathlib import Path

        nssdb = Path(home) / ".pki" / "nssdb"
        if nssdb.exists():
            return
        nssdb.mkdir(parents=True)
        subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, capture_output=True)
        for index, ca in enumerate((self.public_ca, *trust)):
            subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", f"lab-ca-{index}", "-i", ca],
                           check=True, capture_output=True)

    def mails(self) -> list[tuple[list[str], Any]]:
        """What the lab's mail relay has received: (envelope recipients, parsed message), oldest first."""
        from email import message_from_bytes
        from email import policy as email_policy
        from pathlib import Path

        folder = Path(self.lab.state_dir) / "mail"
        found = []
        for envelope in sorted(folder.glob("*.json")) if folder.exists() else []:
            body = envelope.with_suffix(".eml")
            if body.exists():
                recipients = json.loads(envelope.read_text())["to"]
                found.append((recipients, message_from_bytes(body.read_bytes(), policy=email_policy.default)))
        return found

    def proxy_stats(self, *, fresh: bool = False) -> dict[str, Any]:
        """The proxy's own counters (its stats file). `fresh`: wait for a rewrite made after now."""
        path = self.lab.data_dir / "proxy-stats.json"
        before = path.stat().st_mtime_ns if path.exists() else 0
        deadline = time.monotonic() + 10
        while fresh and time.monotonic() < deadline:
            if path.exists() and path.stat().st_mtime_ns > before:
                break
            time.sleep(0.1)
        stats: dict[str, Any] = json.loads(path.read_text())
        return stats
