"""The [lists.ID] syntax for subscriptions: url, squidguard folders mapped onto categories, pins
and limits; and what a policy does before any version is installed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from schoolgate.policy.loader import load_policy
from schoolgate.tomlpos import ConfigError

HEAD = """\
[school]
id = "t"
name = "T"
timezone = "Europe/London"
block_ipv4 = "10.0.0.1"

[calendar]
terms = [{ start = 2026-09-03, end = 2026-12-18 }]

"""
RULE = """
[[rules]]
id = "r"
clause = "c"
reason = "r"
action = "allow"
"""
UT1 = """\
[lists.ut1]
url = "https://lists.example/blacklists.tar.gz"
format = "squidguard"
sha256 = "%s"
max_size_mb = 64
timeout_s = 60

[lists.ut1.categories]
adult = "pornography"
agressif = ["violence", "hate"]
""" % ("ab" * 32)


def test_a_subscription_compiles_before_any_version_is_installed(write_policy: Callable[..., Path]) -> None:
    policy = load_policy(write_policy(HEAD + UT1 + RULE))
    (entry,) = policy.lists
    assert entry.id == "ut1" and entry.count == 0 and entry.version is None
    source = entry.source
    assert source is not None and source.subscription
    assert source.url == "https://lists.example/blacklists.tar.gz"
    assert source.categories == (("adult", ("pornography",)), ("agressif", ("violence", "hate")))
    assert source.categories_of("agressif") == ("violence", "hate")
    assert source.categories_of("sect") == ()  # unmapped: not used
    assert (source.sha256, source.max_bytes, source.timeout_s) == ("ab" * 32, 64 << 20, 60)
    assert any("no version" in w and "ut1" in w for w in policy.warnings)


MISTAKES = [
    ("file-and-url", '[lists.x]\nfile = "a.txt"\nurl = "https://a.example/x" # <-\nformat = "plain"\n',
     "lists.x.url", "either file"),
    ("neither", '[lists.x] # <-\nformat = "plain"\n', "lists.x", 'missing "file"'),
    ("not-a-url", '[lists.x]\nurl = "ftp://a.example/x" # <-\nformat = "plain"\n', "lists.x.url", "web address"),
    ("squidguard-file", '[lists.x]\nfile = "set"\nformat = "squidguard" # <-\n', "lists.x.format",
     "lists import"),
    ("squidguard-unmapped", '[lists.x] # <-\nurl = "https://a.example/x"\nformat = "squidguard"\n', "lists.x",
     "needs categories"),
    ("squidguard-category", '[lists.x]\nurl = "https://a.example/x"\nformat = "squidguard"\n'
     'category = "gambling" # <-\n', "lists.x.category", "categories = {"),
    ("plain-categories", '[lists.x]\nurl = "https://a.example/x"\nformat = "plain"\n'
     'categories = { a = "gambling" } # <-\n', "lists.x.categories", "squidguard"),
    ("unknown-target", '[lists.x]\nurl = "https://a.example/x"\nformat = "squidguard"\n'
     '[lists.x.categories]\nadult = "porn" # <-\n', "lists.x.categories.adult", 'unknown category "porn"'),
    ("bad-pin", '[lists.x]\nurl = "https://a.example/x"\nformat = "plain"\nsha256 = "abc" # <-\n',
     "lists.x.sha256", "64 hexadecimal"),
    ("pin-on-file", '[lists.x]\nfile = "a.txt"\nformat = "plain"\nsha256 = "%s" # <-\n' % ("0" * 64),
     "lists.x.sha256", "only for a subscription"),
    ("huge-cap", '[lists.x]\nurl = "https://a.example/x"\nformat = "plain"\nmax_size_mb = 100000 # <-\n',
     "lists.x.max_size_mb", "from 1 to 4096"),
]


@pytest.mark.parametrize(("name", "body", "field", "fragment"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_list_mistakes_name_line_and_field(
    write_policy: Callable[..., Path], name: str, body: str, field: str, fragment: str
) -> None:
    text = HEAD + body + RULE
    marked = [n for n, line in enumerate(text.splitlines(), start=1) if line.rstrip().endswith("# <-")]
    with pytest.raises(ConfigError) as caught:
        load_policy(write_policy(text, files={"a.txt": "a.example\n"}))
    err = caught.value
    assert (err.line, err.field) == (marked[0], field)
    assert fragment in err.message
