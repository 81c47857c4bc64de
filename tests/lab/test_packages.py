"""The benches install the Debian programs they compare against: a present program costs no
apt-get run; a missing one is installed, with the package lists updated only when the first
install fails (a fresh machine's lists are empty)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schoolgate.lab.packages import ensure_programs, program_path

# A stand-in apt-get on PATH: it records each call and "installs" a package by placing an
# executable of the package's name, failing installs until an update has run when asked to.
APT_GET = """#!/bin/sh
echo "$*" >> "{calls}"
if [ "$1" = update ]; then touch "{updated}"; exit 0; fi
if [ -n "{needs_update}" ] && [ ! -e "{updated}" ]; then exit 100; fi
for arg in "$@"; do
  case "$arg" in -*|install) ;; *) printf '#!/bin/sh\\n' > "{bin}/$arg"; chmod +x "{bin}/$arg" ;; esac
done
"""


def _apt_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, needs_update: bool) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    script = APT_GET.format(calls=calls, updated=tmp_path / "updated", bin=bin_dir,
                            needs_update="yes" if needs_update else "")
    (bin_dir / "apt-get").write_text(script)
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return calls


@pytest.mark.skipif(os.geteuid() != 0, reason="installing packages is for root")
@pytest.mark.parametrize(
    ("needs_update", "expected_calls"),
    [
        (False, ["install -y -qq --no-install-recommends sg-probe-tool"]),
        (True, ["install -y -qq --no-install-recommends sg-probe-tool", "update -qq",
                "install -y -qq --no-install-recommends sg-probe-tool"]),
    ],
)
def test_a_missing_program_is_installed_and_the_lists_updated_only_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, needs_update: bool, expected_calls: list[str]
) -> None:
    calls = _apt_on_path(tmp_path, monkeypatch, needs_update=needs_update)
    assert ensure_programs({"sg-probe-tool": "sg-probe-tool"}) == []
    assert calls.read_text().splitlines() == expected_calls
    assert program_path("sg-probe-tool") == str(tmp_path / "bin" / "sg-probe-tool")


def test_a_present_program_runs_no_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _apt_on_path(tmp_path, monkeypatch, needs_update=False)
    assert ensure_programs({"sh": "dash"}) == []
    assert not calls.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="installing packages is for root")
def test_a_program_that_cannot_be_installed_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _apt_on_path(tmp_path, monkeypatch, needs_update=False)
    # The package installs a program of another name than the one wanted.
    assert ensure_programs({"sg-not-there": "sg-other-name"}) == ["sg-not-there"]
    assert "could not install sg-not-there" in capsys.readouterr().err
