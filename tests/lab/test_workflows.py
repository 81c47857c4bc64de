"""The people the policies name, doing their part on the lab's devices: a pupil meeting the block
page written for children and telling the DSL it upset them.

Chromium runs inside a device's namespace (tests/lab/browse.py, through Playwright); the
appliance's own daemons, under `schoolgate run`, do the rest: DNS, the proxy, the console and
the scheduler that raises the DSL's case.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from schoolgate.config import load_config
from schoolgate.lab.client import LabClient
from schoolgate.lab.topology import device
from schoolgate.policy import load_policy
from schoolgate.store.models import Alert

pytestmark = [pytest.mark.root, pytest.mark.browser, pytest.mark.slow]

LESSON = "2026-11-23T10:15:00+00:00"  # Monday, autumn term, a lesson (GMT: local time = UTC)
BROWSE = Path(__file__).resolve().parent / "browse.py"
T = TypeVar("T")


def browse(lab: LabClient, key: str, steps: list[list[str]], home: Path, *, trust: tuple[str, ...] = (),
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


def scheduler_bound(lab: LabClient) -> float:
    """How long the scheduler may take to turn a new event into a case: two scans and slack."""
    return 2 * load_config(lab.lab.config_path).alerts.scan_interval_seconds + 10.0


def wait_until(produce: Callable[[], T | None], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}"
        time.sleep(0.2)


def upset_case(lab: LabClient, device_id: str) -> Alert | None:
    with lab.session() as session:
        return session.scalars(
            select(Alert).where(Alert.kind == "pupil_upset", Alert.device_id == device_id)
        ).first()


def test_pupil_page_in_chromium_and_the_upset_button_tells_the_dsl(lab: LabClient, tmp_path: Path) -> None:
    lab.set_clock(LESSON)
    pupil = device("pupilca")  # trusts the school CA: the proxy shows HTTPS block pages to it
    shown, thanked = browse(
        lab,
        "pupilca",
        [["goto", "https://www.facebook.com/groups/year6"], ["click", "#upset-button"]],
        tmp_path / "pupilca",
        trust=(lab.school_ca,),
        viewport=(768, 1024),
    )
    assert shown["error"] is None and shown["status"] == 403, shown
    words = shown["text"]
    for phrase in ("This website is blocked", "Ask your teacher", "Kingswood Primary School",
                   "Did something upset you?", "This upset me", "Childline", "0800 1111", "For grown-ups"):
        assert phrase in words, (phrase, words)
    # The adult's facts: the rule and the clause that blocked it, and the category's rationale.
    assert "pupils-no-social-media" in words and "Social Media Policy §6 and §9" in words
    rationale = load_policy(lab.lab.policy).category_by_id["social_media"].description
    if rationale:
        assert rationale in words
    assert "<svg" in shown["html"] and "served-by=lab-internet" not in shown["html"]

    assert thanked["error"] is None and thanked["status"] == 200, thanked
    assert "Thank you for telling us" in thanked["text"]
    case = wait_until(lambda: upset_case(lab, pupil.device_id), timeout=scheduler_bound(lab),
                      what="the DSL's case for the upset pupil")
    assert case.severity == "high" and case.status == "new"
    assert (case.person_id, case.client_ip) == (pupil.person_id, pupil.ip)
    assert "www.facebook.com/groups/year6" in case.summary and pupil.person_name in case.title


def test_upset_button_on_a_device_without_the_school_ca_works_where_its_page_shows(
    lab: LabClient, tmp_path: Path
) -> None:
    from schoolgate.services.actor import Actor
    from schoolgate.services.site_blocks import BlockSpec, add_site_block

    # A site the technician blocked after a report; served over plain HTTP, the only way a
    # device that does not trust the school CA can be shown a block page at all.
    lab.set_clock(LESSON)
    technician = Actor(name="lab-tech", display_name="Lab Technician", roles=frozenset({"technician"}))
    with lab.session() as session:
        add_site_block(session, site="kingswood", now=lab.lab.clock_now(), actor=technician,
                       spec=BlockSpec(domain="games.example.com"), reason="Lab: a frightening game")
        session.commit()
    wait_until(lambda: lab.resolve("pupil", "games.example.com") == ["10.41.0.1"] or None, timeout=2.0,
               what="the block to apply")
    pupil = device("pupil")
    shown, thanked = browse(
        lab, "pupil", [["goto", "http://games.example.com/play"], ["click", "#upset-button"]], tmp_path / "pupil"
    )
    assert shown["status"] == 403 and "Ask your teacher" in shown["text"], shown
    assert thanked["status"] == 200 and "Thank you for telling us" in thanked["text"], thanked
    case = wait_until(lambda: upset_case(lab, pupil.device_id), timeout=scheduler_bound(lab),
                      what="the DSL's case for the upset pupil")
    assert "http://games.example.com/play" in case.summary

    # HTTPS to the same site: the device would not trust the school's certificate, so the proxy
    # closes the connection and shows nothing; the button can only be where a page is.
    (https,) = browse(lab, "pupil", [["goto", "https://games.example.com/play"]], tmp_path / "pupil")
    assert https["error"] is not None and "Thank you" not in https["text"]
