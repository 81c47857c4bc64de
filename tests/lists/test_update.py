"""Subscriptions updated from an HTTP server on loopback: update, status, a 304, a corrupt
tarball, one over the size cap, a server that hangs, a wrong pin, a server error. Each failure
keeps the last good version and says why."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from schoolgate.lists.fetch import silence_limit
from schoolgate.lists.state import ListState
from schoolgate.lists.status import FAILING, MISSING, OK, STALE, list_statuses
from schoolgate.lists.update import FAILED, INSTALLED, NOT_MODIFIED, Updater
from schoolgate.policy.model import ListSource

NOW = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)


@dataclass
class Served:
    """What the loopback server answers; tests change it between updates."""

    body: bytes = b""
    etag: str = '"v1"'
    last_modified: str = "Mon, 23 Nov 2026 02:00:00 GMT"
    status: int = 200
    hang: bool = False
    send_length: bool = True
    requests: list[dict[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def server() -> Iterator[tuple[Served, str]]:
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            served.requests.append({k.lower(): v for k, v in self.headers.items()})
            if served.hang:
                served.release.wait(30)  # answer nothing until the test ends
                return
            if served.status != 200:
                self.send_response(served.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.headers.get("If-None-Match") == served.etag:
                self.send_response(304)
                self.send_header("ETag", served.etag)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", served.etag)
            self.send_header("Last-Modified", served.last_modified)
            if served.send_length:
                self.send_header("Content-Length", str(len(served.body)))
            else:
                self.send_header("Connection", "close")
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up (over the cap): that is the point
                self.wfile.write(served.body)
            if not served.send_length:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}/blacklists.tar.gz"
    finally:
        served.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def source(ut1_source: ListSource, server: tuple[Served, str]) -> ListSource:
    return replace(ut1_source, url=server[1], timeout_s=5)


@pytest.fixture
def installed_once(server: tuple[Served, str], source: ListSource, state: ListState, ut1_tarball: Path) -> str:
    served, _ = server
    served.body = ut1_tarball.read_bytes()
    (outcome,) = Updater(state).update([source], NOW)
    assert outcome.result == INSTALLED, outcome.message
    assert outcome.version is not None
    return outcome.version


def _status(state: ListState, source: ListSource, now: datetime = NOW) -> object:
    (status,) = list_statuses([source], state.manifest(), now, stale_days=3)
    return status


def test_update_then_status(installed_once: str, state: ListState, source: ListSource,
                            server: tuple[Served, str]) -> None:
    entry = state.manifest()["lists"]["ut1"]
    assert entry["version"] == installed_once and entry["etag"] == '"v1"'
    assert entry["last_modified"] == "Mon, 23 Nov 2026 02:00:00 GMT"
    assert (state.downloads / "ut1").read_bytes() == server[0].body
    assert entry["download_sha256"] == hashlib.sha256(server[0].body).hexdigest()
    status = _status(state, source)
    assert status.state == OK and status.version == installed_once  # type: ignore[attr-defined]
    assert status.entries["gambling"] >= 32_000 and status.urls > 500  # type: ignore[attr-defined]
    assert status.unmapped == ("child", "sect", "sexual_education")  # type: ignore[attr-defined]
    assert _status(state, source, NOW + timedelta(days=3, hours=1)).state == STALE  # type: ignore[attr-defined]


def test_a_second_update_is_a_304(installed_once: str, state: ListState, source: ListSource,
                                  server: tuple[Served, str]) -> None:
    served, _ = server
    later = NOW + timedelta(days=1)
    (outcome,) = Updater(state).update([source], later)
    assert (outcome.result, outcome.version) == (NOT_MODIFIED, installed_once)
    assert served.requests[-1]["if-none-match"] == '"v1"'
    assert served.requests[-1]["if-modified-since"] == "Mon, 23 Nov 2026 02:00:00 GMT"
    entry = state.manifest()["lists"]["ut1"]
    assert entry["verified_at"] == later.isoformat() and entry["installed_at"] == NOW.isoformat()
    # Four days after the install, but confirmed current yesterday: not stale.
    assert _status(state, source, NOW + timedelta(days=4)).state == OK  # type: ignore[attr-defined]


def test_a_mapping_change_recompiles_the_kept_download_on_a_304(
    installed_once: str, state: ListState, source: ListSource, server: tuple[Served, str]
) -> None:
    narrower = replace(source, categories=(("gambling", ("gambling",)),))
    (outcome,) = Updater(state).update([narrower], NOW + timedelta(hours=1))
    assert outcome.result == INSTALLED and outcome.version != installed_once
    assert server[0].requests[-1]["if-none-match"] == '"v1"'  # the server was asked, and said 304
    entry = state.manifest()["lists"]["ut1"]
    assert set(entry["entries"]) == {"gambling"} and entry["previous_version"] == installed_once


@pytest.mark.parametrize("failure", ["corrupt", "html", "too-big", "too-big-unannounced", "server-error",
                                     "wrong-pin", "hangs"])
def test_a_failed_update_keeps_the_last_good_version_and_says_why(
    installed_once: str, state: ListState, source: ListSource, server: tuple[Served, str], failure: str
) -> None:
    served, _ = server
    served.etag = '"v2"'
    expected = {
        "corrupt": "archive",
        "html": "not a readable tar archive",
        "too-big": "more than the 1048576 bytes allowed",
        "too-big-unannounced": "more than the 1048576 bytes allowed",
        "server-error": "HTTP 503",
        "wrong-pin": "not the pinned",
        "hangs": "no answer from the server",
    }[failure]
    if failure == "corrupt":
        served.body = served.body[: len(served.body) // 2] + bytes(1000)
    elif failure == "html":
        served.body = b"<html><body>Maintenance</body></html>"
    elif failure.startswith("too-big"):
        source = replace(source, max_bytes=1 << 20)
        served.body = bytes(2 << 20)
        served.send_length = failure == "too-big"
    elif failure == "server-error":
        served.status = 503
    elif failure == "wrong-pin":
        source = replace(source, sha256="0" * 64)
    else:
        served.hang = True
    started = time.monotonic()
    (outcome,) = Updater(state).update([source], NOW + timedelta(days=1))
    elapsed = time.monotonic() - started
    assert outcome.result == FAILED
    assert expected in outcome.message and f"keeping {installed_once}" in outcome.message
    entry = state.manifest()["lists"]["ut1"]
    assert entry["version"] == installed_once and expected in entry["last_error"]
    assert entry["verified_at"] == NOW.isoformat()  # not confirmed current by a failure
    assert (state.versions / installed_once).is_file()
    assert sorted(p.name for p in state.downloads.iterdir()) == ["ut1"]  # no half download left
    assert _status(state, source, NOW + timedelta(days=1)).state == FAILING  # type: ignore[attr-defined]
    if failure == "hangs":
        # Bounded by what the fetch waits for: the silence limit, not the server.
        assert elapsed < silence_limit(source.timeout_s) + 2.0, elapsed


def test_a_first_update_that_fails_leaves_the_list_missing(
    state: ListState, source: ListSource, server: tuple[Served, str]
) -> None:
    server[0].status = 404
    (outcome,) = Updater(state).update([source], NOW)
    assert outcome.result == FAILED and "no version is installed yet" in outcome.message
    assert _status(state, source).state == MISSING  # type: ignore[attr-defined]


def test_a_server_that_refuses_connections(state: ListState, source: ListSource) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = replace(source, url=f"http://127.0.0.1:{port}/x.tar.gz")
    (outcome,) = Updater(state).update([closed], NOW)
    assert outcome.result == FAILED and "cannot reach the server" in outcome.message


def test_a_new_version_replaces_the_old_and_the_one_before_is_kept(
    installed_once: str, state: ListState, source: ListSource, server: tuple[Served, str],
    ut1_copy: Path, packer: Callable[..., Path], tmp_path: Path,
) -> None:
    served, _ = server
    (ut1_copy / "gambling" / "domains").write_text("only-one-casino.example\n")
    served.body = packer(ut1_copy, tmp_path / "second.tar.gz").read_bytes()
    served.etag = '"v2"'
    (second,) = Updater(state).update([source], NOW + timedelta(days=1))
    assert second.result == INSTALLED
    served.etag = '"v3"'
    (ut1_copy / "gambling" / "domains").write_text("another-casino.example\n")
    served.body = packer(ut1_copy, tmp_path / "third.tar.gz").read_bytes()
    (third,) = Updater(state).update([source], NOW + timedelta(days=2))
    assert third.result == INSTALLED
    kept = sorted(p.name for p in state.versions.iterdir())
    assert kept == sorted([second.version, third.version])  # type: ignore[type-var]
    assert installed_once not in kept
