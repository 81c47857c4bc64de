"""List parsers (hosts, plain, adblock, AdGuard services JSON), the real StevenBlack list, and
the shipped catalogue compared with AdGuard's blocked-services lists."""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schoolgate.policy import Client, Decision, Role, Target, Verdict, decide
from schoolgate.policy.domains import ListIndex, ListSet
from schoolgate.policy.engine import CompiledPolicy
from schoolgate.policy.lists import (
    ListStats,
    parse_adblock,
    parse_adblock_rule,
    parse_adguard_services,
    parse_hosts,
    parse_plain,
    valid_name,
)
from schoolgate.policy.liststore import ListStore, StoreBuilder
from schoolgate.policy.loader import load_policy

reference_data = sys.modules["schoolgate_tests_reference_data"]

# The shared reference data (StevenBlack list, AdGuard services), found beside the checkout.
DATA = reference_data.DATA
STEVENBLACK = DATA / "stevenblack_domains.txt"
ADGUARD = DATA / "services_rules.json"
needs_data = reference_data.needs_reference_data

HOSTS = """\
# a hosts file
127.0.0.1 localhost
::1 localhost ip6-localhost
0.0.0.0 ads.example.com tracker.example.net # two names on one line
0.0.0.0   UPPER.Example.ORG.
127.0.0.1\tmalware.example
:: v6.example.com
0.0.0.0 bad_name!.example
ads.example.com
0.0.0.0
"""


def test_hosts() -> None:
    stats = ListStats()
    names = list(parse_hosts(HOSTS.splitlines(), stats))
    assert names == ["ads.example.com", "tracker.example.net", "upper.example.org", "malware.example", "v6.example.com"]
    assert stats.accepted == 5
    assert stats.skipped == {
        "not a domain name": 1,
        "line does not start with an IP address": 1,
        "address without a name": 1,
    }
    assert stats.examples[0][0] == 8  # the line number of the first skipped line


PLAIN = """\
# plain list
! also a comment
example.com
Sub.Example.NET   # trailing comment
*.wild.example
trailing.dot.example.
http://not-a-domain.example/
two words.example

"""


def test_plain() -> None:
    stats = ListStats()
    names = list(parse_plain(PLAIN.splitlines(keepends=True), stats))
    assert names == ["example.com", "sub.example.net", "wild.example", "trailing.dot.example"]
    assert stats.accepted == 4
    assert stats.skipped_total == 2
    assert "skipped 2 not a domain name" in stats.summary()


# Lines that look almost like a clean list: each must be treated exactly as the line-by-line
# parser treats it, whether it arrives in a clean chunk or among others.
TRICKY_PLAIN = [
    "example.com", "Sub.Example.NET", "*.wild.example", "trailing.dot.", "a..b.example", ".lead.example",
    "-lead.example", "x.-y.example", "two words", "  spaced.example  ", "\tTab.example", "# comment",
    "! comment", "inline.example # comment", "", "ok_1.example", "a" * 64 + ".example", "b" * 63 + ".example",
    ".".join(["c" * 60] * 5), "\u00fcn\u00ef.example", "\u212a.example", "x!y.example", "bad/char.example", "com",
    "-", "_x.example", "192.0.2.1",
]


@pytest.mark.parametrize("newline", ["\n", "\r\n", ""])
@pytest.mark.parametrize("seed", range(40))
def test_plain_fast_path_agrees_with_the_line_parser(seed: int, newline: str) -> None:
    import random

    from schoolgate.policy.lists import _parse_plain_lines

    rng = random.Random(seed)
    clean = [f"n{i}.example.org" for i in range(rng.randint(0, 40))]
    lines = [line + newline for line in clean + rng.sample(TRICKY_PLAIN, rng.randint(0, 3))]
    rng.shuffle(lines)
    fast, slow = ListStats(), ListStats()
    assert list(parse_plain(lines, fast)) == list(_parse_plain_lines(lines, slow))
    assert (fast.accepted, fast.skipped, fast.examples) == (slow.accepted, slow.skipped, slow.examples)


def test_plain_line_numbers_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import schoolgate.policy.lists as lists

    monkeypatch.setattr(lists, "_PLAIN_CHUNK", 4)
    lines = [f"n{i}.example\n" for i in range(10)]
    lines[6] = "not a name\n"
    stats = ListStats()
    names = list(parse_plain(lines, stats))
    assert len(names) == 9 and stats.accepted == 9
    assert stats.examples == [(7, "not a name", "not a domain name")]


ADBLOCK = """\
[Adblock Plus 2.0]
! Title: test
# another comment style
||ads.example.com^
||important.example^$important
|exact.example.org^
||mask.icloud.com^$dnsrewrite=NXDOMAIN;;
||no-caret.example
||p16-tiktok-*.ibyteimg.com^
||*.leading-wildcard.example^
@@||allowed.example^
||client.example^$client=192.168.0.1
/ads[0-9]+\\.example/
example.org##.banner
0.0.0.0 hosts-style.example
plain.example
||https://url.example/path^
"""


def test_adblock() -> None:
    stats = ListStats()
    exact: list[str] = []
    names = list(parse_adblock(ADBLOCK.splitlines(), stats, exact))
    assert names == [
        "ads.example.com",
        "important.example",
        "mask.icloud.com",
        "no-caret.example",
        "leading-wildcard.example",
        "hosts-style.example",
        "plain.example",
    ]
    assert exact == ["exact.example.org"]
    assert stats.accepted == 8 and stats.exact == 1
    assert stats.skipped == {
        "wildcard rules skipped": 1,
        "allow rules (@@) ignored": 1,
        "rules with restricting modifiers ($client, $denyallow, ...) skipped": 1,
        "regular expressions not supported": 1,
        "cosmetic rules ignored": 1,
        "URL or port rules not supported": 1,
    }


@pytest.mark.parametrize(
    ("rule", "parsed"),
    [
        ("||facebook.com^", ("facebook.com", False)),
        ("|fbcdn-a.akamaihd.net^", ("fbcdn-a.akamaihd.net", True)),
        ("||snapkit.co", ("snapkit.co", False)),
        ("||v*.tiktokcdn-eu.com^", "wildcard rules skipped"),
        ("||mask-h2.icloud.com^$dnsrewrite=NXDOMAIN;;", ("mask-h2.icloud.com", False)),
    ],
)
def test_adblock_rule(rule: str, parsed: tuple[str, bool] | str) -> None:
    assert parse_adblock_rule(rule) == parsed


def test_exact_entries_do_not_cover_subdomains(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        """
        [school]
        id = "t"
        name = "T"
        timezone = "Europe/London"
        block_ipv4 = "10.0.0.1"
        [calendar]
        terms = [{ start = 2026-09-03, end = 2026-12-18 }]
        [lists.ads]
        file = "ads.txt"
        format = "adblock"
        [[rules]]
        id = "ads"
        clause = "c"
        reason = "r"
        lists = ["ads"]
        action = "block"
        """,
        files={"ads.txt": "|exact.example.org^\n||whole.example^\n"},
    )
    policy = load_policy(path)
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    client = Client(ip="10.0.0.9", role=Role.STAFF)
    verdicts = {
        h: decide(policy, client, Target(h), now).verdict
        for h in ("exact.example.org", "sub.exact.example.org", "whole.example", "a.b.whole.example", "example.org")
    }
    assert verdicts == {
        "exact.example.org": Verdict.BLOCK,
        "sub.exact.example.org": Verdict.ALLOW,
        "whole.example": Verdict.BLOCK,
        "a.b.whole.example": Verdict.BLOCK,
        "example.org": Verdict.ALLOW,
    }
    assert policy.lists[0].summary.startswith("2 names (1 exact hosts)")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("example.org", True),
        ("a-b_c.example", True),
        ("xn--bcher-kva.example", True),
        ("localhost", True),
        ("-bad.example", False),
        ("bad..example", False),
        (".bad.example", False),
        ("bad.example.", False),
        ("BAD.example", False),
        ("bad example", False),
        ("x" * 64 + ".example", False),
        (("a" * 60 + ".") * 5 + "example", False),  # longer than 253
        ("", False),
    ],
)
def test_valid_name(name: str, valid: bool) -> None:
    assert valid_name(name) is valid


# -- AdGuard blocked services -----------------------------------------------------------------


def test_adguard_services_json_shapes() -> None:
    published = json.dumps({"blocked_services": [{"id": "vine", "name": "Vine", "rules": ["||vine.co^"]}]})
    assert parse_adguard_services(published)["vine"].rules == ("||vine.co^",)
    digest = json.dumps({"rules_by_service": {"vine": ["||vine.co^"]}, "provenance": {"vine": {"name": "Vine"}}})
    assert parse_adguard_services(digest)["vine"].name == "Vine"
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_adguard_services("{")
    with pytest.raises(ValueError, match="blocked_services"):
        parse_adguard_services("[]")
    with pytest.raises(ValueError, match="list of strings"):
        parse_adguard_services(json.dumps({"rules_by_service": {"x": "||x^"}}))


@needs_data
def test_adguard_sample_file() -> None:
    services = parse_adguard_services(ADGUARD.read_text(encoding="utf-8"))
    assert set(services) == {"facebook", "instagram", "twitter", "tiktok", "snapchat", "whatsapp", "youtube", "discord"}
    assert len(services["facebook"].rules) == 443
    skipped = [r for s in services.values() for r in s.rules if isinstance(parse_adblock_rule(r), str)]
    assert skipped == ["||p16-tiktok-*.ibyteimg.com^", "||v*.tiktokcdn-eu.com^"]  # the two wildcard rules


@needs_data
def test_adguard_services_as_a_policy_list(write_policy: Callable[..., Path]) -> None:
    path = write_policy(
        f"""
        [school]
        id = "t"
        name = "T"
        timezone = "Europe/London"
        block_ipv4 = "10.0.0.1"
        [calendar]
        terms = [{{ start = 2026-09-03, end = 2026-12-18 }}]
        [categories.social_media]
        [lists.adguard]
        file = "{ADGUARD}"
        format = "adguard-services"
        services = ["tiktok", "discord"]
        category = "social_media"
        [[rules]]
        id = "social"
        clause = "c"
        reason = "r"
        categories = ["social_media"]
        action = "block"
        """
    )
    policy = load_policy(path)
    (entry,) = policy.lists
    assert "skipped 2 wildcard rules skipped" in entry.summary
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    client = Client(ip="10.0.0.9", role=Role.PUPIL)
    blocked = decide(policy, client, Target("www.tiktok.com"), now)
    assert (blocked.verdict, blocked.list_id, blocked.category, blocked.matched) == (
        Verdict.BLOCK,
        "adguard",
        "social_media",
        "tiktok.com",
    )
    assert decide(policy, client, Target("hammerandchisel.ssl.zendesk.com"), now).verdict is Verdict.BLOCK
    assert decide(policy, client, Target("other.ssl.zendesk.com"), now).verdict is Verdict.ALLOW  # exact rule
    assert decide(policy, client, Target("www.facebook.com"), now).verdict is Verdict.ALLOW  # not selected


# Names in AdGuard's lists that the shipped catalogue leaves out on purpose, with the reason.
META_OPEN_SOURCE_AND_GENERIC = {
    # Meta's open-source and developer project sites: blocking them breaks documentation.
    "botorch.org",
    "buck.build",
    "buckbuild.com",
    "componentkit.org",
    "draftjs.org",
    "fasttext.cc",
    "flow.dev",
    "flow.org",
    "flowtype.org",
    "frescolib.org",
    "hacklang.org",
    "hhvm.com",
    "mcrouter.net",
    "mcrouter.org",
    "opengraphprotocol.com",
    "opengraphprotocol.org",
    "parse.com",
    "pyrobot.org",
    "react.com",
    "reactjs.com",
    "reactjs.org",
    "recoiljs.org",
    "rocksdb.com",
    "rocksdb.net",
    "rocksdb.org",
    "yogalayout.com",
    "opencreate.org",
    "makeitopen.com",
    "messengerdevelopers.com",
    "atscaleconference.com",
    "terragraph.com",
    "expresswifi.com",
    # Generic words and unrelated businesses Meta once bought or registered.
    "groups.com",
    "i.org",
    "newsfeed.com",
    "thefind.com",
    "nextstop.com",
    "gameroom.com",
    "sportstream.com",
    "klik.me",
    "freeb.com",
    "freebs.com",
    "click-url.com",
    "online-deals.net",
    "login-account.net",
    "nbabot.net",
    "redkix.com",
    "liverail.com",
    "liverail.tv",
    "midentsolutions.com",
    "faciometrics.com",
    "worldhack.com",
    "workplaceusecases.com",
    "toplayerserver.com",
    "f8.com",
    "facesounds.com",
    "celebgramme.com",
    # Ad-serving infrastructure (Atlas), blocked as trackers elsewhere, not social media.
    "advancediddetection.com",
    "atdmt2.com",
    "atlasdmt.com",
    "atlasonepoint.com",
    # FriendFeed is long closed; friendfeed.com is kept, its helper domains are not.
    "friendfeed-api.com",
    "friendfeed-media.com",
    "friendfeedmedia.com",
    "freindfeed.com",
    "friendfed.com",
}
SHARED_INFRASTRUCTURE = {"ggpht.com", "ggpht.cn", "youtube"}  # Google Play/Photos images; the .youtube TLD
BRANDS = {
    "facebook": ("facebook", "fb"),
    "instagram": ("instagram", "insta", "gram"),
    "twitter": ("twitter",),
    "tiktok": ("tiktok",),
    "snapchat": ("snapchat",),
    "whatsapp": ("whatsapp",),
    "youtube": ("youtube",),
    "discord": ("discord",),
}
OURS = {"twitter": "x"}


def _lookalike(name: str, brands: tuple[str, ...]) -> bool:
    """Typo-squats and look-alike sites (faceboook.com, instagramtakiphilesi.com): not the
    service itself; they are a matter for a phishing list, not the social media catalogue."""
    label = name.split(".", maxsplit=1)[0]
    return any(b in name for b in brands) or difflib.SequenceMatcher(None, label, brands[0]).ratio() >= 0.6


@needs_data
@pytest.mark.parametrize("service", sorted(BRANDS))
def test_catalogue_covers_adguard_services(example: CompiledPolicy, service: str) -> None:
    services = parse_adguard_services(ADGUARD.read_text(encoding="utf-8"))
    ours = example.service_by_id[OURS.get(service, service)]
    gaps = []
    for rule in services[service].rules:
        parsed = parse_adblock_rule(rule)
        if isinstance(parsed, str):
            continue
        name = parsed[0]
        hm, _ = example.match(name)
        if hm.service == ours.index:
            continue
        if name in META_OPEN_SOURCE_AND_GENERIC or name in SHARED_INFRASTRUCTURE:
            continue
        if service == "youtube" and name.startswith(("youtube.", "youtubego.")):
            continue  # country domains redirect to youtube.com
        if _lookalike(name, BRANDS[service]):
            continue
        gaps.append(name)
    assert gaps == []


def test_catalogue_has_the_services_the_issue_names(example: CompiledPolicy) -> None:
    expected = {
        "x",
        "facebook",
        "instagram",
        "tiktok",
        "snapchat",
        "whatsapp",
        "youtube",
        "google_search",
        "bing",
        "duckduckgo",
    }
    assert expected <= set(example.service_by_id)
    circumvention = {s.id for s in example.services if s.category == "circumvention"}
    assert {"doh_resolvers", "vpn", "web_proxies"} <= circumvention


# -- the real StevenBlack list ----------------------------------------------------------------


def _one_list(builder: StoreBuilder, source_bits: tuple[tuple[int, int], ...]) -> ListSet:
    return ListSet([ListIndex(ListStore(builder.build()), source_bits)])


@needs_data
def test_stevenblack_parses_fully() -> None:
    stats = ListStats()
    builder = StoreBuilder(0x5EED, ["stevenblack"])
    with STEVENBLACK.open(encoding="utf-8") as handle:
        added = builder.add_names(parse_plain(handle, stats), 0)
    assert stats.accepted == 140_626
    assert stats.skipped_total == 0
    lists = _one_list(builder, ((0, 1),))
    assert added == lists.count == 140_626
    with STEVENBLACK.open(encoding="utf-8") as handle:
        sample = [line.strip() for line in handle if line.strip() and not line.startswith("#")][::997]
    for name in sample:
        assert lists.lookup(name)[0] == 1, name
        assert lists.lookup("deeper." + name) == (1, 0, name)
    assert lists.lookup("schoolgate-not-listed.example") == (0, 0, None)


def test_a_store_with_several_sources_and_exact_hosts() -> None:
    builder = StoreBuilder(7, ["a", "b", "unused"])
    assert builder.add_names((f"n{i}.example" for i in range(5000)), 0) == 5000
    builder.add_names(["n1.example", "other.example"], 1)
    builder.add_names(["exact.example"], 1, exact=True)
    builder.add_names(["unused.example"], 2)
    # source a: category bit 0b10 and list bit 0b1; b: category 0b100, list 0b1000; unused: nothing
    lists = _one_list(builder, ((0b10, 0b1), (0b100, 0b1000), (0, 0)))
    assert lists.count == 5003
    assert lists.lookup("a.n1.example") == (0b1001, 0b110, "n1.example")
    assert lists.lookup("exact.example") == (0b1000, 0b100, "exact.example")
    assert lists.lookup("sub.exact.example") == (0, 0, None)
    assert lists.lookup("unused.example") == (0, 0, None)


# -- remembered decisions: one per kind of match, the listed domain named afterwards ---------

KINDS_POLICY = """
    [school]
    id = "t"
    name = "T"
    timezone = "Europe/London"
    block_ipv4 = "10.0.0.1"
    [calendar]
    terms = [{ start = 2026-09-03, end = 2026-12-18 }]
    [lists.games]
    file = "games.txt"
    format = "plain"
    [lists.ads]
    file = "ads.txt"
    format = "adblock"
    [[rules]]
    id = "games"
    clause = "Acceptable Use §2"
    reason = "pupils may not play games at school"
    lists = ["games"]
    roles = ["pupil"]
    action = "block"
    [[rules]]
    id = "ads"
    clause = "Acceptable Use §5"
    reason = "advertising is blocked"
    lists = ["ads"]
    action = "block"
"""
GAMES = [f"game{i}.example" for i in range(300)]
ADS = [f"ads{i}.example.net" for i in range(300)]
EXACT_ADS = [f"pixel{i}.example.org" for i in range(50)]


@pytest.fixture
def kinds_policy(write_policy: Callable[..., Path]) -> Path:
    return write_policy(
        KINDS_POLICY,
        files={
            "games.txt": "\n".join(GAMES) + "\n",
            "ads.txt": "".join(f"||{n}^\n" for n in ADS) + "".join(f"|{n}^\n" for n in EXACT_ADS),
        },
    )


@pytest.mark.parametrize(
    ("role", "host_of", "listed", "verdict", "rule"),
    [
        (Role.PUPIL, "{}", GAMES, Verdict.BLOCK, "games"),
        (Role.PUPIL, "www.{}", GAMES, Verdict.BLOCK, "games"),
        (Role.STAFF, "cdn.{}", GAMES, Verdict.ALLOW, "default"),
        (Role.STAFF, "{}", ADS, Verdict.BLOCK, "ads"),
        (Role.PUPIL, "a.b.{}", ADS, Verdict.BLOCK, "ads"),
        (Role.GUEST, "{}", EXACT_ADS, Verdict.BLOCK, "ads"),
    ],
)
def test_listed_names_of_one_kind_share_one_remembered_decision(
    kinds_policy: Path, role: Role, host_of: str, listed: list[str], verdict: Verdict, rule: str
) -> None:
    """Hundreds of distinct listed names (a subscription has millions) are remembered as one
    decision per kind of match, and each answer still names its own listed domain: the same
    decision as a policy with nothing remembered would give."""
    policy = load_policy(kinds_policy)
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    client = Client(ip="10.0.0.9", role=role)
    answers = [decide(policy, client, Target(host_of.format(name)), now) for name in listed]
    assert [a.matched for a in answers] == listed
    assert {(a.verdict, a.rule_id, a.list_id) for a in answers} == {(verdict, rule, answers[0].list_id)}
    assert len(policy._decisions) == 1
    for name, answer in list(zip(listed, answers, strict=True))[::37]:
        assert decide(load_policy(kinds_policy), client, Target(host_of.format(name)), now) == answer
        assert decide(policy, client, Target(host_of.format(name)), now) is answer  # asked again: remembered


@pytest.mark.parametrize(
    ("role", "host_of", "listed"),
    [
        (Role.PUPIL, "{}", GAMES),
        (Role.PUPIL, "www.{}", GAMES),
        (Role.STAFF, "cdn.{}", GAMES),
        (Role.STAFF, "{}", ADS),
        (Role.PUPIL, "a.b.{}", ADS),
        (Role.GUEST, "{}", EXACT_ADS),
        (Role.GUEST, "www.{}", EXACT_ADS),
    ],
)
def test_an_unnamed_decision_differs_from_the_named_one_in_matched_alone(
    kinds_policy: Path, role: Role, host_of: str, listed: list[str]
) -> None:
    """decide(named=False), as the DNS fast path asks: every field but `matched` is what the
    named decision says, whichever of the two a policy was asked first."""
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    client = Client(ip="10.0.0.9", role=role)
    named_first, unnamed_first = load_policy(kinds_policy), load_policy(kinds_policy)
    for name in listed[:60]:
        target = Target(host_of.format(name))
        named = decide(named_first, client, target, now)
        unnamed = decide(named_first, client, target, now, named=False)
        later_unnamed = decide(unnamed_first, client, target, now, named=False)
        later_named = decide(unnamed_first, client, target, now)
        assert later_named == named
        for got in (unnamed, later_unnamed):
            assert dataclasses.replace(got, matched=named.matched) == named, name
    assert len(unnamed_first._named) <= len(named_first._named)


def test_a_listed_name_under_an_exact_entry_only_is_not_blocked(kinds_policy: Path) -> None:
    """An exact entry's kind must not lend its decision to the name's subdomains."""
    policy = load_policy(kinds_policy)
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    client = Client(ip="10.0.0.9", role=Role.STAFF)
    assert decide(policy, client, Target(EXACT_ADS[0]), now).verdict is Verdict.BLOCK
    sub = decide(policy, client, Target("www." + EXACT_ADS[1]), now)
    assert (sub.verdict, sub.matched, sub.list_id) == (Verdict.ALLOW, None, None)


def test_a_decision_about_another_domain_copies_every_field() -> None:
    """`Decision.about` copies slot by slot: a field added later must be copied too."""
    values: dict[str, object] = {
        "verdict": Verdict.SAFE_SEARCH, "rule_id": "r", "clause": "c", "reason": "why", "role": Role.GUEST,
        "service": "s", "service_name": "S", "category": "gambling", "matched": "a.example", "locked": True,
        "exception_id": 7, "rewrite_to": "safe.example", "valid_until": datetime(2026, 11, 23, 12, tzinfo=UTC),
        "flags": frozenset({"x"}), "list_id": "ads", "url_scoped": True, "own_role": Role.PUPIL,
    }
    assert set(values) == {f.name for f in dataclasses.fields(Decision)}
    original = Decision(**values)  # type: ignore[arg-type]
    assert original.about("b.example") == dataclasses.replace(original, matched="b.example")
    assert original.matched == "a.example"


# -- the policy's one ListSet: its lists and the catalogue asked in one call -------------------

LITERALS_POLICY = KINDS_POLICY + """
    [lists.networks]
    file = "networks.txt"
    format = "plain"
    [[rules]]
    id = "networks"
    clause = "Acceptable Use §6"
    reason = "these addresses are blocked"
    lists = ["networks"]
    action = "block"
"""


@pytest.fixture
def literals_policy(write_policy: Callable[..., Path]) -> Path:
    return write_policy(
        LITERALS_POLICY,
        files={
            "games.txt": "\n".join(GAMES) + "\n",
            "ads.txt": "".join(f"||{n}^\n" for n in ADS),
            # public addresses (documentation and private ranges are refused by the list reader)
            "networks.txt": "blocked-host.example\n45.33.32.156\n93.184.216.0/24\n2a00:1450:4009::/48\n",
        },
    )


def test_a_compiled_policy_builds_one_prober_with_the_catalogue(
    literals_policy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lists and the catalogue's names are handed to the compiled prober once, when the
    policy is built: not a second ListSet over the same buffers for the catalogue."""
    import schoolgate.policy.domains as domains

    built: list[object] = []
    real = domains.Prober

    def counted(stores: object, catalogue: object) -> object:
        built.append(catalogue)
        return real(stores, catalogue)  # type: ignore[arg-type]

    monkeypatch.setattr(domains, "Prober", counted)
    policy = load_policy(literals_policy)
    assert len(built) == 1 and built[0] is not None  # the example catalogue's names are in it
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    pupil = Client(ip="10.0.0.9", role=Role.PUPIL)
    assert decide(policy, pupil, Target("www." + GAMES[3]), now).rule_id == "games"
    assert policy.entries.classify("www." + GAMES[3])[4] == ()  # no catalogue name above it
    catalogue_host = next(iter(policy._catalogue_names))
    assert catalogue_host in policy.entries.classify("www." + catalogue_host)[4]


@pytest.mark.parametrize(
    ("host", "rule", "asks_the_names"),
    [
        ("45.33.32.156", "networks", False),  # a listed address
        ("93.184.216.34", "networks", False),  # in a listed network
        ("2a00:1450:4009::1", "networks", False),
        ("93.184.217.1", "default", False),  # an address no list holds
        ("::1", "default", False),
        (GAMES[0], "default", True),  # a name (the client is staff: games are allowed)
        ("www." + ADS[1], "ads", True),
        ("1.2.3.4.example", "default", True),  # ends in a letter: a name
        ("game.123", "default", True),  # ends in a digit, not an address: a name
        ("45.33.32.156.", "networks", False),  # rooted: normalised first
    ],
)
def test_an_address_literal_is_answered_by_the_listed_networks_alone(
    literals_policy: Path, host: str, rule: str, asks_the_names: bool
) -> None:
    """An address literal is looked up among the listed networks, and the lists' names are
    not asked about it first (their answer was thrown away)."""
    policy = load_policy(literals_policy)
    asked: list[str] = []
    classify = policy.entries.classify

    def recording(name: str) -> tuple[int, int, str | None, bool, bool]:
        asked.append(name)
        return classify(name)

    policy.entries.classify = recording
    now = datetime(2026, 11, 23, 11, tzinfo=UTC)
    decision = decide(policy, Client(ip="10.0.0.9", role=Role.STAFF), Target(host), now)
    assert decision.rule_id == rule
    assert bool(asked) is asks_the_names
