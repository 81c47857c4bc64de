"""Real packets: one DNS question, one TLS connection, one plain HTTP request.

Each probe is a plain function of where to ask and what to ask; it makes its own sockets in
whichever thread runs it (so a lab device's namespace works: see Vantage.run) and binds them
to `source` when given. No probe knows the policy; comparing with what the policy says is the
plan's and the checks' job. A probe never raises for network trouble: the outcome says what
happened, because "the connection was killed" is the answer a blocked site should give.
"""

from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

MAX_BODY = 4096


@dataclass(frozen=True)
class DnsAnswer:
    rcode: str  # NOERROR, NXDOMAIN, SERVFAIL...; "" when no answer came
    addresses: tuple[str, ...] = ()
    cnames: tuple[str, ...] = ()
    error: str = ""  # why no answer came (timeout, refused)
    elapsed_ms: int = 0

    @property
    def answered(self) -> bool:
        return bool(self.rcode)

    def describe(self) -> str:
        if not self.answered:
            return f"no answer ({self.error})"
        parts = [self.rcode]
        if self.cnames:
            parts.append("CNAME " + ", ".join(self.cnames))
        if self.addresses:
            parts.append(", ".join(self.addresses))
        return " ".join(parts)


def ask_dns(server: str, port: int, name: str, qtype: str = "A", *, source: str | None = None,
            timeout: float = 2.0, attempts: int = 2) -> DnsAnswer:
    """A UDP query (TCP if the answer is truncated), as a device's resolver would send it: a
    question that times out is sent again, as every stub resolver does (glibc's `attempts`),
    so one lost datagram is not reported as the filter being down."""
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        query = dns.message.make_query(name, qtype)
        try:
            reply, _tcp = dns.query.udp_with_fallback(query, server, timeout=timeout, port=port, source=source)
            break
        except dns.exception.Timeout:
            if attempt == attempts:
                return DnsAnswer("", error=f"timed out {attempts} times after {timeout:g} s",
                                 elapsed_ms=_ms(started))
        except (OSError, dns.exception.DNSException) as err:
            return DnsAnswer("", error=str(err) or err.__class__.__name__, elapsed_ms=_ms(started))
    addresses: list[str] = []
    cnames: list[str] = []
    for rrset in reply.answer:
        for item in rrset:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                addresses.append(item.to_text())
            elif rrset.rdtype == dns.rdatatype.CNAME:
                cnames.append(item.to_text().rstrip(".").lower())
    return DnsAnswer(dns.rcode.to_text(reply.rcode()), tuple(addresses), tuple(cnames), elapsed_ms=_ms(started))


@dataclass(frozen=True)
class Connection:
    """What happened to one TLS (or plain HTTP) connection."""

    connected: bool  # the TCP connection was accepted
    established: bool = False  # TLS: the handshake completed
    issuer: str = ""  # the certificate's issuer (TLS), e.g. "CN=schoolgate school CA"
    status: int = 0  # the HTTP status, 0: no response
    body: str = ""  # the start of the response body
    error: str = ""
    elapsed_ms: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        if not self.connected:
            return f"could not connect ({self.error})"
        if self.issuer == "" and not self.established and self.status == 0:
            return f"closed by the other end before the TLS handshake finished ({self.error or 'no reason given'})"
        parts = []
        if self.issuer:
            parts.append(f"certificate issued by {self.issuer}")
        parts.append(f"HTTP {self.status}" if self.status else f"no HTTP response ({self.error or 'closed'})")
        return ", ".join(parts)


def _socket(address: str, port: int, source: str | None, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if source:
            sock.bind((source, 0))
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _read_response(
    stream: socket.socket | ssl.SSLSocket, host: str, deadline: float
) -> tuple[int, str, dict[str, str]]:
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: schoolgate-selftest\r\nConnection: close\r\n\r\n"
    stream.sendall(request.encode("ascii"))
    data = b""
    while len(data) < MAX_BODY and time.monotonic() < deadline:
        chunk = stream.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ") if lines and lines[0] else []
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip().lower()] = value.strip()
    return status, body.decode("utf-8", "replace"), headers


def _issuer(stream: ssl.SSLSocket) -> str:
    from cryptography import x509

    der = stream.getpeercert(binary_form=True)
    if not der:
        return ""
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def connect_tls(address: str, port: int, sni: str, *, source: str | None = None, timeout: float = 3.0) -> Connection:
    """A TLS connection to `address` naming `sni`, then `GET /`: what a browser does.

    The certificate is read, not verified: the question is who answered (the real site, or
    the school CA's block page), not whether this machine trusts it.
    """
    started = time.monotonic()
    deadline = started + timeout
    try:
        raw = _socket(address, port, source, timeout)
    except OSError as err:
        return Connection(False, error=_why(err), elapsed_ms=_ms(started))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    try:
        with context.wrap_socket(raw, server_hostname=sni) as stream:
            issuer = _issuer(stream)
            try:
                status, body, headers = _read_response(stream, sni, deadline)
            except (OSError, ssl.SSLError) as err:
                return Connection(True, True, issuer, error=_why(err), elapsed_ms=_ms(started))
            return Connection(True, True, issuer, status, body[:MAX_BODY], elapsed_ms=_ms(started), headers=headers)
    except (OSError, ssl.SSLError) as err:
        return Connection(True, False, error=_why(err), elapsed_ms=_ms(started))
    finally:
        raw.close()


def get_http(address: str, port: int, host: str, *, source: str | None = None, timeout: float = 3.0) -> Connection:
    """A plain HTTP `GET /` to `address` with `Host: host`."""
    started = time.monotonic()
    try:
        sock = _socket(address, port, source, timeout)
    except OSError as err:
        return Connection(False, error=_why(err), elapsed_ms=_ms(started))
    try:
        status, body, headers = _read_response(sock, host, started + timeout)
    except OSError as err:
        return Connection(True, error=_why(err), elapsed_ms=_ms(started))
    finally:
        sock.close()
    return Connection(True, status=status, body=body[:MAX_BODY], elapsed_ms=_ms(started), headers=headers)


def _why(err: BaseException) -> str:
    if isinstance(err, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(err, ConnectionResetError):
        return "reset"
    if isinstance(err, ConnectionRefusedError):
        return "refused"
    if isinstance(err, ssl.SSLEOFError):
        return "closed during the TLS handshake"
    return str(err) or err.__class__.__name__


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
