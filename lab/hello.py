"""A real TLS ClientHello, as a device's TLS stack sends it: for the proxy's tests and benchmarks."""

from __future__ import annotations

import contextlib
import ssl


def client_hello(sni: str | None, alpn: list[str] | None = None) -> bytes:
    """The ClientHello Python's TLS stack sends for `sni` (none: without the extension),
    offering `alpn` if given."""
    context = ssl.create_default_context()
    context.check_hostname = False
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server's answer: the hello is out
        tls.do_handshake()
    hello = outgoing.read()
    if not hello:
        raise RuntimeError("the TLS stack sent no ClientHello")
    return hello
