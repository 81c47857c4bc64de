"""The Debian programs a benchmark needs beside schoolgate (dnsperf, dnsmasq, Squid, iperf3),
installed from Debian's archive when missing, so that a bench runs from a fresh checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# Where Debian puts programs that a root shell finds but a plain user's PATH may not hold.
SYSTEM_BINS = ("/usr/sbin", "/sbin")


def program_path(program: str) -> str | None:
    """The program's path, found on PATH or in the system folders."""
    found = shutil.which(program)
    if found:
        return found
    for folder in SYSTEM_BINS:
        candidate = Path(folder) / program
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _apt_get(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, stdout=subprocess.DEVNULL, check=False).returncode == 0


def ensure_programs(wanted: Mapping[str, str]) -> list[str]:
    """Install the Debian package of every wanted program (program -> package) that is missing.

    Returns the programs still missing afterwards (none when all went well), having said on
    stderr what it installed or why it could not: a bench then reports that its reference is
    missing instead of failing half way through."""
    missing = {program: package for program, package in wanted.items() if program_path(program) is None}
    if not missing:
        return []
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0:
        print(f"missing {', '.join(missing)}: as root, apt-get install {' '.join(packages)}", file=sys.stderr)
        return sorted(missing)
    print(f"installing Debian packages: {' '.join(packages)}", file=sys.stderr, flush=True)
    install = ("install", "-y", "-qq", "--no-install-recommends", *packages)
    # A fresh machine's package lists may be empty or stale: update them once, only if needed.
    if not _apt_get(*install):
        _apt_get("update", "-qq")
        _apt_get(*install)
    still = sorted(program for program in missing if program_path(program) is None)
    if still:
        print(f"could not install {', '.join(still)}", file=sys.stderr)
    return still
