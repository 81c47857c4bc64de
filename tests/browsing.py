"""Chromium on a lab device, driven in real time through Playwright (tests/lab/browse.py runs
inside the device's namespace). Lab tests take `browse` as
`sys.modules["schoolgate_tests_browsing"].browse`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from schoolgate.lab.client import LabClient

BROWSE = Path(__file__).resolve().parent / "lab" / "browse.py"


def browse(lab: LabClient, key: str, steps: list[list[Any]], home: Path, *, trust: tuple[str, ...] = (),
           viewport: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """Run `steps` in Chromium on lab device `key`; each step's URL, status, text and HTML."""
    lab.browser_home(home, trust)
    spec = home / "spec.json"
    spec.write_text(json.dumps({"home": str(home), "steps": steps, "viewport": viewport}))
    done = lab.run(key, [sys.executable, "-P", str(BROWSE), str(spec)], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["csp_violations"] == [], out["csp_violations"]
    results: list[dict[str, Any]] = out["results"]
    return results
