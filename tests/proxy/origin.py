"""A stand-in for the Internet in the proxy's end-to-end tests (run as a script, not collected).

Serves HTTPS and HTTP ("origin <host>" as the body, so a test sees which server answered and
with which certificate), and optionally a tiny DNS server with fixed A answers, so the proxy's
address learner has something real to ask. Runs until SIGTERM; writes `--ready FILE` when all
sockets listen.
"""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dnslib import QTYPE, RR, A, DNSRecord


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a test can hold a connection open

    def do_GET(self) -> None:
        body = f"origin {self.headers.get('Host', '')}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def serve_dns(sock: socket.socket, answers: dict[str, str]) -> None:
    while True:
        try:
            data, peer = sock.recvfrom(4096)
        except OSError:
            return
        try:
            query = DNSRecord.parse(data)
        except Exception:
            continue
        reply = query.reply()
        name = str(query.q.qname).rstrip(".").lower()
        if query.q.qtype == QTYPE.A and name in answers:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(answers[name]), ttl=60))
        sock.sendto(reply.pack(), peer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--https", action="append", default=[])
    parser.add_argument("--http", action="append", default=[])
    parser.add_argument("--dns")
    parser.add_argument("--answer", action="append", default=[], help="name=ipv4")
    parser.add_argument("--ready", required=True)
    args = parser.parse_args()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    servers: list[ThreadingHTTPServer] = []
    for addr in args.https:
        server = ThreadingHTTPServer(split(addr), Handler)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        servers.append(server)
    for addr in args.http:
        servers.append(ThreadingHTTPServer(split(addr), Handler))
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if args.dns:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(split(args.dns))
        answers = dict(item.split("=", 1) for item in args.answer)
        threading.Thread(target=serve_dns, args=(sock, answers), daemon=True).start()
    Path(args.ready).write_text("ready\n")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()


if __name__ == "__main__":
    main()
