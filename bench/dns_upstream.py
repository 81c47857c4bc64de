"""Forwarding a query upstream on a socket of its own (RFC 5452), next to one long-lived socket.

schoolgate's UpstreamPool opens, binds to a random port, connects and closes a UDP socket
for every query it forwards. This measures what that costs: QUERIES sequential cache-miss
lookups through UpstreamPool.resolve against a local synthetic upstream, and the same number
through a reference in the same run: one connected socket reused for every query (what the
pool did before), answers matched by ID. Printed: queries/s and CPU microseconds per query
(process time, so the upstream's thread counts too; its share is the same in both runs).

Run: .venv/bin/python bench/dns_upstream.py [QUERIES]
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "dns"))

from authority import Authority  # noqa: E402

from schoolgate.dns.upstream import UpstreamPool, question_wire, same_question  # noqa: E402
from schoolgate.dns.wire import HEADER, RD, edns_opt, encode_name  # noqa: E402


async def through_pool(address: str, names: list[bytes]) -> None:
    pool = UpstreamPool([address], timeout_s=1.0)
    await pool.start()
    try:
        for question in names:
            await pool.resolve(question, 0x0100, False)
    finally:
        pool.close()


async def through_one_socket(host: str, port: int, names: list[bytes]) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect((host, port))
    waiting: dict[int, tuple[bytes, asyncio.Future[bytes]]] = {}

    def readable() -> None:
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            entry = waiting.pop(data[0] << 8 | data[1], None)
            if entry is not None and same_question(data, entry[0]) and not entry[1].done():
                entry[1].set_result(data)

    loop.add_reader(sock.fileno(), readable)
    try:
        for question in names:
            ident = secrets.randbits(16)
            future: asyncio.Future[bytes] = loop.create_future()
            waiting[ident] = (question, future)
            sock.send(HEADER.pack(ident, RD, 1, 0, 0, 1) + question + edns_opt(False))
            async with asyncio.timeout(1.0):
                await future
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


def measure(label: str, run: object, count: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run)  # type: ignore[arg-type]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label:34} {count / wall:9.0f} queries/s  {cpu / count * 1e6:7.1f} µs CPU per query")
    return wall, cpu


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    upstream = Authority(synthetic=True).start()
    try:
        def names(tag: str) -> list[bytes]:
            return [question_wire(encode_name(f"{tag}{n}.bench.test"), 1, 1) for n in range(count)]

        measure("warm-up (pool)", through_pool(upstream.address, names("w")[: count // 10]), count // 10)
        _, ref_cpu = measure("reference: one long-lived socket", through_one_socket(upstream.host, upstream.port,
                                                                                     names("r")), count)
        _, pool_cpu = measure("UpstreamPool: a socket per query", through_pool(upstream.address, names("p")), count)
        print(f"a socket of its own costs {(pool_cpu - ref_cpu) / count * 1e6:.1f} µs CPU per forwarded query "
              f"({pool_cpu / ref_cpu:.2f}x the reference); cached answers never reach it")
    finally:
        upstream.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
