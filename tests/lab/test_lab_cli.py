"""`schoolgate lab up|status|clock|down` from separate processes, and teardown on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from schoolgate.lab.netns import process_alive
from schoolgate.lab.topology import private_prefix

pytestmark = [pytest.mark.root, pytest.mark.slow]


def lab_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "schoolgate", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def namespaces(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[0] for line in listed.splitlines() if line.startswith(f"{prefix}-"))


def test_up_status_clock_down_from_separate_processes(tmp_path: Path) -> None:
    prefix = private_prefix("sgtc", 0, os.getpid())
    common = ["--prefix", prefix, "--state-root", str(tmp_path)]
    try:
        up = lab_cli("up", *common, "--clock", "2026-11-23T09:00:00+00:00")
        assert up.returncode == 0, up.stdout + up.stderr
        assert namespaces(prefix) == sorted(
            f"{prefix}-{n}" for n in ("gw", "net", "pupil", "pupilca", "staff", "guest", "sup")
        )

        status = lab_cli("status", *common, "--json")
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        # The daemons run under `schoolgate run` (the "appliance" process), which restarts them.
        assert set(state["processes"]) == {"internet", "appliance"}
        # No identity service: this lab configures no lease files or RADIUS for it to receive.
        assert set(state["daemons"]) == {"dns", "proxy", "events", "console", "scheduler", "watch"}
        assert all(p["alive"] for p in [*state["processes"].values(), *state["daemons"].values()])
        assert state["clock"] == "2026-11-23T09:00:00+00:00"
        pids = [p["pid"] for p in [*state["processes"].values(), *state["daemons"].values()]]

        assert lab_cli("up", *common).returncode == 1  # already up: refused, nothing touched
        assert lab_cli("status", *common).returncode == 0

        clock = lab_cli("clock", *common, "2026-11-23T12:30:00+00:00")
        assert clock.returncode == 0
        assert json.loads(lab_cli("status", *common, "--json").stdout)["clock"] == "2026-11-23T12:30:00+00:00"
        assert lab_cli("clock", *common, "2026-11-23T12:30:00").returncode == 2  # no offset

        down = lab_cli("down", *common)
        assert down.returncode == 0, down.stderr
        assert namespaces(prefix) == []
        assert not any(process_alive(pid) for pid in pids)
        assert not any(Path(f"/etc/netns/{prefix}-{n}").exists() for n in ("pupil", "staff"))
        assert lab_cli("status", *common).returncode == 1
    finally:
        lab_cli("down", *common)


def test_a_failed_up_tears_everything_down(tmp_path: Path) -> None:
    prefix = f"sgtf{os.getpid() % 10}"
    common = ["--prefix", prefix, "--state-root", str(tmp_path)]
    broken = tmp_path / "policy.toml"
    broken.write_text("[school]\nid = 'x'\nthis is not toml\n")
    try:
        up = lab_cli("up", *common, "--policy", str(broken))
        assert up.returncode == 1
        assert "policy" in up.stderr.lower() or "exited" in up.stderr.lower(), up.stderr
        assert namespaces(prefix) == []
        state = json.loads((tmp_path / prefix / "state.json").read_text())
        assert state["processes"] == {} and state["namespaces"] == []
    finally:
        lab_cli("down", *common)
