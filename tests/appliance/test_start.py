"""The README's start command, run for real: what it prints works, and Ctrl-C leaves nothing.

`sudo ./deploy/dev.sh start` installs what is missing and then execs `schoolgate lab start`;
this test runs that entry point with a private prefix, state folder and console port (so a
developer's running lab is not touched), reads the "try this" block it prints, runs each
printed command and checks what it shows, then sends SIGINT as Ctrl-C would.
"""

from __future__ import annotations

import http.cookiejar
import json
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from schoolgate.lab.netns import process_alive
from schoolgate.lab.topology import LabNames
from schoolgate.store.db import make_engine, session_factory
from schoolgate.store.models import AccessRequest

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180


class Started:
    """`schoolgate lab start` as a subprocess: its printed lines, as they come."""

    def __init__(self, prefix: str, state_root: Path) -> None:
        self.prefix, self.state_root = prefix, state_root
        self.stderr_path = state_root / "start.stderr"
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "schoolgate", "lab", "start", "--prefix", prefix,
             "--state-root", str(state_root), "--console-port", "0"],
            stdout=subprocess.PIPE, stderr=self.stderr_path.open("wb"), stdin=subprocess.DEVNULL, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            if marker in line:
                return "\n".join(seen)
        raise AssertionError(f"no {marker!r} in the output:\n" + "\n".join(seen) + "\nstderr:\n"
                             + self.stderr_path.read_text(errors="replace"))


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory, new_prefix: Callable[[str], str]
            ) -> Iterator[tuple[Started, str]]:
    run = Started(new_prefix("sgs"), tmp_path_factory.mktemp("start"))
    try:
        yield run, run.until("Press Ctrl-C", START_TIMEOUT_S)
    finally:
        if run.process.poll() is None:
            run.process.send_signal(signal.SIGINT)
            try:
                run.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
        # Whatever happened above: no lab of ours is left behind.
        from schoolgate.lab.lab import Lab

        Lab(run.prefix, state_root=run.state_root).down()


def _command(printed: str, starts: str) -> list[str]:
    for line in printed.splitlines():
        if line.strip().startswith(starts) or f" {starts}" in line:
            return shlex.split(line.strip())
    raise AssertionError(f"no command with {starts!r} printed:\n{printed}")


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_the_printed_browse_command_shows_the_block_page(started: tuple[Started, str]) -> None:
    _, printed = started
    done = _run(_command(printed, "lab browse pupilca https://www.facebook.com/"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("HTTP 403"), done.stdout
    # The lab's pupilca is a pupil's laptop: it gets the page written for children.
    for shown in ("You can't use it at Kingswood Primary School", "Ask your teacher", "0800 1111",
                  "pupils-no-social-media", "Year 6 laptop 12", "Ask for access to this site"):
        assert shown in done.stdout, done.stdout


def test_the_printed_curl_command_shows_the_block_page(started: tuple[Started, str]) -> None:
    _, printed = started
    argv = _command(printed, "ip netns exec")
    assert argv[-1] == "https://www.facebook.com/" and "curl" in argv
    done = _run(argv)
    assert done.returncode == 0, done.stderr
    assert "You can't use it at Kingswood Primary School" in done.stdout
    assert "/request?url=https%3A%2F%2Fwww.facebook.com%2F" in done.stdout


def test_the_printed_request_command_creates_a_request(started: tuple[Started, str]) -> None:
    run, printed = started
    done = _run(_command(printed, "lab request pupilca"))
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"reference (AR-\d+)", done.stdout)
    assert match, done.stdout
    database = run.state_root / run.prefix / "data" / "schoolgate.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with session_factory(engine)() as session:
            rows = session.scalars(select(AccessRequest)).all()
    finally:
        engine.dispose()
    assert len(rows) == 1
    request = rows[0]
    assert f"AR-{request.id:06d}" == match.group(1)
    assert request.url == "https://www.facebook.com/"
    assert request.client_ip == "10.41.20.12"  # taken from the connection: the pupil's laptop


def test_the_console_is_reachable_from_the_host_with_the_printed_login(started: tuple[Started, str]) -> None:
    _, printed = started
    url = re.search(r"http://127\.0\.0\.1:\d+/", printed)
    username = re.search(r"Sign in as:\s+(\S+)", printed)
    password = re.search(r"One-time password:\s+(\S+)", printed)
    assert url and username and password, printed
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(url.group(0) + "login", timeout=10) as response:
        page = response.read().decode()
        assert response.status == 200
    token = re.search(r'name="csrf_token"\s+value="([^"]*)"', page)
    assert token, page
    form = {"csrf_token": token.group(1), "username": username.group(1), "password": password.group(1)}
    with opener.open(url.group(0) + "login", data=urllib.parse.urlencode(form).encode(), timeout=10) as response:
        landed = response.geturl()
        body = response.read().decode()
    # The one-time password is accepted: the console moves on to the first sign-in's steps.
    assert "The username or password is not right" not in body
    assert urllib.parse.urlparse(landed).path != "/login", landed


def test_ctrl_c_tears_everything_down(started: tuple[Started, str]) -> None:
    run, _ = started
    state_dir = run.state_root / run.prefix
    lab_state = json.loads((state_dir / "state.json").read_text())
    supervised = json.loads((state_dir / "run.json").read_text())
    ours = [(info["pid"], info["start"]) for info in lab_state["processes"].values()]
    ours += [(info["pid"], info["start"]) for info in supervised["children"].values() if info["pid"]]
    # The internet, the supervisor, three daemons (DNS, proxy, console) and the event-writing
    # process, which runs net watch and the scheduler too: no identity service, which has nothing
    # to receive in the gateway lab (no lease files, no RADIUS).
    assert len(ours) == 6
    assert "identity" not in supervised["children"]
    assert not {"watch", "scheduler"} & set(supervised["children"])
    assert supervised["children"]["events"]["runs"] == ["watch", "scheduler"]
    assert all(process_alive(pid, start) for pid, start in ours)

    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(timeout=90) == 0
    stderr = run.stderr_path.read_text(errors="replace")
    assert "the lab is down" in stderr
    left = [pid for pid, start in ours if process_alive(pid, start)]
    assert not left, f"still running: {left}"
    namespaces = _run(["ip", "netns", "list"]).stdout.split()
    assert not [n for n in LabNames(run.prefix).all() if n in namespaces]
    # Each daemon stopped cleanly, flushing (status 0), not killed.
    log = (state_dir / "logs" / "appliance.log").read_text(errors="replace")
    for name in ("dns", "proxy", "events", "console"):
        assert f"schoolgate run: {name} exited with status 0" in log, log[-3000:]
    assert "scheduler stopped" in log, log[-3000:]  # its jobs finished, in the event-writing process
