"""The lab's "internet": an authoritative DNS server and the websites, in their own namespace.

Run inside the internet namespace as `python -m schoolgate.lab.internet STATE_DIR`. One
process serves:

- DNS on 203.0.113.53:53 (UDP and TCP): the lab's names, and for any other name an address
  of its own in 198.18.0.0/16 (the benchmarking range, routed to this namespace as local),
  derived from the name. Unrelated names never share an address, as on the real internet,
  so the proxy's "which service owns this address" check sees what it would in a school;
- HTTP (80) and HTTPS (443) for every site, on every address, with the certificate chosen
  by SNI from the lab's public CA. `/` returns a small page naming the site; `/bytes/N`
  streams N bytes (throughput measurements); every response says which host and address
  the request reached;
- the school's mail relay on 203.0.113.25:25 (SMTP, no TLS): every message the appliance
  sends is kept in STATE_DIR/mail as NNNN.eml, its envelope in NNNN.json, for tests to read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import signal
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, SOA, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer

WAN_PREFIX = "203.0.113"
RESOLVER_IP = f"{WAN_PREFIX}.53"
DOH_IP = f"{WAN_PREFIX}.54"  # a second resolver, answering DoH only
ANY_NAME_PREFIX = "198.18.0.0/16"  # every other name gets an address of its own here
GATEWAY_WAN_IP = f"{WAN_PREFIX}.1"
MAIL_IP = f"{WAN_PREFIX}.25"  # the school's mail relay (the trust's, or its e-mail provider's)
MAIL_PORT = 25
INTERNET_IP = f"{WAN_PREFIX}.254"


@dataclass(frozen=True)
class Site:
    label: str
    ip: str
    names: tuple[str, ...]


SITES: tuple[Site, ...] = (
    Site("facebook", f"{WAN_PREFIX}.10", ("facebook.com", "www.facebook.com", "m.facebook.com")),
    Site("instagram", f"{WAN_PREFIX}.11", ("instagram.com", "www.instagram.com")),
    Site("x", f"{WAN_PREFIX}.12", ("x.com", "www.x.com", "twitter.com")),
    Site("library", f"{WAN_PREFIX}.20", ("library.example.org", "www.library.example.org")),
    # On the policy's curriculum list: what a supervised (banned) device may still reach.
    Site("bbc", f"{WAN_PREFIX}.22", ("bbc.co.uk", "www.bbc.co.uk")),
    # An "innocent" site on its own address, for domain-fronting checks.
    Site("weather", f"{WAN_PREFIX}.21", ("weather.example.net",)),
    # DoH resolvers: their names resolve here, and they answer HTTPS like a real resolver would.
    Site("resolver", RESOLVER_IP, ("dns.quad9.net", "doh.lab.example")),
    Site("resolver2", DOH_IP, ("cloudflare-dns.com", "dns.google")),
    Site("mail", MAIL_IP, ("mail.lab.example",)),
)


def address_for_name(name: str) -> str:
    """A stable address for a name the lab does not list (198.18.x.y, y in 1..254)."""
    digest = hashlib.sha256(name.rstrip(".").lower().encode()).digest()
    return f"198.18.{digest[0]}.{digest[1] % 254 + 1}"


# Served with the "other" certificate (its names); reached at their own derived addresses.
OTHER_NAMES = ("www.example.com", "example.com")
ALL_IPS: tuple[str, ...] = tuple(dict.fromkeys(s.ip for s in SITES))


def site_for_name(name: str) -> Site | None:
    name = name.rstrip(".").lower()
    for site in SITES:
        for known in site.names:
            if name == known or name.endswith("." + known):
                return site
    return None


class LabZoneResolver(BaseResolver):  # type: ignore[misc]
    """Authoritative for every name: known sites by address, anything else the catch-all."""

    ttl = 300

    def __init__(self) -> None:
        self.queries = 0

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        self.queries += 1
        reply = request.reply()
        reply.header.aa = 1
        question = request.q
        name = str(question.qname).rstrip(".").lower()
        site = site_for_name(name)
        address = site.ip if site else address_for_name(name)
        if name.endswith(".invalid") or name.startswith("nxdomain."):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if question.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=self.ttl))
        elif question.qtype == QTYPE.AAAA:
            pass  # the lab is IPv4-only on the WAN side: NODATA
        else:
            reply.add_auth(
                RR(
                    question.qname,
                    QTYPE.SOA,
                    rdata=SOA("ns.lab.example", "hostmaster.lab.example", (1, 3600, 600, 86400, 60)),
                    ttl=60,
                )
            )
        return reply


def _server_contexts(certs: dict[str, tuple[str, str]]) -> ssl.SSLContext:
    """One default context; the SNI callback swaps in the context of the named site."""
    by_name: dict[str, ssl.SSLContext] = {}
    per_label: dict[str, ssl.SSLContext] = {}
    for label, (cert, key) in certs.items():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["http/1.1"])
        per_label[label] = context
    for site in SITES:
        if site.label in per_label:
            for name in site.names:
                by_name[name] = per_label[site.label]
    default = per_label["other"]

    def choose(sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
        # Remembered for the page: it shows which name the client asked for.
        sock.lab_sni = server_name or ""  # type: ignore[union-attr]
        if server_name:
            site = site_for_name(server_name)
            if site is not None and site.label in per_label:
                sock.context = per_label[site.label]

    default.sni_callback = choose
    return default


_PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: str) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, ssl.SSLError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    path = parts[1] if len(parts) > 1 else "/"
    host = ""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "host":
            host = value.strip().split(":")[0].lower()
    local = writer.get_extra_info("sockname")[0]
    sni = ""
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is not None:
        sni = getattr(ssl_object, "lab_sni", "")
    try:
        if path.startswith("/bytes/"):
            size = min(int(path.split("/")[2]), 4 << 30)
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode()
            )
            chunk = b"\0" * 65536
            left = size
            while left > 0:
                piece = chunk if left >= len(chunk) else chunk[:left]
                writer.write(piece)
                left -= len(piece)
                await writer.drain()
        else:
            site = site_for_name(host)
            title = f"{host} (lab site {site.label if site else 'catch-all'})"
            if path.startswith("/pixel"):
                body, kind = _PIXEL, "image/gif"
            else:
                # The image makes a browser open a second connection after it has seen the
                # Alt-Svc header below, so it tries QUIC as real sites make it do.
                body = (
                    f"<!doctype html><html><head><title>{title}</title></head>"
                    f"<body><h1>{title}</h1><p>served-by=lab-internet address={local} "
                    f"scheme={scheme} sni={sni or '-'}</p><img src=\"/pixel.gif\" alt=\"\"></body></html>\n"
                ).encode()
                kind = "text/html; charset=utf-8"
            alt_svc = 'Alt-Svc: h3=":443"; ma=86400\r\n' if scheme == "https" else ""
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nX-Lab-Site: {site.label if site else 'other'}\r\n"
                f"{alt_svc}Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    except (ConnectionError, ValueError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            writer.close()


class MailRelay:
    """Just enough SMTP to take the appliance's mail (RFC 5321's minimum): each message is kept
    as a file, never delivered anywhere."""

    MAX_BYTES = 10 * 1024 * 1024

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender = ""
        recipients: list[str] = []

        async def say(line: str) -> None:
            writer.write(line.encode("ascii") + b"\r\n")
            await writer.drain()

        try:
            await say("220 mail.lab.example ESMTP lab relay")
            while True:
                raw = await asyncio.wait_for(reader.readline(), timeout=30)
                if not raw:
                    return
                command = raw.decode("latin-1").strip()
                verb = command[:4].upper()
                if verb in ("EHLO", "HELO"):
                    await say("250 mail.lab.example")
                elif verb == "MAIL":
                    sender, recipients = command.partition(":")[2].strip(), []
                    await say("250 OK")
                elif verb == "RCPT":
                    recipients.append(command.partition(":")[2].strip().strip("<>"))
                    await say("250 OK")
                elif verb == "DATA":
                    await say("354 End data with <CR><LF>.<CR><LF>")
                    body = await self._data(reader)
                    self._keep(sender, recipients, body)
                    await say("250 OK: kept")
                elif verb in ("RSET", "NOOP"):
                    await say("250 OK")
                elif verb == "QUIT":
                    await say("221 Bye")
                    return
                else:
                    await say("502 Not implemented")
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    async def _data(self, reader: asyncio.StreamReader) -> bytes:
        lines: list[bytes] = []
        size = 0
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout=30)
            if not line or line in (b".\r\n", b".\n"):
                return b"".join(lines)
            size += len(line)
            if size > self.MAX_BYTES:
                raise ValueError("message too large")
            lines.append(line[1:] if line.startswith(b"..") else line)

    def _keep(self, sender: str, recipients: list[str], body: bytes) -> None:
        self.count += 1
        stem = self.folder / f"{self.count:04d}"
        stem.with_suffix(".eml").write_bytes(body)
        stem.with_suffix(".json").write_text(json.dumps({"from": sender, "to": recipients}))


async def serve(state_dir: Path) -> None:
    spec = json.loads((state_dir / "internet.json").read_text())
    certs: dict[str, tuple[str, str]] = spec["certs"]
    tls = _server_contexts(certs)

    resolver = LabZoneResolver()
    dns_servers = [
        DNSServer(resolver, address=RESOLVER_IP, port=53, tcp=tcp) for tcp in (False, True)
    ]
    for server in dns_servers:
        server.start_thread()

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(reader, writer, "http")

    async def secure(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(reader, writer, "https")

    servers = [
        await asyncio.start_server(plain, "0.0.0.0", 80, reuse_address=True, backlog=1024),
        await asyncio.start_server(
            secure, "0.0.0.0", 443, ssl=tls, reuse_address=True, backlog=1024, ssl_handshake_timeout=10
        ),
        await asyncio.start_server(MailRelay(state_dir / "mail").session, MAIL_IP, MAIL_PORT, reuse_address=True),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    (state_dir / "internet.ready").write_text("ready\n")
    await stop.wait()
    for server in servers:
        server.close()
    for dns in dns_servers:
        dns.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m schoolgate.lab.internet STATE_DIR", file=sys.stderr)
        return 2
    socket.setdefaulttimeout(None)
    asyncio.run(serve(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
