"""The front door's ClientHello reader (proxy/_hello.c, through schoolgate.proxy.hello) against
mitmproxy's own: the same bytes not all in yet, the same refused, the same SNI, ALPN and body,
on real ClientHellos, crafted ones, malformed record streams, every truncation and random damage."""

from __future__ import annotations

import random
import string
import struct

import pytest
from mitmproxy.net.check import is_valid_host
from mitmproxy.proxy.layers.tls import parse_client_hello as mitmproxy_parse
from proxy_testkit import client_hello_bytes

from schoolgate.proxy.hello import _is_valid_host, first_valid_host, parse_client_hello

# What a reader makes of a connection's first bytes: None (not all in yet), "refused", or the
# SNI, the ALPN offers and the handshake's body.
Reading = tuple[str | None, list[bytes], bytes] | str | None
# The same without the body, as the tables below expect it.
Outcome = tuple[str | None, list[bytes]] | str | None
NOT_ALL_IN = None
REFUSED = "refused"


def mitmproxy_reading(data: bytes) -> Reading:
    try:
        hello = mitmproxy_parse(data)
        return None if hello is None else (hello.sni, hello.alpn_protocols, hello.raw_bytes(wrap_in_record=False))
    except ValueError:
        return REFUSED


def fast_reading(data: bytes) -> Reading:
    try:
        hello = parse_client_hello(data)
        return None if hello is None else (hello.sni, hello.alpn_protocols, hello.raw_bytes(wrap_in_record=False))
    except ValueError:
        return REFUSED


def outcome(reading: Reading) -> Outcome:
    return reading[:2] if isinstance(reading, tuple) else reading


def assert_read_alike(data: bytes) -> Reading:
    fast = fast_reading(data)
    assert fast == mitmproxy_reading(data), data.hex()
    return fast


def record(payload: bytes, content: int = 0x16, version: bytes = b"\x03\x01", length: int | None = None) -> bytes:
    return bytes([content]) + version + struct.pack("!H", len(payload) if length is None else length) + payload


def records(payload: bytes, size: int = 2**14) -> bytes:
    """`payload` in handshake records of `size` bytes (the last one shorter)."""
    return b"".join(record(payload[at : at + size]) for at in range(0, len(payload), size))


def handshake(body: bytes, kind: int = 1, length: int | None = None) -> bytes:
    return bytes([kind]) + (len(body) if length is None else length).to_bytes(3, "big") + body


def wrapped(body: bytes) -> bytes:
    """A ClientHello body as a client sends it: in a handshake, in a record."""
    return records(handshake(body))


def body_of(data: bytes) -> bytes:
    parsed = mitmproxy_parse(data)
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


HEAD = b"\x03\x03" + bytes(32)  # version and random


def crafted(*extensions: bytes, suites: bytes = b"\x13\x01\x13\x02", session: bytes = b"") -> bytes:
    body = HEAD + bytes([len(session)]) + session + struct.pack("!H", len(suites)) + suites + b"\x01\x00"
    if extensions:
        joined = b"".join(extensions)
        body += struct.pack("!H", len(joined)) + joined
    return body


NAME = server_names((0, b"www.facebook.com"))
GOOD = crafted(NAME, alpn(b"h2"))
FACEBOOK: Outcome = ("www.facebook.com", [b"h2"])
NO_EXTENSIONS = HEAD + b"\x00\x00\x02\x13\x01\x01\x00"  # no session id, one suite, one compression method

# Bodies, and what both readers make of them (in a record).
CRAFTED: dict[str, tuple[bytes, Outcome]] = {
    "one name": (crafted(NAME), ("www.facebook.com", [])),
    "two names in one extension": (crafted(server_names((0, b"a.example"), (0, b"b.example"))), (None, [])),
    "another name type": (crafted(server_names((1, b"www.facebook.com"))), (None, [])),
    "not a host name": (crafted(server_names((0, b"bad name!"))), (None, [])),
    "an empty name": (crafted(server_names((0, b""))), (None, [])),
    "empty name list": (crafted(server_names()), (None, [])),
    "the second extension's name is valid": (
        crafted(server_names((0, b"bad name!")), server_names((0, b"good.example"))),
        ("good.example", []),
    ),
    "the first valid name wins": (
        crafted(server_names((0, b"one.example")), server_names((0, b"two.example"))),
        ("one.example", []),
    ),
    "alpn": (crafted(alpn(b"h2", b"http/1.1"), server_names((0, b"x.example"))), ("x.example", [b"h2", b"http/1.1"])),
    "the first alpn extension counts, even empty": (crafted(alpn(), alpn(b"h2")), (None, [])),
    "an empty protocol": (crafted(alpn(b"", b"h2")), (None, [b"", b"h2"])),
    "no extensions": (crafted(), (None, [])),
    "the extensions' length only": (NO_EXTENSIONS + b"\x00\x00", (None, [])),
    "the extensions' length is not believed": (NO_EXTENSIONS + b"\x00\x00" + NAME, ("www.facebook.com", [])),
    "odd suites length, read as whole suites": (
        HEAD + b"\x00\x00\x03\x13\x01\x02\x00\x00" + struct.pack("!H", len(NAME)) + NAME,
        ("www.facebook.com", []),
    ),
    "odd suites length, its last byte a compression methods length": (
        crafted(server_names((0, b"x.example")), suites=b"\x13\x01\x13"),
        REFUSED,
    ),
    "a name with zero bytes": (crafted(NAME)[:-3] + b"\x00\x00\x00", (None, [])),
    "no suites, no compression methods": (HEAD + b"\x00\x00\x00\x00", (None, [])),
    "session id": (crafted(server_names((0, b"x.example")), session=bytes(range(32))), ("x.example", [])),
    "ip literal": (crafted(server_names((0, b"192.0.2.1"))), ("192.0.2.1", [])),
    "idna name": (crafted(server_names((0, b"xn--bcher-kva.example"))), ("xn--bcher-kva.example", [])),
    "a name not ascii": (crafted(server_names((0, "bücher.example".encode()))), (None, [])),
    "an unknown extension": (crafted(extension(0xFE0D, bytes(300)), NAME), ("www.facebook.com", [])),
    # cut short: refused
    "empty body": (b"", REFUSED),
    "the random cut": (HEAD[:-1], REFUSED),
    "no session id length": (HEAD, REFUSED),
    "session id past the end": (HEAD + b"\x20" + bytes(31), REFUSED),
    "one byte of suites length": (HEAD + b"\x00\x00", REFUSED),
    "suites past the end": (HEAD + b"\x00\x00\x04\x13\x01", REFUSED),
    "huge suites length": (HEAD + b"\x00\xff\xff" + bytes(100), REFUSED),
    "no compression methods length": (HEAD + b"\x00\x00\x02\x13\x01", REFUSED),
    "compression methods past the end": (HEAD + b"\x00\x00\x02\x13\x01\x02\x00", REFUSED),
    "one byte of extensions length": (NO_EXTENSIONS + b"\x00", REFUSED),
    "an extension header cut": (NO_EXTENSIONS + b"\x00\x04\x00\x00\x00", REFUSED),
    "an extension past the end": (crafted(NAME)[:-3], REFUSED),
    "huge extension length": (NO_EXTENSIONS + b"\x00\x04\x00\x2a\xff\xff", REFUSED),
    "an empty server_name extension": (crafted(extension(0, b"")), REFUSED),
    "a server name past its extension": (crafted(extension(0, b"\x00\x0c\x00\x00\x0ax.example")), REFUSED),
    "a server name entry cut after its type": (crafted(extension(0, b"\x00\x01\x00")), REFUSED),
    "a later server_name extension cut short": (crafted(NAME, extension(0, b"\x00")), REFUSED),
    "an empty alpn extension": (crafted(extension(16, b"")), REFUSED),
    "a protocol past its extension": (crafted(extension(16, b"\x00\x03\x05h2")), REFUSED),
    "a later alpn extension cut short": (crafted(alpn(b"h2"), extension(16, b"\x00\x02\x02h")), REFUSED),
}

# Record streams, and what both readers make of them.
HELLO = handshake(GOOD)
MALFORMED: dict[str, tuple[bytes, Outcome]] = {
    "nothing": (b"", NOT_ALL_IN),
    "part of a record header": (records(HELLO)[:4], NOT_ALL_IN),
    "a record header alone": (records(HELLO)[:5], NOT_ALL_IN),
    "record length past the end": (record(HELLO, length=len(HELLO) + 1), NOT_ALL_IN),
    "huge record length": (record(HELLO, length=0xFFFF), NOT_ALL_IN),
    "handshake length past the records": (records(handshake(GOOD, length=len(GOOD) + 1)), NOT_ALL_IN),
    "huge handshake length": (records(handshake(GOOD, length=0xFFFFFF)), NOT_ALL_IN),
    "part of the handshake header": (records(HELLO[:3]), NOT_ALL_IN),
    "an empty record": (record(b"") + records(HELLO), REFUSED),
    "an empty record in the middle": (records(HELLO[:10]) + record(b"") + records(HELLO[10:]), REFUSED),
    "an application data record": (record(HELLO, content=0x17), REFUSED),
    "an alert": (record(b"\x02\x28", content=0x15), REFUSED),
    "a change cipher spec record in the middle": (records(HELLO[:10]) + record(HELLO[10:], content=0x14), REFUSED),
    "record version 3.4": (record(HELLO, version=b"\x03\x04"), REFUSED),
    "record version 2.0": (record(HELLO, version=b"\x02\x00"), REFUSED),
    "an SSL 2 hello": (b"\x80\x2e\x01\x00\x02" + bytes(46), REFUSED),
    "handshake length zero": (records(handshake(b"")), REFUSED),
    "handshake length short of the body": (records(handshake(GOOD, length=len(GOOD) - 3)), REFUSED),
    "record version 3.0": (record(HELLO, version=b"\x03\x00"), FACEBOOK),
    "record version 3.3": (record(HELLO, version=b"\x03\x03"), FACEBOOK),
    "split in two records": (records(HELLO, size=len(HELLO) // 2 + 1), FACEBOOK),
    "split across one-byte records": (records(HELLO, size=1), FACEBOOK),
    "split across three-byte records": (records(HELLO, size=3), FACEBOOK),
    "the handshake header alone in a record": (record(HELLO[:4]) + record(HELLO[4:]), FACEBOOK),
    "the handshake ends inside a record": (records(HELLO + b"\x16\x03"), FACEBOOK),
    "a record after the hello, of another kind": (records(HELLO) + record(b"x", content=0x17), FACEBOOK),
    "an empty record after the hello": (records(HELLO) + record(b""), FACEBOOK),
    "bytes after the hello": (records(HELLO) + b"GET / HTTP/1.1\r\n", FACEBOOK),
    "another handshake type": (records(handshake(GOOD, kind=2)), FACEBOOK),
}


def real_hello(sni: str | None, protocols: list[str] | None = None) -> bytes:
    return client_hello_bytes(sni, protocols)


REAL = {
    "facebook": real_hello("www.facebook.com"),
    "allowed, h2": real_hello("allowed.test", ["h2", "http/1.1"]),
    "no sni": real_hello(None),
    "no sni, alpn": real_hello(None, ["h2"]),
    "idna, one protocol": real_hello("xn--bcher-kva.example", ["http/1.1"]),
    "long name": real_hello("a" * 63 + "." + "b" * 63 + ".example", ["spdy/3", "h2", "x" * 255]),
}


@pytest.mark.parametrize(("body", "expected"), CRAFTED.values(), ids=CRAFTED)
def test_a_crafted_body_reads_as_mitmproxy_reads_it(body: bytes, expected: Outcome) -> None:
    reading = assert_read_alike(wrapped(body))
    assert outcome(reading) == expected
    if isinstance(reading, tuple):
        assert reading[2] == body


@pytest.mark.parametrize(("data", "expected"), MALFORMED.values(), ids=MALFORMED)
def test_a_malformed_record_stream_reads_as_mitmproxy_reads_it(data: bytes, expected: Outcome) -> None:
    assert outcome(assert_read_alike(data)) == expected


@pytest.mark.parametrize("data", REAL.values(), ids=REAL)
def test_a_real_hello_reads_as_mitmproxy_reads_it(data: bytes) -> None:
    reading = assert_read_alike(data)
    assert isinstance(reading, tuple) and reading[2] == data[9:]


@pytest.mark.parametrize(
    "data", [REAL["allowed, h2"], REAL["no sni"], wrapped(CRAFTED["alpn"][0])], ids=["real", "real no sni", "crafted"]
)
def test_every_truncation_reads_alike(data: bytes) -> None:
    """Of the record stream (not all in yet), and of the body in records that agree (cut short)."""
    body = body_of(data)
    for cut in range(len(data)):
        assert fast_reading(data[:cut]) is NOT_ALL_IN
        assert mitmproxy_reading(data[:cut]) is NOT_ALL_IN
    for cut in range(len(body)):
        assert_read_alike(wrapped(body[:cut]))


def damage(data: bytes, rng: random.Random) -> bytes:
    """1 to 4 random changes: a byte or a length-sized pair overwritten (often with a small
    number), a byte inserted or taken out, the end cut off."""
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not damaged:
            break
        at = rng.randrange(len(damaged))
        change = rng.random()  # mostly overwrites: a shifted body is refused at once
        if change < 0.4:
            damaged[at] = rng.randrange(256)
        elif change < 0.7:
            damaged[at : at + 2] = rng.choice([0, 1, 2, 3, 0xFF, 0xFFFF, rng.randrange(0x10000)]).to_bytes(2, "big")
        elif change < 0.8:
            damaged.insert(at, rng.randrange(256))
        elif change < 0.9:
            del damaged[at]
        else:
            del damaged[at:]
    return bytes(damaged)


def random_real_hello(rng: random.Random) -> bytes:
    def label() -> str:
        return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(1, 20)))

    sni = None if rng.random() < 0.2 else ".".join(label() for _ in range(rng.randint(1, 4)))
    protocols = None if rng.random() < 0.3 else [label() for _ in range(rng.randint(1, 5))]
    return real_hello(sni, protocols)


def test_random_hellos_and_random_damage_read_alike() -> None:
    rng = random.Random(14)  # fixed: a failure is reproducible
    reals = [random_real_hello(rng) for _ in range(24)]
    for data in reals:
        reading = assert_read_alike(data)
        assert isinstance(reading, tuple)
    bodies = [body_of(data) for data in reals] + [body for body, _ in CRAFTED.values()]
    streams = reals + [data for data, _ in MALFORMED.values()]
    for _ in range(4000):
        body = rng.choice(bodies)
        assert_read_alike(wrapped(damage(body, rng)))  # damage the parser sees
        stream = rng.choice(streams)
        if rng.random() < 0.3 and isinstance(mitmproxy_reading(stream), tuple):  # in records of another size
            stream = records(handshake(body_of(stream)), size=rng.randint(1, 400))
        assert_read_alike(damage(stream, rng))  # damage to the records too


def test_a_record_stream_as_mitmproxy_reads_it() -> None:
    data = client_hello_bytes("www.facebook.com")
    assert parse_client_hello(data[:20]) is None  # not all in yet
    hello = parse_client_hello(data)
    assert hello is not None and hello.sni == "www.facebook.com"
    reference = mitmproxy_parse(data)
    assert reference is not None
    # What the front door does not read itself comes from mitmproxy's parser on demand.
    assert hello.cipher_suites == reference.cipher_suites
    assert hello.extensions == reference.extensions
    assert hello.raw_bytes() == reference.raw_bytes()
    with pytest.raises(ValueError, match="Invalid ClientHello"):
        parse_client_hello(b"\x16\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03")
    with pytest.raises(ValueError, match="Expected TLS record"):
        parse_client_hello(b"\x17\x03\x01\x00\x06\x01\x00\x00\x02\x03\x03")


# Names as a server_name extension may carry them, and what mitmproxy's check says of each: the
# front door's quicker check must say the same (it answers plain names itself, asks mitmproxy's
# check of the rest).
HOSTS = {
    "plain": (b"www.facebook.com", True),
    "one label": (b"localhost", True),
    "digits and dashes": (b"n42-edge.cdn-7.example.org", True),
    "underscore": (b"_dmarc.example.org", True),
    "trailing dot": (b"example.org.", True),
    "two trailing dots": (b"example.org..", False),
    "leading dot": (b".example.org", False),
    "empty label": (b"a..b", False),
    "empty": (b"", False),
    "a dot alone": (b".", False),
    "63-byte label": (b"a" * 63 + b".org", True),
    "64-byte label": (b"a" * 64 + b".org", False),
    "255 bytes": (b".".join([b"a" * 63] * 4), True),
    "256 bytes": (b".".join([b"a" * 63] * 4) + b".", False),
    "255 with its dot": (b".".join([b"a" * 63] * 3) + b"." + b"a" * 62 + b".", True),
    "space": (b"www.face book.com", False),
    "newline after a label": (b"example.org\n", True),  # mitmproxy's `$` allows one
    "non-ASCII": ("bücher.example".encode(), False),
    "IDNA, valid": (b"xn--bcher-kva.example", True),
    "IDNA, invalid punycode": (b"xn--a-\xff.example", False),
    "IDNA, refused by the codec": (b"xn--abc-.example", None),
    "IDNA prefix in capitals": (b"XN--bcher-kva.example", True),
    "IPv4": (b"192.0.2.7", True),
    "IPv6": (b"2001:db8::1", True),
    "IPv6 in brackets": (b"[2001:db8::1]", False),
    "slash": (b"example.org/path", False),
    "at sign": (b"user@example.org", False),
}


@pytest.mark.parametrize(("name", "expected"), HOSTS.values(), ids=HOSTS)
def test_a_name_is_a_valid_host_as_mitmproxy_says(name: bytes, expected: bool | None) -> None:
    says = is_valid_host(name)
    if expected is not None:
        assert says is expected  # the table is mitmproxy's own answer
    assert _is_valid_host(name) is says
    assert first_valid_host([name]) == (name.decode("ascii") if says else None)


def test_random_names_are_valid_hosts_as_mitmproxy_says() -> None:
    rng = random.Random(14)
    alphabet = string.ascii_letters + string.digits + "-_.:[]@/ \n" + "xn--"
    for _ in range(20_000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.choice((1, 3, 8, 20, 64, 70))))
        if rng.random() < 0.1:
            name = ".".join(["a" * 63] * 4)[: rng.randrange(250, 256)] + name[:2]
        raw = name.encode()
        assert _is_valid_host(raw) is is_valid_host(raw), raw
