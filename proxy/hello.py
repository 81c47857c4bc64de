"""A ClientHello's SNI and ALPN, read without building mitmproxy's full parse tree.

mitmproxy parses a ClientHello with a generated (Kaitai) parser that builds an object per
field, cipher suite and extension: for the front door, which needs only the SNI (and the ALPN
offers mitmproxy records on the client), that was the largest single cost of a killed
connection. `parse_client_hello` gathers the handshake from its TLS records and reads its SNI
candidates and ALPN offers in one compiled pass (proxy/_hello.c) that follows mitmproxy's
`get_client_hello` and its generated parser field for field: the same bytes are not all in
yet (None), refused (ValueError), or give the same SNI and ALPN. `FastClientHello` is
mitmproxy's `ClientHello` with those two read so; anything else an addon may ask of it (cipher
suites, the raw extensions) is parsed by mitmproxy's parser on first use.

Pure: bytes in, values out.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from mitmproxy import tls
from mitmproxy.net.check import is_valid_host

from schoolgate.proxy._hello import client_hello

# mitmproxy's check (IDNA and label rules) was a noticeable part of reading a ClientHello with
# a name not seen lately: 3-4% of the proxy's CPU when every connection names a new one. A name
# of plain labels (letters, digits, '-' and '_', 1 to 63 of them; dots between; one trailing dot
# at most; 255 bytes in all) holding no IDNA prefix ("xn--", which the IDNA codec decodes and
# may refuse) is one that check accepts (tests/proxy/test_hello.py holds the two to agree), and
# one regular expression says so; any other name is asked of mitmproxy's check.
_PLAIN_HOST = re.compile(rb"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")
_plain_host = _PLAIN_HOST.fullmatch


def _is_valid_host(name: bytes) -> bool:
    """mitmproxy's `is_valid_host(name)`."""
    if len(name) <= 255 and _plain_host(name) is not None and b"xn--" not in name:
        return True
    return is_valid_host(name)


# The same few names come again and again (a school's devices reach the same sites all day):
# the answers are kept, which is cheaper still. Bounded: a flood of distinct names only evicts.
_valid_host = functools.lru_cache(maxsize=4096)(_is_valid_host)


class FastClientHello(tls.ClientHello):
    """mitmproxy's ClientHello of `raw` (the handshake body, as mitmproxy takes it), whose SNI
    and ALPN offers were read already."""

    def __init__(self, raw: bytes, sni: str | None, alpn: list[bytes]) -> None:
        # mitmproxy's own parse happens only if asked for
        self._raw_bytes = raw
        self._sni = sni
        self._alpn = alpn

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
    read = client_hello(data)
    if read is None:
        return None
    body, names, alpn = read
    return FastClientHello(body, first_valid_host(names), alpn)


def first_valid_host(names: list[bytes]) -> str | None:
    """The SNI as mitmproxy reads it: of the names of the server_name extensions that hold
    exactly one host name, the first that is a valid host."""
    for name in names:
        if _valid_host(name):
            return name.decode("ascii")
    return None
