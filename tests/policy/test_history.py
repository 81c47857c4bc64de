"""What changed between two policy versions, as the policy history records it."""

from __future__ import annotations

import json
from pathlib import Path

from schoolgate.policy.history import SNAPSHOT_VERSION, compare, snapshot
from schoolgate.policy.loader import load_policy

POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"


def stored(path: Path) -> dict[str, object]:
    """A snapshot as the history keeps it: through JSON, keys sorted."""
    return dict(json.loads(json.dumps(snapshot(load_policy(path)), sort_keys=True)))


def test_the_first_version_and_an_unchanged_one() -> None:
    after = stored(POLICIES / "aspire-federation.toml")
    assert compare(None, after).lines() == ["The first version recorded on this appliance."]
    same = compare(after, after)
    assert same.empty() and same.lines() == ["No setting changed (comments or layout only)."]


def test_from_one_seed_to_another_names_each_part() -> None:
    """ASPIRE's policy replaced by Crockham Hill's: breaks open for staff, no official channel."""
    changes = compare(stored(POLICIES / "aspire-federation.toml"), stored(POLICIES / "crockham-hill.toml"))
    assert changes.rules_added == ["staff-social-media-breaks"]
    assert changes.rules_removed == ["authorised-school-accounts"]
    assert changes.rules_changed["staff-social-media-school-hours"] == ["clause", "reason"]
    assert "clause" in changes.rules_changed["pupils-no-social-media"]
    assert changes.calendar == ["Closure and INSET days changed: added 2027-06-07; removed 2027-01-04."]
    # Both name the same breaks (Crockham Hill's rules use them; ASPIRE's lesson unlocks end at them).
    assert "Time windows changed." not in changes.other
    assert "The written policy ([document]) changed." in changes.other
    assert changes.categories == changes.lists == changes.services == []
    text = changes.summary(limit=3)
    assert text.startswith("Rules added: staff-social-media-breaks. Rules removed: authorised-school-accounts.")
    assert text.endswith("more changes.")


def test_a_reordered_rule_is_reported_as_moved(tmp_path: Path) -> None:
    source = (POLICIES / "aycliffe.toml").read_text(encoding="utf-8")
    before = stored(POLICIES / "aycliffe.toml")
    first = source.index('[[rules]]\nid = "guests-no-social-media"')
    second = source.index('[[rules]]\nid = "staff-social-media-school-hours"')
    third = source.index('[[rules]]\nid = "staff-social-media-outside-hours"')
    swapped = source[:first] + source[second:third] + source[first:second] + source[third:]
    (tmp_path / "policy.toml").write_text(swapped, encoding="utf-8")
    (tmp_path / "lists").symlink_to(POLICIES / "lists")
    changes = compare(before, stored(tmp_path / "policy.toml"))
    assert changes.rules_moved == ["staff-social-media-school-hours", "guests-no-social-media"]
    assert not changes.rules_changed and not changes.rules_added


def test_an_older_record_cannot_be_compared() -> None:
    after = stored(POLICIES / "aspire-trust.toml")
    older = {**after, "version": SNAPSHOT_VERSION - 1}
    assert compare(older, after).lines() == [
        "The earlier version was recorded in another form: its changes cannot be listed."
    ]
