"""CPU per ClientHello read by the front door (schoolgate.proxy.hello, proxy/_hello.c), against
mitmproxy's own `parse_client_hello`, on a ClientHello shaped like Chrome's.

    .venv/bin/python -P bench/proxy/hello.py [--calls 20000] [--rounds 7]

The ClientHello is about 1.8 KB, as Chrome sends it: GREASE values, 16 cipher suites, 18
extensions, a post-quantum key share and an ECH offer, the SNI second and ALPN (h2, http/1.1)
eighth. Each reader is timed by the process's CPU time over --calls calls, the two taking turns
for --rounds rounds; the best round of each is printed (the least disturbed by other work).
Both must read the same SNI and ALPN.
"""

from __future__ import annotations

import argparse
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from mitmproxy.proxy.layers.tls import parse_client_hello as mitmproxy_parse

from schoolgate.proxy.hello import parse_client_hello


def extension(kind: int, payload: bytes) -> bytes:
    return struct.pack("!HH", kind, len(payload)) + payload


def vector16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def vector8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def chrome_like_hello(sni: bytes = b"www.facebook.com") -> bytes:
    suites = bytes.fromhex("0a0a130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
    # a GREASE share, X25519Kyber768 (1216 bytes) and X25519
    key_share = b"\x3a\x3a" + vector16(b"\x00") + b"\x63\x99" + vector16(os.urandom(1216))
    key_share += b"\x00\x1d" + vector16(os.urandom(32))
    extensions = b"".join([
        extension(0x0A0A, b""),  # GREASE
        extension(0x0000, vector16(b"\x00" + vector16(sni))),
        extension(0x0017, b""),
        extension(0xFF01, b"\x00"),
        extension(0x000A, vector16(bytes.fromhex("3a3a6399001d00170018"))),
        extension(0x000B, vector8(b"\x00")),
        extension(0x0023, b""),
        extension(0x0010, vector16(vector8(b"h2") + vector8(b"http/1.1"))),
        extension(0x0005, b"\x01\x00\x00\x00\x00"),
        extension(0x000D, vector16(bytes.fromhex("0403080404010503080505010806060102"))),
        extension(0x0012, b""),
        extension(0x0033, vector16(key_share)),
        extension(0x002D, vector8(b"\x01")),
        extension(0x002B, vector8(bytes.fromhex("5a5a03040303"))),
        extension(0x001B, vector8(b"\x00\x02")),
        extension(0x4469, vector16(vector8(b"h2"))),
        extension(0xFE0D, b"\x00\x00\x01\x00\x01\x2a" + vector16(os.urandom(32)) + vector16(os.urandom(208))),
        extension(0x1A1A, b"\x00"),  # GREASE
    ])
    body = b"\x03\x03" + os.urandom(32) + vector8(os.urandom(32))  # version, random, session id
    body += vector16(suites) + b"\x01\x00" + vector16(extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + vector16(handshake)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args(argv)
    data = chrome_like_hello()
    readers: dict[str, Callable[[bytes], Any]] = {"schoolgate": parse_client_hello, "mitmproxy": mitmproxy_parse}
    readings = {(hello.sni, tuple(hello.alpn_protocols)) for hello in (read(data) for read in readers.values())}
    assert readings == {("www.facebook.com", (b"h2", b"http/1.1"))}, readings
    best = dict.fromkeys(readers, float("inf"))
    for _ in range(options.rounds):
        for name, read in readers.items():
            start = time.process_time()
            for _ in range(options.calls):
                read(data)
            best[name] = min(best[name], (time.process_time() - start) / options.calls)
    print(f"a {len(data)}-byte ClientHello, CPU per read (best of {options.rounds} rounds of {options.calls}):")
    for name, seconds in best.items():
        print(f"  {name:<11} {seconds * 1e6:8.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
