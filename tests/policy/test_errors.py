"""Every kind of mistake in a policy file gets its own message, with the right line.

Each case is a small policy file; the line marked `# <-` is where the error must point.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from schoolgate.policy.loader import load_policy
from schoolgate.tomlpos import ConfigError

HEAD = """\
[school]
id = "test"
name = "Test Primary"
timezone = "Europe/London"
block_ipv4 = "10.0.0.1"

[calendar]
terms = [
  { name = "Autumn", start = 2026-09-03, end = 2026-12-18 },
  { name = "Spring", start = 2027-01-04, end = 2027-03-26 },
]

[windows.school_hours]
from = "08:45"
to = "15:15"

[windows.lunch]
from = "12:00"
to = "13:00"

[categories.social_media]
name = "Social media"

[services.facebook]
category = "social_media"
domains = ["facebook.com", "fb.com"]

"""

RULE = """\
[[rules]]
id = "pupils"
clause = "Social Media Policy §6"
reason = "pupils may not use social media"
roles = ["pupil"]
categories = ["social_media"]
action = "block"
"""

CASES: list[tuple[str, str, str, str]] = [
    # (case id, policy text, expected field, expected message fragment)
    (
        "unknown-window",
        HEAD
        + RULE
        + '[[rules]]\nid = "staff"\nclause = "§4"\nreason = "r"\nwhen = ["lunchtime"] # <-\naction = "allow"\n',
        "rules[2].when",
        'unknown window "lunchtime" (known: lunch, school_hours)',
    ),
    (
        "unknown-window-in-a-long-list",
        HEAD
        + RULE
        + '[[rules]]\nid = "staff"\nclause = "§4"\nreason = "r"\n'
        + 'when = [\n  "lunch",\n  "breaks", # <-\n]\naction = "allow"\n',
        "rules[2].when",
        'unknown window "breaks"',
    ),
    (
        "unknown-service",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\nservices = ["facebok"] # <-\naction = "block"\n',
        "rules[1].services",
        'unknown service "facebok" (known: facebook)',
    ),
    (
        "unknown-role",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\nroles = ["pupil", "teacher"] # <-\naction = "block"\n',
        "rules[1].roles",
        'unknown role "teacher" (known: pupil, staff, authorised, guest, supervised)',
    ),
    (
        "unknown-list",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\nlists = ["malware"] # <-\naction = "block"\n',
        "rules[1].lists",
        'unknown list "malware" (known: none defined)',
    ),
    (
        "unknown-rule-field",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\nwindow = ["lunch"] # <-\naction = "block"\n',
        "rules[1].window",
        'unknown field "window" in a rule (known: id, clause, reason, action, roles',
    ),
    (
        "duplicate-rule-id",
        HEAD + RULE + RULE.replace('id = "pupils"', 'id = "pupils" # <-'),
        "rules[2].id",
        'duplicate rule id "pupils" (also rules[1])',
    ),
    (
        "bad-time",
        HEAD.replace('to = "13:00"', 'to = "25:00" # <-') + RULE,
        "windows.lunch.to",
        '"25:00" is not a time of day',
    ),
    (
        "bad-time-format",
        HEAD.replace('from = "12:00"', 'from = "noon" # <-') + RULE,
        "windows.lunch.from",
        'write it as HH:MM, e.g. "08:45"',
    ),
    (
        "from-equals-to",
        HEAD.replace('to = "13:00"', 'to = "12:00" # <-') + RULE,
        "windows.lunch.to",
        "the window starts and ends at the same time (12:00)",
    ),
    (
        "unknown-day",
        HEAD.replace('to = "13:00"', 'to = "13:00"\ndays = ["mon", "funday"] # <-') + RULE,
        "windows.lunch.days",
        'unknown day "funday"',
    ),
    (
        "unknown-window-calendar",
        HEAD.replace('to = "13:00"', 'to = "13:00"\ncalendar = "term_time" # <-') + RULE,
        "windows.lunch.calendar",
        'unknown calendar "term_time" (known: school_days, staff_days, every_day, non_school_days)',
    ),
    (
        "bad-cidr",
        HEAD
        + '[[networks]]\nname = "Pupils"\ncidrs = [\n  "10.1.0.0/16",\n  "10.2.0.0/33", # <-\n]\nrole = "pupil"\n\n'
        + RULE,
        "networks[1].cidrs",
        '"10.2.0.0/33" is not a network in CIDR form',
    ),
    (
        "cidr-with-host-bits",
        HEAD + '[[networks]]\ncidrs = ["10.1.2.3/16"] # <-\nrole = "pupil"\n\n' + RULE,
        "networks[1].cidrs",
        "has host bits set",
    ),
    (
        "network-role",
        HEAD + '[[networks]]\ncidrs = ["10.1.0.0/16"]\nrole = "children" # <-\n\n' + RULE,
        "networks[1].role",
        'unknown role "children"',
    ),
    (
        "term-end-before-start",
        HEAD.replace(
            '{ name = "Spring", start = 2027-01-04, end = 2027-03-26 },',
            '{ name = "Spring", start = 2027-01-04, end = 2026-03-26 }, # <-',
        )
        + RULE,
        "calendar.terms[2].end",
        "the term ends (2026-03-26) before it starts (2027-01-04)",
    ),
    (
        "bad-date-string",
        HEAD.replace(
            '{ name = "Autumn", start = 2026-09-03, end = 2026-12-18 },',
            '{ name = "Autumn", start = "2026-02-30", end = 2026-12-18 }, # <-',
        )
        + RULE,
        "calendar.terms[1].start",
        '"2026-02-30" is not a date; write it as YYYY-MM-DD',
    ),
    (
        "bad-date-toml",
        HEAD.replace(
            '{ name = "Autumn", start = 2026-09-03, end = 2026-12-18 },',
            '{ name = "Autumn", start = 2026-02-30, end = 2026-12-18 }, # <-',
        )
        + RULE,
        "",
        "not valid TOML",
    ),
    (
        "closure-kind",
        HEAD.replace(
            "[windows.school_hours]",
            'closures = [\n  { date = 2026-11-02, kind = "training" }, # <-\n]\n\n[windows.school_hours]',
        )
        + RULE,
        "calendar.closures[1].kind",
        'unknown kind "training"',
    ),
    (
        "missing-required-rule-field",
        HEAD + '[[rules]] # <-\nid = "a"\nreason = "r"\naction = "block"\n',
        "rules[1]",
        'missing required field "clause"',
    ),
    (
        "missing-school-section",
        "# <-\n" + HEAD.split("[calendar]", 1)[1].join(["[calendar]", ""]) + RULE,
        "",
        'missing required field "school"',
    ),
    (
        "missing-window-to",
        HEAD.replace('to = "13:00"\n', "").replace("[windows.lunch]", "[windows.lunch] # <-") + RULE,
        "windows.lunch",
        'missing required field "to"',
    ),
    (
        "unknown-list-format",
        HEAD + '[lists.malware]\nfile = "malware.txt"\nformat = "dnsmasq" # <-\n\n' + RULE,
        "lists.malware.format",
        'unknown list format "dnsmasq" (known: plain, hosts, adblock, adguard-services, squidguard)',
    ),
    (
        "missing-list-file",
        HEAD + '[lists.malware]\nfile = "lists/missing.txt" # <-\nformat = "plain"\n\n' + RULE,
        "lists.malware.file",
        'list file "lists/missing.txt" not found',
    ),
    (
        "bad-timezone",
        HEAD.replace('timezone = "Europe/London"', 'timezone = "Europe/Londn" # <-') + RULE,
        "school.timezone",
        'unknown time zone "Europe/Londn"',
    ),
    (
        "block-address-not-ip",
        HEAD.replace('block_ipv4 = "10.0.0.1"', 'block_ipv4 = "schoolgate.lan" # <-') + RULE,
        "school.block_ipv4",
        '"schoolgate.lan" is not an IPv4 address',
    ),
    (
        "block-ipv6-given-ipv4",
        HEAD.replace('block_ipv4 = "10.0.0.1"', 'block_ipv4 = "10.0.0.1"\nblock_ipv6 = "10.0.0.2" # <-') + RULE,
        "school.block_ipv6",
        '"10.0.0.2" is not an IPv6 address',
    ),
    (
        "unknown-section",
        HEAD + "[rule] # <-\nid = 1\n\n" + RULE,
        "rule",
        'unknown section "rule"',
    ),
    (
        "unknown-category",
        HEAD.replace('category = "social_media"', 'category = "social" # <-') + RULE,
        "services.facebook.category",
        'unknown category "social" (known: circumvention, dating, drugs, extremism, gambling, hate, illegal, '
    ),
    (
        "url-as-domain",
        HEAD.replace(
            'domains = ["facebook.com", "fb.com"]', 'domains = [\n  "facebook.com",\n  "https://fb.com/", # <-\n]'
        )
        + RULE,
        "services.facebook.domains",
        '"https://fb.com/" is not a domain name',
    ),
    (
        "domain-in-two-services",
        HEAD + '[services.meta]\ndomains = ["fb.com"] # <-\n\n' + RULE,
        "services.meta.domains",
        '"fb.com" is already listed under service "facebook"',
    ),
    (
        "service-without-domains",
        HEAD + "[services.empty] # <-\n\n" + RULE,
        "services.empty",
        'needs "domains" (with subdomains) or "hosts" (exact names)',
    ),
    (
        "unknown-action",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\naction = "deny" # <-\n',
        "rules[1].action",
        'unknown action "deny" (known: allow, block, safe_search)',
    ),
    (
        "safe-search-without-host",
        HEAD
        + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\nservices = ["facebook"]\naction = "safe_search" # <-\n',
        "rules[1].action",
        'service "facebook" has no safe_search host',
    ),
    (
        "locked-allow",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\naction = "allow"\nlocked = true # <-\n',
        "rules[1].locked",
        "only a block can be locked",
    ),
    (
        "locked-not-bool",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\naction = "block"\nlocked = "yes" # <-\n',
        "rules[1].locked",
        'must be true or false, got "yes"',
    ),
    (
        "year-groups",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\naction = "block"\nyear_groups = ["Y6"] # <-\n',
        "rules[1].year_groups",
        "must be a list of year numbers 0-13",
    ),
    (
        "unknown-device-condition",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\naction = "block"\n'
        + 'devices = [\n  "personal",\n  "school", # <-\n]\n',
        "rules[1].devices",
        'unknown device condition "school" (known: school_owned, personal, unknown',
    ),
    (
        "empty-devices",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\ndevices = [] # <-\naction = "block"\n',
        "rules[1].devices",
        "an empty list matches no device",
    ),
    (
        "empty-roles",
        HEAD + '[[rules]]\nid = "a"\nclause = "c"\nreason = "r"\nroles = [] # <-\naction = "block"\n',
        "rules[1].roles",
        "an empty list matches nobody",
    ),
    (
        "no-rules",
        HEAD + "# <-\n",
        "",
        'missing required field "rules"',
    ),
    (
        "toml-syntax",
        HEAD + '[[rules]]\nid = "a # <-\nclause = "c"\n',
        "",
        "not valid TOML",
    ),
    (
        "default-action",
        HEAD + RULE + '\n[default]\naction = "safe_search" # <-\n',
        "default.action",
        'unknown action "safe_search" (known: allow, block)',
    ),
    (
        "unknown-school-field",
        HEAD.replace('name = "Test Primary"', 'name = "Test Primary"\nurn = 123456 # <-') + RULE,
        "school.urn",
        'unknown field "urn" in [school]',
    ),
    (
        "ban-mode",
        HEAD + RULE + '\n[bans]\non_circumvention = "always" # <-\n',
        "bans.on_circumvention",
        'unknown choice "always" (known: offer, automatic)',
    ),
    (
        "ban-days",
        HEAD + RULE + '\n[bans]\ndays = 400 # <-\n',
        "bans.days",
        "must be a whole number from 0 to 366, got 400",
    ),
    (
        "ban-roles",
        HEAD + RULE + '\n[bans]\nautomatic_roles = ["pupils"] # <-\n',
        "bans.automatic_roles",
        'unknown role "pupils"',
    ),
]


@pytest.mark.parametrize(("text", "field", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_names_line_field_and_cause(
    write_policy: Callable[..., Path], text: str, field: str, fragment: str
) -> None:
    marked = [n for n, line in enumerate(text.splitlines(), start=1) if line.rstrip().endswith("# <-")]
    assert len(marked) == 1, "each case marks exactly one line"
    path = write_policy(text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    err = caught.value
    assert fragment in err.message
    assert err.field == field
    if field or "TOML" in fragment:
        assert err.line == marked[0], str(err)
    text_form = str(err)
    prefix = f"policy.toml:{err.line}: " if err.line else "policy.toml: "
    assert text_form.startswith(prefix + (f"{field}: " if field else ""))


def test_messages_differ_between_kinds() -> None:
    fragments = [c[3] for c in CASES]
    assert len(set(fragments)) == len(fragments) - 1  # the two invalid-TOML cases share one


def test_the_example_from_the_issue(write_policy: Callable[..., Path]) -> None:
    text = HEAD + RULE * 0
    for n in range(3):
        text += RULE.replace('id = "pupils"', f'id = "rule-{n}"')
    text += '[[rules]]\nid = "staff"\nclause = "§4"\nreason = "r"\nwhen = ["lunchtime"]\naction = "allow"\n'
    with pytest.raises(ConfigError) as caught:
        load_policy(write_policy(text))
    line = text.splitlines().index('when = ["lunchtime"]') + 1
    assert str(caught.value) == (
        f'policy.toml:{line}: rules[4].when: unknown window "lunchtime" (known: lunch, school_hours)'
    )


def test_list_file_that_is_not_utf8(write_policy: Callable[..., Path], tmp_path: Path) -> None:
    path = write_policy(HEAD + '[lists.x]\nfile = "x.txt"\nformat = "plain"\n\n' + RULE)
    (tmp_path / "x.txt").write_bytes(b"example.org\n\xff\xfe bad\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_policy(path)


def test_empty_list_file(write_policy: Callable[..., Path]) -> None:
    path = write_policy(HEAD + '[lists.x]\nfile = "x.txt"\nformat = "hosts"\n\n' + RULE, files={"x.txt": "# nothing\n"})
    with pytest.raises(ConfigError, match="holds no domain names in hosts format"):
        load_policy(path)


def test_adguard_services_unknown_service(write_policy: Callable[..., Path]) -> None:
    doc = textwrap.dedent('{"blocked_services": [{"id": "tiktok", "name": "TikTok", "rules": ["||tiktok.com^"]}]}')
    path = write_policy(
        HEAD
        + '[lists.ag]\nfile = "s.json"\nformat = "adguard-services"\nservices = ["tiktok", "vine"] # <-\n\n'
        + RULE,
        files={"s.json": doc},
    )
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert caught.value.field == "lists.ag.services"
    assert '"vine" is not in s.json (it has: tiktok)' in caught.value.message


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "nope.toml")


LOCATE_TEXT = """\
[calendar]
terms = [ # the year
  { name = "Autumn, [1]", start = 2026-09-03, end = 2026-10-23 },
  { name = 'Autumn # 2',
    start = 2026-11-02, end = 2026-12-18 },
  { name = \"\"\"Spring
]\"\"\", start = 2027-01-04, end = 2027-03-26 },
]
after = 1
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("calendar", "terms"), 2),
        (("calendar", "terms", 0, "end"), 3),
        (("calendar", "terms", 1), 4),
        (("calendar", "terms", 1, "start"), 5),
        (("calendar", "terms", 2, "start"), 7),
        (("calendar", "terms", 7), 2),  # no such element: the field's own line
        (("calendar", "after"), 9),
    ],
)
def test_locate_inside_multi_line_arrays(path: tuple[str | int, ...], line: int) -> None:
    from schoolgate.tomlpos import locate

    assert locate(LOCATE_TEXT, path) == line


def test_the_ban_policy_is_read_with_its_defaults(write_policy: Callable[..., Path]) -> None:
    from schoolgate.policy.types import Role

    default = load_policy(write_policy(HEAD + RULE)).bans
    assert (default.on_circumvention, default.automatic, default.automatic_roles, default.days) == (
        "offer", False, frozenset({Role.PUPIL}), 14)
    text = HEAD + RULE + '\n[bans]\non_circumvention = "automatic"\nautomatic_roles = ["pupil", "guest"]\n'
    text += 'days = 0\nsupervisor = "Mrs Khan, Year 6 teacher"\n'
    chosen = load_policy(write_policy(text)).bans
    assert chosen.automatic and chosen.automatic_roles == frozenset({Role.PUPIL, Role.GUEST})
    assert (chosen.days, chosen.supervisor) == (0, "Mrs Khan, Year 6 teacher")
