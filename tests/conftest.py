"""Suite-wide guards and markers.

Tests marked `root` build network namespaces and nftables tables; tests marked `browser` drive
Debian's Chromium. On a developer's machine without root or Chromium they are skipped with the
reason; under CI (CI=true) a missing prerequisite is a failure, so a green CI run always means
they ran.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent

# The agreed layout has top-level folders named dns/, policy/, proxy/ ... If the checkout were on
# sys.path, `import dns` would find our folder instead of dnspython. pytest is run with
# --import-mode=importlib so it never adds it; this makes sure nothing else did.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# Fixture plugins every folder may use: a real PostgreSQL server (postgres_server,
# postgres_template, postgres_url, postgres_empty_url) and a migrated SQLite database
# (migrated_template, db_path, engine, sessions). A conftest.py that needs a helper module itself
# takes it from sys.modules under its name here.
FIXTURE_PLUGINS = {
    "schoolgate_tests_postgres_fixture": "postgres_fixture.py",
    "schoolgate_tests_fixtures_db": "fixtures_db.py",
    "schoolgate_tests_reference_data": "reference_data.py",
    "schoolgate_tests_policy_variants": "policy_variants.py",
    "schoolgate_tests_smtp": "smtp_fixture.py",
    "schoolgate_tests_browsing": "browsing.py",
}


def _load_helper(name: str, filename: str) -> ModuleType:
    """Import a helper module from this folder under `name`: under --import-mode=importlib no
    test folder is on sys.path, so neither `import` nor pytest_plugins could find it."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / filename)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_FIXTURE_MODULES = {name: _load_helper(name, filename) for name, filename in FIXTURE_PLUGINS.items()}


def pytest_configure(config: pytest.Config) -> None:
    for name, module in _FIXTURE_MODULES.items():
        if not config.pluginmanager.is_registered(module):
            config.pluginmanager.register(module, name)


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
