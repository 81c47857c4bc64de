"""Where the shared reference data lives: the seed policies and the data sets beside the checkout.

The folder is `../shared/` relative to the checkout (CI clones the repository with it beside);
`SCHOOLGATE_SHARED` points elsewhere (a second checkout, a worktree). Tests and benchmarks find
it here and nowhere else. On a developer's machine without it the tests that need it are
skipped with the reason; under CI (CI=true) they must run, so a missing folder is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def find_shared() -> Path:
    override = os.environ.get("SCHOOLGATE_SHARED")
    if override:
        return Path(override)
    return REPO.parent / "shared"


SHARED = find_shared()
DATA = SHARED / "data"
SEEDS = SHARED / "seeds"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
needs_reference_data = pytest.mark.skipif(
    not IN_CI and not DATA.is_dir(), reason=f"reference data not found at {DATA} (set SCHOOLGATE_SHARED)"
)
