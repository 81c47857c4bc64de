"""The category catalogue: built-ins in every policy, canaries, and the two categories no rule
writes: `illegal` (always a locked block) and `support` (always open; only illegal outranks it)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from schoolgate.policy import (
    Ban,
    Client,
    ExceptionScope,
    PolicyException,
    Role,
    SiteBlock,
    Target,
    Verdict,
    decide,
    explain_text,
)
from schoolgate.policy.catalogue import (
    BUILTIN,
    CATALOGUE,
    HARMFUL_CATEGORIES,
    SUPPORT_DOMAINS,
    UKSIC_CATEGORIES,
    canary_for,
)
from schoolgate.policy.engine import ILLEGAL_RULE_ID, SUPPORT_RULE_ID, CompiledPolicy
from schoolgate.policy.loader import load_policy
from schoolgate.tomlpos import ConfigError

LONDON = ZoneInfo("Europe/London")
LESSON = datetime(2026, 11, 23, 11, 0, tzinfo=LONDON)

ISSUE_IDS = {
    "pornography", "gambling", "drugs", "extremism", "hate", "malware", "misinformation", "piracy", "self_harm",
    "violence", "dating", "social_media", "circumvention", "illegal", "support",
}

HEAD = """\
[school]
id = "t"
name = "T"
timezone = "Europe/London"
block_ipv4 = "10.0.0.1"

[calendar]
terms = [{ start = 2026-09-03, end = 2026-12-18 }]
"""


def test_the_catalogue_has_the_issue_ids_each_with_a_rationale_and_a_canary() -> None:
    assert {c.id for c in CATALOGUE} == ISSUE_IDS
    for category in CATALOGUE:
        assert len(category.rationale) > 40, category.id  # plain words, not a label
        assert category.canary.endswith(".category-test.schoolgate.invalid")
        assert "_" not in category.canary  # a DNS label: self_harm -> self-harm
    assert set(UKSIC_CATEGORIES) == ISSUE_IDS - {"dating", "social_media", "circumvention", "illegal", "support"}
    assert set(HARMFUL_CATEGORIES) == set(UKSIC_CATEGORIES) | {"dating"}
    assert BUILTIN["illegal"].locked and BUILTIN["circumvention"].locked
    assert BUILTIN["support"].always_allowed and not BUILTIN["support"].locked


def test_every_policy_has_the_built_ins_even_without_a_categories_section(
    write_policy: Callable[..., Path],
) -> None:
    policy = load_policy(write_policy(HEAD + '[[rules]]\nid = "r"\nclause = "c"\nreason = "r"\naction = "allow"\n'))
    ids = [c.id for c in policy.categories]
    assert ids == [c.id for c in CATALOGUE]  # built-ins first, in catalogue order
    illegal = policy.category_by_id["illegal"]
    assert illegal.locked and illegal.builtin and "illegal" in illegal.flags
    assert policy.category_by_id["circumvention"].flags >= {"circumvention"}
    assert policy.category_by_id["support"].always_allowed


def test_a_policy_may_reword_a_built_in_and_add_its_own(write_policy: Callable[..., Path]) -> None:
    text = HEAD + """
[categories.gambling]
name = "Betting and gaming"
description = "Our words for it."
flags = ["report"]

[categories.video]
name = "Video"

[[rules]]
id = "r"
clause = "c"
reason = "r"
action = "allow"
"""
    policy = load_policy(write_policy(text))
    gambling = policy.category_by_id["gambling"]
    assert (gambling.name, gambling.description, gambling.flags) == ("Betting and gaming", "Our words for it.",
                                                                     frozenset({"report"}))
    assert gambling.canary == canary_for("gambling")
    video = policy.category_by_id["video"]
    assert not video.builtin and video.canary == "video.category-test.schoolgate.invalid"
    assert video.bit == len(CATALOGUE)


RULE = '\n[[rules]]\nid = "r"\nclause = "c"\nreason = "r"\n'
MISTAKES = [
    ("unlock-illegal", "[categories.illegal]\nlocked = false # <-\n" + RULE + 'action = "allow"\n',
     "categories.illegal.locked", "always locked"),
    ("unlock-circumvention", "[categories.circumvention]\nlocked = false # <-\n" + RULE + 'action = "allow"\n',
     "categories.circumvention.locked", "always locked"),
    ("lock-support", "[categories.support]\nlocked = true # <-\n" + RULE + 'action = "allow"\n',
     "categories.support.locked", "never blocked"),
    ("block-support", RULE + 'categories = ["support"] # <-\naction = "block"\n',
     "rules[1].categories", "never blocked"),
    ("allow-illegal", RULE + 'categories = ["illegal"] # <-\naction = "allow"\n',
     "rules[1].categories", "always blocked"),
    ("block-support-service",
     '[services.help]\ncategory = "support"\ndomains = ["help.example"]\n' + RULE
     + 'services = ["help"] # <-\naction = "block"\n',
     "rules[1].services", "never blocked"),
    ("block-support-list",
     '[lists.help]\nfile = "help.txt"\nformat = "plain"\ncategory = "support"\n' + RULE
     + 'lists = ["help"] # <-\naction = "block"\n',
     "rules[1].lists", "never blocked"),
    ("lock-support-service",
     '[services.help]\ncategory = "support"\ndomains = ["help.example"]\nlocked = true # <-\n' + RULE
     + 'action = "allow"\n',
     "services.help.locked", "cannot be locked"),
]


@pytest.mark.parametrize(("name", "body", "field", "fragment"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_nothing_unlocks_illegal_or_blocks_support(
    write_policy: Callable[..., Path], name: str, body: str, field: str, fragment: str
) -> None:
    text = HEAD + "\n" + body
    marked = [n for n, line in enumerate(text.splitlines(), start=1) if line.rstrip().endswith("# <-")]
    path = write_policy(text, files={"help.txt": "help.example\n"})
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    err = caught.value
    assert (err.path.name, err.line, err.field) == ("policy.toml", marked[0], field)
    assert fragment in err.message


PRECEDENCE = HEAD + """
[categories.games]

[services.helpline]
category = "support"
domains = ["helpline.example"]

[lists.harmful]
file = "harmful.txt"
format = "plain"
category = "pornography"

[lists.circ]
file = "circ.txt"
format = "plain"
category = "circumvention"

[lists.bad]
file = "bad.txt"
format = "plain"
category = "illegal"

[[rules]]
id = "staff-everything"
clause = "c"
reason = "staff may use anything"
roles = ["staff"]
action = "allow"

[[rules]]
id = "no-circumvention"
clause = "c"
reason = "never"
categories = ["circumvention"]
action = "block"
locked = true

[[rules]]
id = "harmful"
clause = "c"
reason = "harmful"
categories = ["pornography"]
action = "block"

[[rules]]
id = "supervised"
clause = "c"
reason = "banned"
roles = ["supervised"]
action = "block"

[default]
action = "block"
"""
FILES = {
    # Support names planted in blocked lists, and one name in both illegal and support.
    "harmful.txt": "childline.org.uk\nwww.samaritans.org\nhelpline.example\nporn.example\n",
    "circ.txt": "kooth.com\nproxy.example\n",
    "bad.txt": "abuse.example\nreport.iwf.org.uk\n",
}


@pytest.fixture
def precedence(write_policy: Callable[..., Path]) -> CompiledPolicy:
    return load_policy(write_policy(PRECEDENCE, files=FILES))


PUPIL = Client(ip="10.0.0.5", role=Role.PUPIL, person_id="p1", device_id="d1", mac="02:00:00:00:00:01")
STAFF = Client(ip="10.0.0.6", role=Role.STAFF, person_id="s1")


@pytest.mark.parametrize("host", [
    "childline.org.uk", "www.childline.org.uk", "samaritans.org", "www.samaritans.org", "kooth.com",
    "helpline.example", "www.nspcc.org.uk", "giveusashout.org", "youngminds.org.uk",
])
@pytest.mark.parametrize("who", ["pupil", "staff", "supervised"])
def test_support_is_always_open(precedence: CompiledPolicy, host: str, who: str) -> None:
    client = {"pupil": PUPIL, "staff": STAFF, "supervised": Client(ip="10.0.0.7", role=Role.SUPERVISED)}[who]
    decision = decide(precedence, client, Target(host), LESSON)
    assert (decision.verdict, decision.rule_id, decision.category) == (Verdict.ALLOW, SUPPORT_RULE_ID, "support")
    assert decision.flags == frozenset()  # not "circumvention", though kooth.com was planted there
    assert decision.valid_until is None


def test_support_survives_a_ban_and_a_site_block(precedence: CompiledPolicy) -> None:
    start, end = LESSON - timedelta(days=1), LESSON + timedelta(days=1)
    layered = precedence.with_overlay(
        bans=[Ban(1, device_id="d1", person_id=None, mac=None, starts=start, until=end)],
        blocks=[
            SiteBlock(2, domain="childline.org.uk", url_prefix=None, roles=frozenset()),
            SiteBlock(3, domain=None, url_prefix="https://www.nspcc.org.uk/keeping-children-safe/",
                      roles=frozenset()),
        ],
    )
    for host, url in (("www.childline.org.uk", None),
                      ("www.nspcc.org.uk", "https://www.nspcc.org.uk/keeping-children-safe/online/")):
        decision = decide(layered, PUPIL, Target(host, url), LESSON)
        assert decision.verdict is Verdict.ALLOW, host
        assert decision.rule_id == SUPPORT_RULE_ID
        assert decision.role is Role.SUPERVISED and "banned" in decision.flags
    # The ban itself still holds for everything else.
    assert decide(layered, PUPIL, Target("example.org"), LESSON).rule_id == "supervised"


@pytest.mark.parametrize("host", ["abuse.example", "www.abuse.example", "report.iwf.org.uk"])
@pytest.mark.parametrize("client", [PUPIL, STAFF], ids=["pupil", "staff"])
def test_illegal_is_a_locked_block_that_outranks_everything(
    precedence: CompiledPolicy, host: str, client: Client
) -> None:
    # report.iwf.org.uk is both illegal (planted) and support: only illegal outranks support.
    # Staff have a rule allowing everything, first in the file: illegal outranks rules too.
    decision = decide(precedence, client, Target(host), LESSON)
    assert (decision.verdict, decision.rule_id, decision.category) == (Verdict.BLOCK, ILLEGAL_RULE_ID, "illegal")
    assert decision.locked and "illegal" in decision.flags


def test_no_exception_or_approved_request_lifts_illegal(precedence: CompiledPolicy) -> None:
    start, end = LESSON - timedelta(hours=1), LESSON + timedelta(hours=1)
    exceptions = [
        PolicyException(1, ExceptionScope.PERSON, "p1", "abuse.example", None, start, end, request_id=9),
        PolicyException(2, ExceptionScope.ROLE, "pupil", None, "http://abuse.example/page", start, end),
        PolicyException(3, ExceptionScope.PERSON, "p1", "porn.example", None, start, end, request_id=10),
    ]
    layered = precedence.with_overlay(exceptions=exceptions)
    illegal = decide(layered, PUPIL, Target("abuse.example", "http://abuse.example/page"), LESSON)
    assert (illegal.verdict, illegal.rule_id, illegal.exception_id) == (Verdict.BLOCK, ILLEGAL_RULE_ID, None)
    # An ordinary category block is lifted by the same kind of exception: the lock is what differs.
    harmful = decide(layered, PUPIL, Target("porn.example"), LESSON)
    assert (harmful.verdict, harmful.exception_id) == (Verdict.ALLOW, 3)


def test_canaries_are_filed_under_their_category(precedence: CompiledPolicy) -> None:
    for category in precedence.categories:
        assert category.canary is not None
        decision = decide(precedence, PUPIL, Target(category.canary), LESSON)
        assert decision.category == category.id, category.id
        assert decision.matched == category.canary
    assert decide(precedence, PUPIL, Target(canary_for("pornography")), LESSON).rule_id == "harmful"
    assert decide(precedence, PUPIL, Target(canary_for("illegal")), LESSON).rule_id == ILLEGAL_RULE_ID
    assert decide(precedence, PUPIL, Target(canary_for("support")), LESSON).verdict is Verdict.ALLOW
    # Only the canary itself: not a name beside it or under it.
    assert decide(precedence, PUPIL, Target("x." + canary_for("pornography")), LESSON).category is None


def test_the_block_explanation_cites_the_category_rationale(precedence: CompiledPolicy) -> None:
    decision = decide(precedence, PUPIL, Target("porn.example"), LESSON)
    text = explain_text(decision, precedence, LESSON)
    assert BUILTIN["pornography"].rationale in text
    help_text = explain_text(decide(precedence, PUPIL, Target("childline.org.uk"), LESSON), precedence, LESSON)
    assert "always reach help" in help_text and BUILTIN["support"].rationale in help_text


def test_the_support_list_is_reviewed_data() -> None:
    domains = [domain for domain, _ in SUPPORT_DOMAINS]
    assert len(domains) == len(set(domains))
    for needed in ("childline.org.uk", "nspcc.org.uk", "ceop.police.uk", "thinkuknow.co.uk", "samaritans.org",
                   "kooth.com", "giveusashout.org", "youngminds.org.uk", "mind.org.uk", "papyrus-uk.org",
                   "beateatingdisorders.org.uk", "iwf.org.uk", "reportharmfulcontent.com"):
        assert needed in domains
    for domain, who in SUPPORT_DOMAINS:
        assert who and domain == domain.lower() and "." in domain
        assert domain not in ("nhs.uk", "gov.uk", "org.uk", "police.uk")  # never a whole platform or suffix
