"""The pure pieces: search-term extraction, the block page, the address book, mode specs."""

from __future__ import annotations

import base64
import hashlib
import html
import ipaddress
import re
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from schoolgate.proxy import blockpage
from schoolgate.proxy.addresses import AddressBook, parse_prefix_host
from schoolgate.proxy.daemon import mode_spec, watched_names
from schoolgate.proxy.search import is_search_engine, search_term


@pytest.mark.parametrize(
    ("host", "url", "term"),
    [
        ("www.google.com", "https://www.google.com/search?q=volcano+facts&hl=en", "volcano facts"),
        ("www.google.co.uk", "https://www.google.co.uk/search?client=x&q=how%20to%20draw", "how to draw"),
        ("www.bing.com", "https://www.bing.com/search?q=minecraft&form=QBLH", "minecraft"),
        ("www.youtube.com", "https://www.youtube.com/results?search_query=lego+star+wars", "lego star wars"),
        ("m.youtube.com", "https://m.youtube.com/results?search_query=%3Cscript%3E", "<script>"),
        ("duckduckgo.com", "https://duckduckgo.com/?q=vpn+free&t=h_", "vpn free"),
        ("html.duckduckgo.com", "https://html.duckduckgo.com/html/?q=proxy", "proxy"),
        ("www.google.com", "https://www.google.com/maps?q=london", None),  # not a search page
        ("www.example.org", "https://www.example.org/search?q=anything", None),  # not an engine
        ("notgoogle.com", "https://notgoogle.com/search?q=x", None),
        ("www.bing.com", "https://www.bing.com/search?form=QBLH", None),
        ("www.bing.com", "https://www.bing.com/search?q=%20%20", None),
        ("www.google.com", "https://www.google.com/search?q=" + "a" * 2000, "a" * 500),
        ("www.google.com", "https://www.google.com/search?q=line1%0Aline2%09tab", "line1 line2 tab"),
    ],
)
def test_search_terms(host: str, url: str, term: str | None) -> None:
    assert search_term(host, url) == term


def test_search_engines() -> None:
    assert is_search_engine("www.google.de") and is_search_engine("www.youtube.com")
    assert not is_search_engine("www.facebook.com") and not is_search_engine("google.evil.example")


INFO = blockpage.BlockInfo(
    school="St Mary's <C of E> Primary",
    host='evil.example"><script>alert(1)</script>',
    url='https://evil.example/<svg onload=alert(1)>?a=1&b="2"',
    rule_id="social-media",
    clause="Social Media Policy §9",
    reason="social media sites are not accessible <b>here</b>",
    at=datetime(2026, 7, 1, 10, 15, tzinfo=UTC),
    device="LAP-001&x=<y>",
    device_name="Laptop <1>",
    zone=ZoneInfo("Europe/London"),  # the school's [school] timezone
)


def test_block_page_escapes_everything_it_echoes() -> None:
    page = blockpage.render(INFO, "https://console.test:8443/")
    body = page.split("<body>", 1)[1]
    assert "<script" not in body and "<svg" not in body and "<b>" not in body
    assert "&lt;script&gt;" in body and "&lt;svg onload=alert(1)&gt;" in body
    assert "St Mary&#x27;s &lt;C of E&gt; Primary" in page
    assert "Wednesday 1 July 2026, 11:15 am" in page  # in the school's zone (BST in July), in words
    assert "filtered and monitored" in page
    # The request link: one attribute, every value percent-encoded, round-trips exactly.
    href = re.search(r'href="([^"]*)"', page)
    assert href is not None
    link = html.unescape(href.group(1))
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "console.test:8443", "/request")
    query = parse_qs(parts.query)
    assert query["url"] == [INFO.url]
    assert query["device"] == [INFO.device]
    assert query["rule"] == ["social-media"]
    assert query["at"] == ["2026-07-01T10:15:00+00:00"]


def test_block_page_style_is_allowed_by_its_hash_and_nothing_else() -> None:
    page = blockpage.render(INFO, "https://console.test")
    style = re.search(r"<style>(.*?)</style>", page, re.S)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in blockpage.CSP
    assert "script-src 'none'" in blockpage.CSP and "default-src 'none'" in blockpage.CSP
    assert "<script" not in page.split("<body>")[0]


def test_address_book_learns_expires_and_knows_ranges() -> None:
    now = [1000.0]
    book = AddressBook(clock=lambda: now[0])
    book.learn("facebook.com", ["157.240.1.35", "2a03:2880:f12f:83:face:b00c:0:25de", "bogus"], 60)
    named = [parse_prefix_host("31.13.0.0/16 instagram.com"), parse_prefix_host("31.13.64.0/18=facebook.com")]
    book.set_prefixes(named, [ipaddress.ip_network("192.0.2.0/24")])
    assert book.host_for("157.240.1.35") == "facebook.com"
    assert book.host_for("::ffff:157.240.1.35") == "facebook.com"  # dual-stack socket form
    assert book.host_for("2a03:2880:f12f:83:face:b00c:0:25de") == "facebook.com"
    assert book.host_for("31.13.70.1") == "facebook.com"  # the longer prefix wins
    assert book.host_for("31.13.1.1") == "instagram.com"
    assert book.host_for("192.0.2.5") is None and book.is_watched("192.0.2.5")
    assert not book.is_watched("198.51.100.1") and book.host_for("not an ip") is None
    now[0] += 61
    assert book.host_for("157.240.1.35") is None
    assert book.expire() == 2 and len(book) == 0
    with pytest.raises(ValueError):
        parse_prefix_host("31.13.0.0/16")


def test_address_book_follows_new_ranges_after_an_address_was_looked_up() -> None:
    """The names of the ranges an address is in are remembered per address: a new set of
    ranges (a reload) must replace what was remembered, not add to it or be ignored."""
    book = AddressBook()
    book.set_prefixes([parse_prefix_host("31.13.0.0/16 instagram.com")], [])
    assert book.hosts_for("31.13.70.1") == ["instagram.com"]
    assert book.hosts_for("::ffff:31.13.70.1") == ["instagram.com"]  # the same address, remembered once
    book.hosts_for("31.13.70.1").append("changed by a caller")  # each answer is the caller's own list
    assert book.hosts_for("31.13.70.1") == ["instagram.com"]
    assert book.hosts_for("198.51.100.1") == []  # neither learnt nor in a range
    book.set_prefixes([parse_prefix_host("31.13.64.0/18 facebook.com")], [])
    assert book.hosts_for("31.13.70.1") == ["facebook.com"]
    book.set_prefixes([], [])
    assert book.hosts_for("31.13.70.1") == []
    book.learn("whatsapp.com", ["31.13.70.1"], 60)
    assert book.hosts_for("31.13.70.1") == ["whatsapp.com"]  # learnt names still come first


@pytest.mark.parametrize(
    ("mode", "listen", "spec"),
    [
        ("transparent", "0.0.0.0:8081", "transparent@0.0.0.0:8081"),
        ("transparent", "*:8081", "transparent@8081"),
        ("transparent", "[::]:8081", "transparent@:::8081"),
        ("regular", "127.0.0.1:18081", "regular@127.0.0.1:18081"),
    ],
)
def test_mode_spec(mode: str, listen: str, spec: str) -> None:
    from mitmproxy.proxy.mode_specs import ProxyMode

    assert mode_spec(mode, listen) == spec
    parsed = ProxyMode.parse(spec)
    assert parsed.type_name == mode


@pytest.mark.parametrize(("mode", "listen"), [("transparent", "8081"), ("socks5", "*:1080"), ("regular", "*:99999")])
def test_mode_spec_rejects(mode: str, listen: str) -> None:
    with pytest.raises(ValueError):
        mode_spec(mode, listen)


def test_watched_names_come_from_the_catalogue(policy: object) -> None:
    names = watched_names(policy, ["extra.example"])
    assert names[0] == "extra.example"
    assert {"facebook.com", "www.facebook.com", "fbcdn.net", "whatsapp.com"} <= set(names)


def test_an_address_keeps_every_service_it_serves() -> None:
    book = AddressBook()
    book.learn("whatsapp.com", ["157.240.1.60"], 60)
    book.learn("facebook.com", ["157.240.1.60"], 60)
    book.learn("whatsapp.com", ["157.240.1.60"], 60)
    assert book.hosts_for("157.240.1.60") == ["whatsapp.com", "facebook.com"]
    for n in range(20):
        book.learn(f"svc{n}.example", ["157.240.1.60"], 60)
    assert len(book.hosts_for("157.240.1.60")) == 8  # bounded
