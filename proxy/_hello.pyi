"""A TLS ClientHello gathered from its records and read for its SNI and ALPN (proxy/_hello.c)."""

def client_hello(data: bytes, /) -> tuple[bytes, list[bytes], list[bytes]] | None:
    """As mitmproxy's `parse_client_hello(data)` reads it: None while the ClientHello is not all
    in (mitmproxy's `get_client_hello` is None); ValueError where mitmproxy refuses it (a record
    that is not a TLS handshake record, an empty record, a body cut short anywhere); else (the
    handshake's body, the names of the server_name extensions that hold exactly one entry of
    type host_name, in order, the protocols of the first ALPN extension or [])."""
