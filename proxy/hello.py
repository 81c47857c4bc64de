"""A ClientHello's SNI and ALPN, read without building mitmproxy's full parse tree.

mitmproxy parses a ClientHello with a generated (Kaitai) parser that builds an object per
field, cipher suite and extension: for the front door, which needs only the SNI (and the ALPN
offers mitmproxy records on the client), that was the largest single cost of a killed
connection. `FastClientHello` is mitmproxy's `ClientHello` with those two read by a small
parser that follows the generated one field for field: the same bytes give the same SNI and
ALPN, and the same bytes are refused (ValueError). Anything else an addon may ask of it
(cipher suites, the raw extensions) is parsed by mitmproxy's parser on first use.

Pure: bytes in, values out.
"""

from __future__ import annotations

import functools
from typing import Any

from mitmproxy import tls
from mitmproxy.net.check import is_valid_host
from mitmproxy.proxy.layers.tls import get_client_hello

# The same few names come again and again (a school's devices reach the same sites all day), and
# mitmproxy's check (IDNA and label rules) was a noticeable part of reading a ClientHello.
# Bounded: a flood of distinct names only evicts.
_valid_host = functools.lru_cache(maxsize=4096)(is_valid_host)

EXT_SERVER_NAME = 0x00
EXT_ALPN = 0x10
HOST_NAME = 0  # the only server name type (RFC 6066 §3)


class FastClientHello(tls.ClientHello):
    """mitmproxy's ClientHello of `raw` (the handshake body, as mitmproxy takes it)."""

    def __init__(self, raw: bytes) -> None:  # mitmproxy's own parse happens only if asked for
        self._raw_bytes = raw
        self._sni, self._alpn = read_sni_alpn(raw)

    @functools.cached_property
    def _client_hello(self) -> Any:  # type: ignore[override]  # mitmproxy sets it in __init__
        import io

        from kaitaistruct import KaitaiStream
        from mitmproxy.contrib.kaitaistruct import tls_client_hello

        return tls_client_hello.TlsClientHello(KaitaiStream(io.BytesIO(self._raw_bytes)))  # type: ignore[no-untyped-call]

    @property
    def sni(self) -> str | None:
        return self._sni

    @property
    def alpn_protocols(self) -> list[bytes]:
        return list(self._alpn)


def parse_client_hello(data: bytes) -> FastClientHello | None:
    """As mitmproxy's `parse_client_hello`: None while the ClientHello is not all in,
    ValueError if it is not one."""
    handshake = get_client_hello(data)
    if not handshake:
        return None
    return FastClientHello(handshake[4:])


def read_sni_alpn(body: bytes) -> tuple[str | None, list[bytes]]:
    """The SNI and ALPN offers of a ClientHello body, as mitmproxy reads them: the first
    server_name extension that holds exactly one valid host name, the first ALPN extension.
    Truncated anywhere: ValueError."""
    end = len(body)
    pos = _skip(body, 34, end)  # version (2) and random (32)
    pos = _skip(body, pos + 1, end, body[pos] if pos < end else -1)  # session id
    suites = _u16(body, pos, end)
    pos = _skip(body, pos + 2, end, (suites // 2) * 2)  # read as whole suites, as mitmproxy does
    pos = _skip(body, pos + 1, end, body[pos] if pos < end else -1)  # compression methods
    sni: str | None = None
    alpn: list[bytes] | None = None
    if pos == end:
        return sni, []
    pos = _skip(body, pos, end, 2)  # the extensions' length (mitmproxy reads to the end instead)
    while pos < end:
        kind = _u16(body, pos, end)
        length = _u16(body, pos + 2, end)
        start = pos + 4
        pos = _skip(body, start, end, length)
        if kind == EXT_SERVER_NAME:
            names = _server_names(body[start:pos])
            if sni is None and len(names) == 1 and names[0][0] == HOST_NAME and _valid_host(names[0][1]):
                sni = names[0][1].decode("ascii")
        elif kind == EXT_ALPN:
            protocols = _protocols(body[start:pos])
            if alpn is None:
                alpn = protocols
    return sni, alpn or []


def _server_names(ext: bytes) -> list[tuple[int, bytes]]:
    end = len(ext)
    pos = _skip(ext, 0, end, 2)  # the list's length (read to the extension's end instead)
    names = []
    while pos < end:
        kind = ext[pos]
        length = _u16(ext, pos + 1, end)
        start = pos + 3
        pos = _skip(ext, start, end, length)
        names.append((kind, ext[start:pos]))
    return names


def _protocols(ext: bytes) -> list[bytes]:
    end = len(ext)
    pos = _skip(ext, 0, end, 2)
    protocols = []
    while pos < end:
        start = pos + 1
        pos = _skip(ext, start, end, ext[pos])
        protocols.append(ext[start:pos])
    return protocols


def _u16(data: bytes, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise ValueError("Invalid ClientHello")
    return (data[pos] << 8) | data[pos + 1]


def _skip(data: bytes, pos: int, end: int, length: int = 0) -> int:
    """`pos + length`, if that much is there."""
    if length < 0 or pos + length > end:
        raise ValueError("Invalid ClientHello")
    return pos + length
