"""The front door's ClientHello reader against mitmproxy's own parser: same SNI, same ALPN,
the same bytes refused, on real ClientHellos, crafted ones, every truncation and random damage."""

from __future__ import annotations

import random
import struct

import pytest
from mitmproxy.proxy.layers.tls import parse_client_hello as mitmproxy_parse
from proxy_testkit import client_hello_bytes

from schoolgate.proxy.hello import parse_client_hello, read_sni_alpn


def mitmproxy_view(body: bytes) -> tuple[str | None, list[bytes]] | str:
    """What mitmproxy makes of a ClientHello body: (sni, alpn), or "refused"."""
    from mitmproxy.tls import ClientHello

    try:
        hello = ClientHello(body)
        return hello.sni, hello.alpn_protocols
    except (EOFError, ValueError):
        return "refused"


def fast_view(body: bytes) -> tuple[str | None, list[bytes]] | str:
    try:
        return read_sni_alpn(body)
    except ValueError:
        return "refused"


def body_of(record: bytes) -> bytes:
    parsed = mitmproxy_parse(record)
    assert parsed is not None
    return parsed.raw_bytes(wrap_in_record=False)


def extension(kind: int, payload: bytes) -> bytes:
    return struct.pack("!HH", kind, len(payload)) + payload


def server_names(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(struct.pack("!BH", kind, len(name)) + name for kind, name in names)
    return extension(0, struct.pack("!H", len(entries)) + entries)


def alpn(*protocols: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return extension(16, struct.pack("!H", len(entries)) + entries)


def crafted(*extensions: bytes, suites: bytes = b"\x13\x01\x13\x02", session: bytes = b"") -> bytes:
    body = b"\x03\x03" + bytes(32) + bytes([len(session)]) + session
    body += struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    if extensions:
        joined = b"".join(extensions)
        body += struct.pack("!H", len(joined)) + joined
    return body


CRAFTED = {
    "one name": crafted(server_names((0, b"www.facebook.com"))),
    "two names": crafted(server_names((0, b"a.example"), (0, b"b.example"))),
    "another name type": crafted(server_names((1, b"www.facebook.com"))),
    "not a host name": crafted(server_names((0, b"bad name!"))),
    "empty name list": crafted(server_names()),
    "second extension valid": crafted(server_names((0, b"bad name!")), server_names((0, b"good.example"))),
    "alpn": crafted(alpn(b"h2", b"http/1.1"), server_names((0, b"x.example"))),
    "two alpn": crafted(alpn(), alpn(b"h2")),
    "no extensions": crafted(),
    "odd suites length": crafted(server_names((0, b"x.example")), suites=b"\x13\x01\x13"),
    "session id": crafted(server_names((0, b"x.example")), session=bytes(range(32))),
    "extension overruns": crafted(server_names((0, b"x.example")))[:-3] + b"\x00\x00\x00",
    "ip literal": crafted(server_names((0, b"192.0.2.1"))),
}
REAL = {sni or "no sni": body_of(client_hello_bytes(sni)) for sni in ("www.facebook.com", "allowed.test", None)}


@pytest.mark.parametrize("body", [*CRAFTED.values(), *REAL.values()], ids=[*CRAFTED, *REAL])
def test_the_same_view_as_mitmproxy(body: bytes) -> None:
    assert fast_view(body) == mitmproxy_view(body)


@pytest.mark.parametrize("body", [*REAL.values(), CRAFTED["alpn"]], ids=[*REAL, "alpn"])
def test_every_truncation_is_seen_alike(body: bytes) -> None:
    for cut in range(len(body)):
        assert fast_view(body[:cut]) == mitmproxy_view(body[:cut]), cut


def test_random_damage_is_seen_alike() -> None:
    rng = random.Random(14)  # fixed: a failure is reproducible
    bodies = [*REAL.values(), *CRAFTED.values()]
    for _ in range(3000):
        damaged = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        assert fast_view(bytes(damaged)) == mitmproxy_view(bytes(damaged)), damaged.hex()


def test_a_record_stream_as_mitmproxy_reads_it() -> None:
    record = client_hello_bytes("www.facebook.com")
    assert parse_client_hello(record[:20]) is None  # not all in yet
    hello = parse_client_hello(record)
    assert hello is not None and hello.sni == "www.facebook.com"
    reference = mitmproxy_parse(record)
    assert reference is not None
    # What the front door does not read itself comes from mitmproxy's parser on demand.
    assert hello.cipher_suites == reference.cipher_suites
    assert hello.extensions == reference.extensions
    assert hello.raw_bytes() == reference.raw_bytes()
    with pytest.raises(ValueError, match="Invalid ClientHello"):
        parse_client_hello(b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03")
