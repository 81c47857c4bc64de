"""The real daemon (`schoolgate proxy --config FILE`) as a subprocess, with curl as the client.

Two set-ups:
- regular mode on loopback (no root): curl uses the proxy explicitly and `--connect-to` sends
  it to a local origin server; covers the verdicts, the counters, the events, and reloading
  (policy file, database generation, a broken policy keeping the last good one);
- transparent mode in network namespaces this test creates (root): a client namespace routes
  through a gateway namespace whose nftables table redirects TCP 80/443 to the proxy, exactly
  as the appliance does; the proxy learns the watched address from a real DNS answer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.ca import init_ca, issue_server_cert
from schoolgate.clock import set_clock_file
from schoolgate.store.coltypes import utcnow
from schoolgate.store.models import AccessEvent, DaemonStatus, Device, PolicyExceptionRow
from schoolgate.store.overlay import bump_generation

HERE = Path(__file__).resolve().parent
SCHOOLGATE = str(Path(sys.executable).parent / "schoolgate")
SITE = "testschool"
CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="needs curl")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Curl:
    code: int
    status: int
    body: str


def curl(*args: str, netns: str | None = None) -> Curl:
    assert CURL is not None
    command = [CURL, "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", *args]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    body, _, status = result.stdout.rpartition("\n")
    return Curl(result.returncode, int(status or 0), body)


@dataclass
class Origin:
    ca: Path
    process: subprocess.Popen[bytes]


def start_origin(
    tmp: Path,
    https: list[str],
    http: list[str],
    netns: str | None = None,
    dns: str | None = None,
    answers: tuple[str, ...] = (),
) -> Origin:
    """HTTPS/HTTP origin servers with certificates from their own (public-like) CA."""
    ca_dir = tmp / "origin-ca"
    init_ca(ca_dir, school_name="Origin Test Root")
    names = ["allowed.test", "innocent.test", "www.facebook.com", "www.youtube.com", "www.bing.com"]
    cert, key = issue_server_cert(ca_dir, names, ["127.0.0.1"])
    ready = tmp / "origin.ready"
    command = [sys.executable, str(HERE / "origin.py"), "--cert", str(cert), "--key", str(key), "--ready", str(ready)]
    for addr in https:
        command += ["--https", addr]
    for addr in http:
        command += ["--http", addr]
    if dns:
        command += ["--dns", dns, *(f"--answer={a}" for a in answers)]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    process = subprocess.Popen(command)
    wait_for(lambda: ready.exists() or process.poll() is not None, what="origin servers")
    assert process.poll() is None, "origin servers failed to start"
    return Origin(ca_dir / "mitmproxy-ca-cert.pem", process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_config(
    tmp: Path, *, policy: Path, db_path: Path, ca_dir: Path, listen: str, mode: str, extra: str = ""
) -> Path:
    config = tmp / "schoolgate.toml"
    config.write_text(
        f'policy = "{policy}"\n'
        f'data_dir = "{tmp / "data"}"\n'
        f'[site]\nid = "{SITE}"\nname = "Test Primary"\n'
        f'[database]\nurl = "sqlite:///{db_path}"\n'
        f'[console]\nbase_url = "https://console.test:8443"\n'
        f'[proxy]\nlisten = "{listen}"\nmode = "{mode}"\nca_dir = "{ca_dir}"\n{extra}\n',
        encoding="utf-8",
    )
    return config


def start_proxy(
    config: Path,
    port: int,
    netns: str | None = None,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    command = [SCHOOLGATE, "proxy", "--config", str(config), *args]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, pass_fds=pass_fds)

    def listening() -> bool:
        assert process.poll() is None, "the proxy exited during start-up"
        if netns:
            probe = subprocess.run(
                ["ip", "netns", "exec", netns, "ss", "-Htln", f"sport = :{port}"], capture_output=True, text=True
            )
            return bool(probe.stdout.strip())
        with socket.socket() as s:
            return s.connect_ex((host, port)) == 0

    wait_for(listening, timeout=30, what="the proxy to listen")
    return process


def stats(config_dir: Path, name: str = "proxy-stats.json") -> dict[str, Any]:
    """The proxy's stats file ({} until its first write)."""
    try:
        data: dict[str, Any] = json.loads((config_dir / "data" / name).read_text())
    except FileNotFoundError:
        return {"counters": {}}
    return data


def add_device(
    sessions: sessionmaker[Session], ip: str, device_id: str, trusts: bool, mac: str | None = None
) -> None:
    with sessions() as session, session.begin():
        session.add(
            Device(
                site=SITE, device_id=device_id, name=f"Device {device_id}", ip=ip, mac=mac, role="pupil",
                trusts_school_ca=trusts,
            )
        )
        bump_generation(session, SITE)


def blocked_events(sessions: sessionmaker[Session]) -> list[AccessEvent]:
    with sessions() as session:
        return list(session.scalars(select(AccessEvent).where(AccessEvent.verdict == "block").order_by(AccessEvent.id)))


def test_a_worker_hands_its_events_to_the_writing_process_which_writes_them(
    tmp_path: Path, policy_file: Path, db_path: Path, school_ca: Path, sessions: sessionmaker[Session]
) -> None:
    """As `schoolgate run` starts them: the worker gets the channel's sending end, `schoolgate
    proxy events` its reading end. Every blocked attempt is stored by the writing process with
    the DfE fields; each process reports its row; when the worker stops, the writer has its last
    events, writes them and ends by itself (the end of its stream)."""
    from schoolgate.store.events.channel import channel_pair

    oport, pport = free_port(), free_port()
    origin = start_origin(tmp_path, [f"127.0.0.1:{oport}"], [])
    config = write_config(
        tmp_path, policy=policy_file, db_path=db_path, ca_dir=school_ca, listen=f"127.0.0.1:{pport}",
        mode="regular", extra='neighbours = false\nresolvers = ["127.0.0.1:9"]',
    )
    sending, reading = channel_pair()
    writer = subprocess.Popen(
        [SCHOOLGATE, "proxy", "events", "--config", str(config), "--events-fd", str(reading.fileno())],
        pass_fds=(reading.fileno(),),
    )
    reading.close()
    proxy = None
    try:
        proxy = start_proxy(config, pport, args=("--events-fd", str(sending.fileno())), pass_fds=(sending.fileno(),))
        sending.close()  # the worker's is now the only sending end
        via = ["-x", f"http://127.0.0.1:{pport}"]
        assert curl(*via, "http://www.facebook.com/wall?x=1").status == 403
        killed = curl(*via, "--cacert", str(origin.ca), "--connect-to", f"www.facebook.com:443:127.0.0.1:{oport}",
                      "https://www.facebook.com/")
        assert killed.code != 0 and killed.status == 0
        events = wait_for(lambda: len(found := blocked_events(sessions)) >= 2 and found, what="the events written")
        by_url = {event.url: event for event in events}
        page = by_url["http://www.facebook.com/wall?x=1"]
        kill = by_url[None]  # the TLS kill: by host, nothing decrypted
        for event in (page, kill):
            assert (event.source, event.client_ip, event.host) == ("proxy", "127.0.0.1", "www.facebook.com")
            assert event.rule_id and event.clause and event.role and event.ts is not None

        def rows() -> dict[str, Any]:
            with sessions() as session:
                return {row.name: json.loads(row.stats) for row in session.scalars(select(DaemonStatus))}

        found = wait_for(lambda: (r := rows()).get("proxy", {}).get("events", {}).get("handed", 0) >= 2
                         and r.get("proxy.events", {}).get("events", {}).get("written", 0) >= 2 and r,
                         what="both status rows")
        assert found["proxy"]["events"]["dropped"] == 0
        assert found["proxy"]["counters"]["killed"] == 1
    finally:
        if proxy is not None:
            stop(proxy)
        stop(origin.process)
    # No signal: the writer stops because its last sender has gone.
    try:
        assert writer.wait(timeout=30) == 0
    finally:
        stop(writer)


def test_the_writing_process_refuses_a_descriptor_that_is_not_the_channel(tmp_path: Path, db_path: Path,
                                                                          policy_file: Path, school_ca: Path) -> None:
    config = write_config(tmp_path, policy=policy_file, db_path=db_path, ca_dir=school_ca,
                          listen="127.0.0.1:9", mode="regular")
    with socket.socket() as tcp:
        done = subprocess.run(
            [SCHOOLGATE, "proxy", "events", "--config", str(config), "--events-fd", str(tcp.fileno())],
            pass_fds=(tcp.fileno(),), capture_output=True, text=True, timeout=60,
        )
    assert done.returncode == 2
    assert "not the event channel" in done.stderr
    missing = subprocess.run([SCHOOLGATE, "proxy", "events", "--config", str(config)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "needs --events-fd" in missing.stderr


# ------------------------------------------------------------------------- regular, loopback


@pytest.fixture
def loopback(
    tmp_path: Path, policy_file: Path, db_path: Path, school_ca: Path, sessions: sessionmaker[Session]
) -> Iterator[dict[str, Any]]:
    oport, hport, pport = free_port(), free_port(), free_port()
    origin = start_origin(tmp_path, [f"127.0.0.1:{oport}", f"127.0.0.2:{oport}"], [f"127.0.0.1:{hport}"])
    policy = tmp_path / "policy.toml"
    shutil.copyfile(policy_file, policy)
    add_device(sessions, "127.0.0.3", "LAP-TRUST", trusts=True)
    config = write_config(
        tmp_path,
        policy=policy,
        db_path=db_path,
        ca_dir=school_ca,
        listen=f"127.0.0.1:{pport}",
        mode="regular",
        extra='neighbours = false\nresolvers = ["127.0.0.1:9"]\nprefix_hosts = ["127.0.0.2/32 facebook.com"]\n'
        f'inspect_search_engines = true\nupstream_ca_file = "{origin.ca}"',
    )
    proxy = start_proxy(config, pport)
    try:
        yield {
            "origin": origin,
            "oport": oport,
            "hport": hport,
            "pport": pport,
            "policy": policy,
            "config": config,
            "dir": tmp_path,
            "proxy": proxy,
        }
    finally:
        stop(proxy)
        stop(origin.process)


def test_regular_mode_end_to_end(
    loopback: dict[str, Any], school_ca: Path, policy_file: Path, sessions: sessionmaker[Session]
) -> None:
    o, p = loopback["oport"], loopback["pport"]
    origin_ca = str(loopback["origin"].ca)
    school = str(school_ca / "mitmproxy-ca-cert.pem")
    via = ["-x", f"http://127.0.0.1:{p}"]

    def tls(host: str, *, ip: str = "127.0.0.1", cacert: str = origin_ca, source: str | None = None) -> Curl:
        extra = ["--interface", source] if source else []
        return curl(*via, *extra, "--cacert", cacert, "--connect-to", f"{host}:443:{ip}:{o}", f"https://{host}/")

    # Allowed: passed through untouched, so the origin's own certificate verifies.
    allowed = tls("allowed.test")
    assert (allowed.code, allowed.status, allowed.body) == (0, 200, "origin allowed.test")
    # Blocked, device does not trust the school CA: the connection is closed, nothing decrypted.
    killed = tls("www.facebook.com")
    assert killed.code != 0 and killed.status == 0
    assert tls("www.facebook.com", cacert=school).status == 0
    # Blocked, device trusts the school CA: the school's block page over HTTPS.
    page = tls("www.facebook.com", cacert=school, source="127.0.0.3")
    assert page.status == 403, page
    assert "filtered and monitored" in page.body and "Social Media Policy §9" in page.body
    assert "device=LAP-TRUST" in page.body
    # Fronting: an innocent name sent to Facebook's published range.
    assert tls("innocent.test", ip="127.0.0.2").status == 0
    assert tls("innocent.test").body == "origin innocent.test"
    # Plain HTTP.
    blocked_http = curl(*via, "http://www.facebook.com/<b>?q=1")
    assert blocked_http.status == 403 and "&lt;b&gt;" in blocked_http.body
    forwarded = curl(*via, "-H", "Host: allowed.test", f"http://127.0.0.1:{loopback['hport']}/")
    assert (forwarded.status, forwarded.body) == (200, "origin allowed.test")
    # A search from a device that trusts the school CA: decrypted, forwarded (the proxy verifies
    # the server), and the term recorded.
    search = curl(
        *via,
        "--interface",
        "127.0.0.3",
        "--cacert",
        school,
        "--connect-to",
        f"www.bing.com:443:127.0.0.1:{o}",
        "https://www.bing.com/search?q=am+i+safe",
    )
    assert (search.status, search.body) == (200, "origin www.bing.com")

    def counters() -> dict[str, int]:
        data: dict[str, int] = stats(loopback["dir"])["counters"]
        return data

    c = wait_for(lambda: (c := counters()).get("http_requests", 0) >= 4 and c, what="counters in the stats file")
    assert c["inspected"] == 1
    assert c["passed_through"] == 2
    assert c["killed"] == 3
    assert c["intercepted"] == 1
    assert c["block_pages_served"] == 2
    assert c["fronting_blocked"] == 1
    assert c["http_forwarded"] == 2

    # The same counters in daemon_status, and the events with the DfE fields.
    def status() -> dict[str, Any] | None:
        with sessions() as session:
            row = session.get(DaemonStatus, (SITE, "proxy"))
            return json.loads(row.stats) if row is not None else None

    wait_for(lambda: (s := status()) and s["counters"]["block_pages_served"] == 2, what="daemon_status")
    shown = subprocess.run(
        [SCHOOLGATE, "proxy", "stats", "--config", str(loopback["config"])], capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0 and json.loads(shown.stdout)["counters"]["intercepted"] == 1
    # A row of count n is n repeated attempts (the writer folds an attempt's repeats within a second).
    def attempts() -> list[AccessEvent] | None:
        rows = blocked_events(sessions)
        return rows if sum(row.count for row in rows) >= 5 else None

    events = wait_for(attempts, what="blocked events")
    trusted = [e for e in events if e.device_id == "LAP-TRUST"]
    assert trusted and trusted[0].url == "https://www.facebook.com/" and trusted[0].role == "pupil"
    fronted = [e for e in events if e.host == "innocent.test"]
    assert fronted and "circumvention" in fronted[0].flags and fronted[0].service == "facebook"
    with sessions() as session:
        terms = session.scalars(select(AccessEvent.search_term).where(AccessEvent.search_term.is_not(None))).all()
    assert terms == ["am i safe"]

    # Reload: a new rule in the policy file applies within about a second.
    policy: Path = loopback["policy"]
    policy.write_text(
        policy_file.read_text()
        .replace('domains = ["google.com"]', 'domains = ["google.com", "allowed.test"]')
        .replace('categories = ["social_media"]', 'categories = ["social_media"]\nservices = ["google"]')
    )
    started = time.monotonic()
    wait_for(lambda: tls("allowed.test").status == 0, timeout=10, what="the policy reload")
    assert time.monotonic() - started < 5.0
    # A broken policy keeps the last good one in force, and says why.
    policy.write_text("this is [not valid toml\n")
    wait_for(lambda: stats(loopback["dir"]).get("policy_error"), what="the policy error")
    assert tls("allowed.test").status == 0
    assert tls("www.facebook.com").status == 0
    # The database generation: an approved exception lets pupils reach Facebook.
    with sessions() as session, session.begin():
        now = utcnow()
        session.add(
            PolicyExceptionRow(
                site=SITE,
                scope="role",
                subject="pupil",
                domain="facebook.com",
                url_prefix=None,
                starts=now.replace(year=now.year - 1),
                expires=now.replace(year=now.year + 1),
                created_by="test",
            )
        )
        bump_generation(session, SITE)
    wait_for(lambda: tls("www.facebook.com").status == 200, timeout=10, what="the exception to apply")


def test_end_of_lunch_closes_a_passed_through_connection(
    tmp_path: Path, policy_file: Path, db_path: Path, school_ca: Path
) -> None:
    """A TLS stream allowed at lunch is cut when lunch ends, though it sends no new name."""
    oport, pport = free_port(), free_port()
    origin = start_origin(tmp_path, [f"127.0.0.1:{oport}"], [])
    clock_file = tmp_path / "clock"
    set_clock_file(clock_file, datetime(2026, 11, 18, 12, 59, 50, tzinfo=UTC))
    config = write_config(
        tmp_path,
        policy=policy_file,
        db_path=db_path,
        ca_dir=school_ca,
        listen=f"127.0.0.1:{pport}",
        mode="regular",
        extra='neighbours = false\nresolvers = ["127.0.0.1:9"]',
    )
    proxy = start_proxy(config, pport, env={"SCHOOLGATE_CLOCK_FILE": str(clock_file)})
    try:
        raw = socket.create_connection(("127.0.0.1", pport), timeout=10)
        raw.sendall(f"CONNECT 127.0.0.1:{oport} HTTP/1.1\r\nHost: 127.0.0.1:{oport}\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        tls = ssl.create_default_context(cafile=str(origin.ca)).wrap_socket(raw, server_hostname="www.youtube.com")
        request = b"GET / HTTP/1.1\r\nHost: www.youtube.com\r\n\r\n"
        tls.sendall(request)
        answer = b""
        while not answer.endswith(b"origin www.youtube.com"):
            chunk = tls.recv(4096)
            assert chunk, answer  # passed through: the origin answered, with its own certificate
            answer += chunk
        set_clock_file(clock_file, datetime(2026, 11, 18, 13, 0, 5, tzinfo=UTC))

        def closed() -> bool:
            try:
                tls.sendall(request)
                return tls.recv(4096) == b""
            except OSError:
                return True

        wait_for(closed, timeout=10, what="the proxy to close the stream")
        tls.close()
        wait_for(lambda: stats(tmp_path)["counters"].get("passthroughs_closed") == 1, what="the counter")
    finally:
        stop(proxy)
        stop(origin.process)


# ------------------------------------------------------------------- transparent, namespaces


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


TRUSTED_MAC = "02:51:00:00:00:03"  # the trusted laptop's, as the register knows it


@pytest.fixture
def namespaces() -> Iterator[tuple[str, dict[str, str]]]:
    """The gateway, and two devices on its LAN bridge: an unknown one (10.251.0.2) and the
    registered laptop (10.251.0.3, TRUSTED_MAC). Identity is by MAC, so each is a device of its
    own with an interface of its own. Returns (gateway, {source address: device namespace})."""
    tag = str(os.getpid() % 100000)
    gw = f"proxytest-gw-{tag}"
    devices = {"10.251.0.2": f"proxytest-cl-{tag}", "10.251.0.3": f"proxytest-lp-{tag}"}
    sh("ip", "netns", "add", gw)
    for ns in devices.values():
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", gw, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", gw, "addr", "add", "10.251.0.1/24", "dev", "br0")
        sh("ip", "-n", gw, "link", "set", "br0", "up")
        for ns in (gw, *devices.values()):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for index, (address, ns) in enumerate(devices.items()):
            port, inside = f"ptg{tag}{index}", f"ptc{tag}{index}"
            sh("ip", "link", "add", port, "netns", gw, "type", "veth", "peer", "name", inside, "netns", ns)
            sh("ip", "-n", gw, "link", "set", port, "master", "br0")
            sh("ip", "-n", gw, "link", "set", port, "up")
            if address == "10.251.0.3":
                sh("ip", "-n", ns, "link", "set", inside, "address", TRUSTED_MAC)
            sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inside)
            sh("ip", "-n", ns, "link", "set", inside, "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", "10.251.0.1")
        for server in ("10.251.9.1/32", "10.251.9.2/32"):  # "the Internet": facebook, an ordinary site
            sh("ip", "-n", gw, "addr", "add", server, "dev", "lo")
        ruleset = (
            "table inet proxytest {\n"
            " chain steer {\n  type nat hook prerouting priority dstnat; policy accept;\n"
            '  iifname "br0" tcp dport { 80, 443 } redirect to :8081\n }\n}\n'
        )
        subprocess.run(["ip", "netns", "exec", gw, "nft", "-f", "-"], input=ruleset, text=True, check=True)
        yield gw, devices
    finally:
        for ns in devices.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", gw], capture_output=True)


@pytest.mark.root
def test_transparent_mode_in_namespaces(
    namespaces: tuple[str, dict[str, str]],
    tmp_path: Path,
    policy_file: Path,
    db_path: Path,
    school_ca: Path,
    sessions: sessionmaker[Session],
) -> None:
    gw, devices = namespaces
    cl = devices["10.251.0.2"]
    origin = start_origin(
        tmp_path,
        ["10.251.9.1:443", "10.251.9.2:443"],
        ["10.251.9.1:80", "10.251.9.2:80"],
        netns=gw,
        dns="10.251.0.1:5353",
        answers=("facebook.com=10.251.9.1",),
    )
    add_device(sessions, "10.251.0.3", "LAP-TRUST", trusts=True, mac=TRUSTED_MAC)
    config = write_config(
        tmp_path,
        policy=policy_file,
        db_path=db_path,
        ca_dir=school_ca,
        listen="*:8081",
        mode="transparent",
        extra='resolvers = ["10.251.0.1:5353"]',
    )
    proxy = start_proxy(config, 8081, netns=gw)
    try:
        # The address book learns facebook.com's address from the DNS answer.
        wait_for(lambda: stats(tmp_path).get("addresses_known", 0) >= 1, what="the address learner")
        # Both clients in the gateway's neighbour table before the proxy's next refresh (1 s).
        for source, ns in devices.items():
            curl("--interface", source, "--max-time", "2", "http://10.251.0.1:9/", netns=ns)  # refused: fine
        time.sleep(1.2)
        origin_ca, school = str(origin.ca), str(school_ca / "mitmproxy-ca-cert.pem")

        def tls(host: str, ip: str, *, cacert: str = origin_ca, source: str = "10.251.0.2") -> Curl:
            return curl(
                "--interface", source, "--cacert", cacert, "--resolve", f"{host}:443:{ip}", f"https://{host}/",
                netns=devices[source],
            )

        assert tls("allowed.test", "10.251.9.2").body == "origin allowed.test"
        assert tls("www.facebook.com", "10.251.9.1").status == 0
        page = tls("www.facebook.com", "10.251.9.1", cacert=school, source="10.251.0.3")
        assert page.status == 403 and "filtered and monitored" in page.body
        assert tls("innocent.test", "10.251.9.1").status == 0  # fronting, by the learnt address
        assert tls("innocent.test", "10.251.9.2").body == "origin innocent.test"
        http_page = curl("--resolve", "www.facebook.com:80:10.251.9.1", "http://www.facebook.com/", netns=cl)
        assert http_page.status == 403
        http_ok = curl("--resolve", "allowed.test:80:10.251.9.2", "http://allowed.test/", netns=cl)
        assert (http_ok.status, http_ok.body) == (200, "origin allowed.test")

        c = wait_for(lambda: (c := stats(tmp_path)["counters"]).get("http_requests", 0) >= 2 and c, what="counters")
        assert (c["passed_through"], c["killed"], c["intercepted"], c["fronting_blocked"]) == (2, 2, 1, 1)
        assert c["connections_seen"] == 7
        # The passed and killed ClientHellos were judged before mitmproxy's TLS layers, by the
        # front door, which handed mitmproxy only the block page and the two HTTP requests.
        assert stats(tmp_path)["hellos_judged_early"] == 4
        front = stats(tmp_path)["front"]
        assert (front["accepted"], front["killed"], front["spliced"], front["handed_over"]) == (7, 2, 2, 3)
        events = wait_for(lambda: len(e := blocked_events(sessions)) >= 4 and e, what="events")
        assert {e.client_ip for e in events} == {"10.251.0.2", "10.251.0.3"}
        assert all(e.mac for e in events)  # from the gateway's neighbour table
    finally:
        stop(proxy)
        stop(origin.process)


@pytest.mark.root
def test_two_workers_share_the_port_and_one_serves_while_the_other_is_down(
    namespaces: tuple[str, dict[str, str]],
    tmp_path: Path,
    policy_file: Path,
    db_path: Path,
    school_ca: Path,
) -> None:
    gw, devices = namespaces
    origin = start_origin(tmp_path, ["10.251.9.2:443"], [], netns=gw, dns="10.251.0.1:5353")
    config = write_config(
        tmp_path, policy=policy_file, db_path=db_path, ca_dir=school_ca, listen="*:8081", mode="transparent",
        extra='resolvers = ["10.251.0.1:5353"]\nworkers = 2',
    )
    workers = [start_proxy(config, 8081, netns=gw, args=("--worker", str(n), "--workers", "2")) for n in (1, 2)]
    names = ("proxy-stats.1.json", "proxy-stats.2.json")
    try:
        for name in names:  # each worker has its front door listening (the port is shared)
            wait_for(lambda name=name: stats(tmp_path, name).get("front"), what=f"{name}'s front door")

        def fetch() -> str:
            return curl("--interface", "10.251.0.2", "--cacert", str(origin.ca), "--resolve",
                        "allowed.test:443:10.251.9.2", "https://allowed.test/", netns=devices["10.251.0.2"]).body

        for _ in range(24):
            assert fetch() == "origin allowed.test"
        accepted = [wait_for(lambda name=name: stats(tmp_path, name)["front"]["accepted"], what="a count")
                    for name in names]
        # The kernel spreads connections by their addresses and ports: with 24, each worker gets
        # some unless the hash is very unlucky (p < 1e-6).
        assert all(accepted), accepted
        workers[0].kill()
        workers[0].wait()
        # Worker 1's socket left the group with it: worker 2 takes every new connection at once.
        for _ in range(8):
            assert fetch() == "origin allowed.test"
    finally:
        for process in workers:
            stop(process)
        stop(origin.process)


def test_the_proxy_refuses_to_start_without_the_school_ca(tmp_path: Path, policy_file: Path, db_path: Path) -> None:
    config = write_config(tmp_path, policy=policy_file, db_path=db_path, ca_dir=tmp_path / "no-ca",
                          listen=f"127.0.0.1:{free_port()}", mode="transparent")
    done = subprocess.run([SCHOOLGATE, "proxy", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "schoolgate ca init" in done.stderr
    assert not (tmp_path / "no-ca").exists()  # mitmproxy was never allowed to make a CA of its own
