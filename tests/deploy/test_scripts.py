"""install.sh and uninstall.sh: shell syntax, shellcheck, and their refusals (no system is touched)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [REPO / "deploy" / "install.sh", REPO / "deploy" / "uninstall.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_syntax_and_shellcheck(script: Path) -> None:
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck is missing: apt-get install shellcheck")
    done = subprocess.run(["shellcheck", "--severity=info", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize(
    ("argv", "status", "says"),
    [
        (["--help"], 0, "--lan-address CIDR"),
        (["--frobnicate"], 1, "unknown option: --frobnicate"),
        (["--root"], 1, "--root needs a directory"),
        pytest.param(["--root", "/nonexistent/schoolgate-tree"], 1, "no such directory", marks=pytest.mark.root),
    ],
)
def test_install_refuses_bad_arguments(argv: list[str], status: int, says: str) -> None:
    done = subprocess.run(["bash", str(SCRIPTS[0]), *argv], capture_output=True, text=True, timeout=30)
    assert done.returncode == status
    assert says in done.stdout + done.stderr


@pytest.mark.root
def test_install_refuses_a_tree_that_is_not_debian(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sh").symlink_to("/bin/sh")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "os-release").write_text('ID=fedora\nVERSION_ID="40"\n')
    done = subprocess.run(
        ["bash", str(SCRIPTS[0]), "--root", str(tmp_path), "--non-interactive"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "supports Debian 12 and Raspberry Pi OS (found: fedora)" in done.stderr
    mounts = Path("/proc/mounts").read_text()
    assert str(tmp_path) not in mounts  # what it mounted for the tree it unmounted again
