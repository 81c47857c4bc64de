"""Suite-wide guards and markers.

Tests marked `root` build network namespaces and nftables tables; tests marked `browser` drive
Debian's Chromium. On a developer's machine without root or Chromium they are skipped with the
reason; under CI (CI=true) a missing prerequisite is a failure, so a green CI run always means
they ran.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The agreed layout has top-level folders named dns/, policy/, proxy/ ... If the checkout were on
# sys.path, `import dns` would find our folder instead of dnspython. pytest is run with
# --import-mode=importlib so it never adds it; this makes sure nothing else did.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(marker: str) -> str | None:
    if marker == "root" and os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    if marker == "browser" and not shutil.which("chromium") and not Path("/usr/bin/chromium").exists():
        return "needs Debian's chromium package"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_CI:
        return  # in CI every test runs; a missing prerequisite fails loudly where it is needed
    for item in items:
        for marker in ("root", "browser"):
            if item.get_closest_marker(marker) is not None and (reason := _missing(marker)):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
