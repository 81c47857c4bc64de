"""Search terms that are safeguarding concerns are read by the DSL (and the headteacher where the
school's policy says so), never by technicians or the trust's admin: not on the activity pages,
not in the CSV export, not through the event page's links."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from console_testkit import EXAMPLE_POLICY, Console, add_event

from schoolgate.console.policyref import ConsolePolicy
from schoolgate.policy import load_policy
from schoolgate.services.safeguarding_detail import WITHHELD
from schoolgate.tomlpos import ConfigError

CONCERN = "how do i kill myself"
IN_A_URL = "https://www.google.com/search?q=ways+to+self+harm&hl=en"
BENIGN = "volcano facts for year 5"


def _seed(console: Console) -> dict[str, int]:
    ids = {}
    with console.session() as session:
        ids["term"] = add_event(session, host="www.google.com", url=None, search_term=CONCERN, verdict="allow",
                                rule_id="default", service="google", category="search").id
        ids["url"] = add_event(session, host="www.google.com", url=IN_A_URL, verdict="allow", rule_id="default",
                               service="google", category="search").id
        ids["benign"] = add_event(session, host="www.bing.com", url="https://www.bing.com/search?q=volcano+facts",
                                  search_term=BENIGN, verdict="allow", rule_id="default", service="bing",
                                  category="search").id
        session.commit()
    return ids


def _readers_policy(tmp_path: Path, readers: str) -> Path:
    text = EXAMPLE_POLICY.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^\[school\]\n", f"[school]\nsafeguarding_readers = {readers}\n", text, count=1)
    path = tmp_path / "policy" / "policy.toml"
    shutil.copytree(EXAMPLE_POLICY.parent / "lists", path.parent / "lists")  # its list files, relative to it
    path.write_text(text, encoding="utf-8")
    return path


def _everything(client: Any, ids: dict[str, int]) -> str:
    pages = [client.get("/activity"), client.get("/activity?format=csv"),
             *(client.get(f"/activity/{event_id}") for event_id in ids.values())]
    assert all(page.status_code == 200 for page in pages)
    return "\n".join(page.get_data(as_text=True) for page in pages)


@pytest.mark.parametrize("role", ["technician", "trust_admin", "headteacher"])
def test_those_who_may_not_read_it_see_that_a_search_was_withheld(console: Console, role: str) -> None:
    ids = _seed(console)
    seen = _everything(console.login(role), ids)
    for words in ("kill myself", "self+harm", "self%2Bharm", "self harm", "ways+to", "ways%2Bto"):
        assert words not in seen, (role, words)
    assert WITHHELD in seen or WITHHELD.replace("[", "'[") in seen
    assert BENIGN in seen  # an ordinary search is shown as before


def test_the_dsl_reads_it(console: Console) -> None:
    ids = _seed(console)
    seen = _everything(console.login("dsl"), ids)
    assert CONCERN in seen and "self+harm" in seen and WITHHELD not in seen


def test_the_headteacher_reads_it_where_the_policy_says_so(console: Console, tmp_path: Path) -> None:
    ids = _seed(console)
    policy = _readers_policy(tmp_path, '["dsl", "headteacher"]')
    console.app.extensions["schoolgate.policy"] = ConsolePolicy(dataclasses.replace(console.config, policy=policy))
    assert CONCERN in _everything(console.login("headteacher"), ids)
    assert CONCERN not in _everything(console.login("technician"), ids)


@pytest.mark.parametrize(
    ("readers", "message"),
    [('["dsl", "technician"]', 'unknown reader "technician"'), ('["headteacher"]', 'must include "dsl"'),
     ('5', "must be a list of names")],
)
def test_the_policy_names_only_the_dsl_and_headteacher(tmp_path: Path, readers: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_policy(_readers_policy(tmp_path, readers))
    assert "safeguarding_readers" in str(caught.value) and "policy.toml:" in str(caught.value)
