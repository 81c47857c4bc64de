"""The console shows the policy's upkeep warnings, its written document and its history."""

from __future__ import annotations

from datetime import UTC, datetime

from console_testkit import Console

from schoolgate.policy.loader import load_policy
from schoolgate.services import policy_history
from schoolgate.services.policy_history import FileFacts


def test_upkeep_warnings_on_the_dashboard_and_the_policy_page(console: Console) -> None:
    head = console.login("headteacher")
    calm = head.get("/dashboard").get_data(as_text=True)
    assert 'id="policy-upkeep"' not in calm  # 23 November 2026: nothing due
    console.clock.current = datetime(2027, 6, 25, 9, 0, tzinfo=UTC)
    page = console.login("headteacher").get("/dashboard").get_data(as_text=True)
    assert 'id="policy-upkeep"' in page
    assert "The term dates in the policy run out on Wednesday 21 July 2027 (in 26 days)" in page
    assert "was due for review by Wednesday 31 March 2027" in page
    policy_page = console.login("technician").get("/policy").get_data(as_text=True)
    assert 'id="policy-upkeep"' in policy_page
    assert "This file encodes the school's <strong>Social Media Policy</strong>" in policy_page


def test_the_history_page_lists_versions_newest_first(console: Console) -> None:
    policy = console.app.extensions["schoolgate.policy"].get()
    edited = console.tmp / "edited.toml"
    edited.write_text(
        console.config.policy.read_text(encoding="utf-8").replace('id = "safe-search"', 'id = "safe-search-all"'),
        encoding="utf-8",
    )
    (console.tmp / "lists").symlink_to(console.config.policy.parent / "lists")
    newer = load_policy(edited)
    with console.factory() as session:
        for when, version in ((datetime(2026, 11, 20, 9, tzinfo=UTC), policy),
                              (datetime(2026, 11, 22, 16, 5, tzinfo=UTC), newer)):
            facts = FileFacts(str(console.config.policy), "root", when)
            policy_history.record_version(session, site=console.config.site.id, policy=version, facts=facts, now=when)
        session.commit()
    page = console.login("technician").get("/policy/history").get_data(as_text=True)
    assert page.index(newer.fingerprint) < page.index(policy.fingerprint)
    assert "Rules added: safe-search-all." in page and "Rules removed: safe-search." in page
    assert "The first version recorded on this appliance." in page
    assert "the file on disk changed (owner: root)" in page
    summary = console.login("technician").get("/policy").get_data(as_text=True)
    assert 'id="recent-versions"' in summary and newer.fingerprint in summary
