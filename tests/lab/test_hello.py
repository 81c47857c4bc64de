"""The lab's ClientHello (schoolgate.lab.hello) is a real one: the proxy reads back what it names."""

from __future__ import annotations

import pytest

from schoolgate.lab.hello import client_hello
from schoolgate.proxy.hello import parse_client_hello


@pytest.mark.parametrize(
    ("sni", "alpn"),
    [("www.facebook.com", None), ("allowed.test", ["h2", "http/1.1"]), (None, None)],
)
def test_the_hello_names_what_it_was_asked_to(sni: str | None, alpn: list[str] | None) -> None:
    hello = parse_client_hello(client_hello(sni, alpn))
    assert hello is not None
    assert hello.sni == sni
    assert hello.alpn_protocols == [p.encode() for p in alpn or []]
