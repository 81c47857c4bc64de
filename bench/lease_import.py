"""Lease files of a large school (or a trust's DHCP server): parse and store times per format.

    .venv/bin/python -P bench/lease_import.py [--leases 50000]

For each format a file of N leases is generated, parsed (schoolgate.identity.leaseformats) and
merged into a fresh SQLite store (schoolgate.identity.leasestore), then merged again (a
followed file re-read: nothing changes). Reference, measured in the same run: csv.reader over
the Windows export, the floor any CSV-based import pays. Prints leases/s and CPU µs per lease.
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from schoolgate.identity.leaseformats import parse_lease_file
from schoolgate.identity.leasestore import record_leases
from schoolgate.store.db import init_db, session_factory

LONDON = ZoneInfo("Europe/London")
T0 = datetime(2026, 11, 23, 8, tzinfo=UTC)


def address(i: int) -> tuple[str, str]:
    return f"10.{40 + i // 65536}.{i // 256 % 256}.{i % 256}", f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:" \
        f"{i >> 8 & 255:02x}:{i & 255:02x}"


def windows(n: int) -> str:
    rows = ['#TYPE Microsoft.Management.Infrastructure.CimInstance#root/Microsoft/Windows/DHCP/DhcpServerv4Lease',
            '"IPAddress","ScopeId","AddressState","ClientId","HostName","LeaseExpiryTime"']
    for i in range(n):
        ip, mac = address(i)
        rows.append(f'"{ip}","10.40.0.0","Active","{mac.replace(":", "-")}","device-{i}","25/11/2026 14:03:22"')
    return "\r\n".join(rows) + "\r\n"


def isc(n: int) -> str:
    out = []
    for i in range(n):
        ip, mac = address(i)
        out.append(f"lease {ip} {{\n  starts 1 2026/11/23 08:00:00;\n  ends 1 2026/11/23 20:00:00;\n"
                   f"  binding state active;\n  hardware ethernet {mac};\n  client-hostname \"device-{i}\";\n}}\n")
    return "".join(out)


def kea(n: int) -> str:
    expire = int((T0 + timedelta(hours=12)).timestamp())
    rows = ["address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context"]
    rows += [f"{address(i)[0]},{address(i)[1]},,43200,{expire},1,0,0,device-{i},0," for i in range(n)]
    return "\n".join(rows) + "\n"


def timed(function: object) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()  # type: ignore[operator]
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--leases", type=int, default=50_000)
    n = parser.parse_args().leases
    texts = {"windows": windows(n), "isc": isc(n), "kea": kea(n)}
    wall, cpu, _ = timed(lambda: sum(1 for _ in csv.reader(io.StringIO(texts["windows"]))))
    print(f"reference csv.reader over the Windows export: {n / wall:,.0f} rows/s, {cpu / n * 1e6:.1f} µs CPU/row")
    for fmt, text in texts.items():
        with tempfile.TemporaryDirectory() as tmp:
            engine = init_db(f"sqlite:///{Path(tmp) / 'bench.db'}")
            sessions = session_factory(engine)
            parse_wall, parse_cpu, parsed = timed(lambda text=text, fmt=fmt: parse_lease_file(text, fmt, tz=LONDON))

            def store(parsed: object = parsed, sessions: object = sessions) -> object:
                with sessions.begin() as session:  # type: ignore[attr-defined]
                    return record_leases(session, "bench", parsed, origin="bench", now=T0)  # type: ignore[arg-type]

            store_wall, store_cpu, report = timed(store)
            again_wall, again_cpu, again = timed(store)
            engine.dispose()
        print(f"{fmt:8} {len(text) / 1e6:5.1f} MB: parse {n / parse_wall:9,.0f} leases/s "
              f"({parse_cpu / n * 1e6:5.1f} µs CPU), "
              f"store {n / store_wall:8,.0f}/s ({store_cpu / n * 1e6:5.1f} µs), re-read {n / again_wall:8,.0f}/s "
              f"({again_cpu / n * 1e6:5.1f} µs); {report.summary()}; again: {again.summary()}")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
