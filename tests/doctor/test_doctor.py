"""`schoolgate doctor`: every check against loopback fakes, each with an OK and a FAIL case.

The fakes are real: a dnslib server and an aiosmtpd server on loopback ports, an HTTP server
for the console, a listening socket for the proxy, a SQLite database with the real schema, a
CA made by the proxy's own code, and (as root) a network namespace and an nftables table.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from schoolgate import doctor
from schoolgate.config import AppConfig, ConsoleConfig, DnsConfig, MailConfig, NetworkConfig, ProxyConfig
from schoolgate.doctor import Env, Status

NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=dt.UTC)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def statuses(results: Sequence[doctor.Result]) -> list[Status]:
    return [r.status for r in results]


@pytest.fixture
def config(tmp_path: Path) -> AppConfig:
    (tmp_path / "schoolgate.toml").write_text('policy = "policy.toml"\n')
    return AppConfig(source=tmp_path / "schoolgate.toml", policy=tmp_path / "policy.toml", data_dir=tmp_path / "data")


def make_env(config: AppConfig, **kwargs: Any) -> Env:
    return Env(config=config, timeout_s=0.5, now=lambda: NOW, **kwargs)


# ------------------------------------------------------------------------ fakes


@pytest.fixture(scope="module")
def dns_server() -> Iterator[str]:
    """A DNS server on loopback that answers every question with 10.0.0.1."""
    from dnslib import RR
    from dnslib.server import BaseResolver, DNSLogger, DNSServer

    class Answer(BaseResolver):  # type: ignore[misc]
        def resolve(self, request: Any, handler: Any) -> Any:
            reply = request.reply()
            reply.add_answer(*RR.fromZone(f"{request.q.qname} 60 A 10.0.0.1"))
            return reply

    port = free_port(socket.SOCK_DGRAM)
    server = DNSServer(
        Answer(),
        port=port,
        address="127.0.0.1",
        logger=DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data"),
    )
    server.start_thread()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop()
        server.server.server_close()


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[tuple[str, int]]:
    from aiosmtpd.controller import Controller

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield "127.0.0.1", port
    finally:
        controller.stop()


def http_server(
    status_for: Callable[[str], int], tls: ssl.SSLContext | None = None
) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status_for(self.path)
            body = b"ok"
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"


# ------------------------------------------------------------------------ daemons


@pytest.mark.parametrize("running", [True, False])
def test_dns(config: AppConfig, dns_server: str, running: bool) -> None:
    listen = dns_server if running else f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    env = make_env(replace(config, dns=DnsConfig(listen=[listen])))
    results = doctor.check_dns(env)
    assert statuses(results) == [Status.OK if running else Status.FAIL]
    assert listen in results[0].message
    if not running:
        assert "systemctl restart schoolgate-dns" in results[0].fix


@pytest.mark.parametrize(
    ("upstreams", "expected"),
    [
        (["good"], [Status.OK]),
        (["bad"], [Status.FAIL]),
        (["good", "bad"], [Status.OK, Status.WARN]),  # one working upstream keeps the school online
        ([], [Status.FAIL]),
    ],
)
def test_upstreams(config: AppConfig, dns_server: str, upstreams: list[str], expected: list[Status]) -> None:
    dead = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    addresses = [dns_server if u == "good" else dead for u in upstreams]
    env = make_env(replace(config, dns=DnsConfig(upstreams=addresses)))
    assert statuses(doctor.check_upstreams(env)) == expected


@pytest.mark.parametrize(
    ("provider", "upstreams", "expected", "shown"),
    [
        ("", [], [Status.WARN], "no resolver carrying the IWF and CTIRU lists"),
        ("Example ISP (IWF member)", ["good"], [Status.OK], "Example ISP (IWF member): 127.0.0.1:"),
        ("Example ISP (IWF member)", ["dead"], [Status.FAIL], "does not answer"),
        ("", ["good"], [Status.OK, Status.WARN], "the provider is not named"),
    ],
)
def test_illegal_content_resolver(config: AppConfig, dns_server: str, provider: str, upstreams: list[str],
                                  expected: list[Status], shown: str) -> None:
    dead = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
    addresses = [dns_server if u == "good" else dead for u in upstreams]
    dns = DnsConfig(illegal_content_provider=provider, illegal_content_upstream=addresses)
    results = doctor.check_illegal_content(make_env(replace(config, dns=dns)))
    assert statuses(results) == expected, results
    assert shown in " ".join(r.message for r in results)


@pytest.mark.parametrize(
    ("paths", "expected", "shown"),
    [
        ({"/healthz": 200}, Status.OK, "/healthz"),
        ({"/healthz": 404, "/login": 200}, Status.OK, "/login"),
        ({"/healthz": 500}, Status.FAIL, "HTTP 500"),
        ({"/healthz": 404, "/login": 404}, Status.FAIL, "HTTP 404"),
    ],
)
def test_console(config: AppConfig, paths: dict[str, int], expected: Status, shown: str) -> None:
    server, listen = http_server(lambda path: paths.get(path, 404))
    try:
        env = make_env(replace(config, console=ConsoleConfig(listen=listen, plain_http=True)))
        (result,) = doctor.check_console(env)
    finally:
        server.shutdown()
        server.server_close()
    assert result.status is expected
    assert shown in result.message


@pytest.mark.parametrize(("idle_minutes", "expected"), [(10, Status.OK), (0, Status.FAIL)])
def test_a_console_on_demand_is_given_time_to_wake(config: AppConfig, idle_minutes: int, expected: Status) -> None:
    """A sleeping console answers once it has started: slower than the probe's timeout is no
    fault then (within doctor.CONSOLE_WAKE_S), but it is for a console that is always on."""
    env = make_env(config)
    wake_s = env.timeout_s * 3
    assert wake_s < doctor.CONSOLE_WAKE_S

    def waking(_path: str) -> int:
        time.sleep(wake_s)
        return 200

    server, listen = http_server(waking)
    try:
        console = ConsoleConfig(listen=listen, plain_http=True, idle_minutes=idle_minutes)
        (result,) = doctor.check_console(make_env(replace(config, console=console)))
    finally:
        server.shutdown()
        server.server_close()
    assert result.status is expected, result
    if expected is Status.OK:
        assert "started on demand, asleep after 10 idle minutes" in result.message


def test_console_over_tls(config: AppConfig, ca_dir: Path) -> None:
    """The appliance's console speaks TLS with a certificate from the school CA."""
    from schoolgate.ca import issue_server_cert

    cert, key = issue_server_cert(ca_dir, ["schoolgate.lan"], ["127.0.0.1"], name="doctor-console")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, listen = http_server(lambda path: 200 if path == "/healthz" else 404, tls=context)
    try:
        env = make_env(replace(config, console=ConsoleConfig(listen=listen)))
        (result,) = doctor.check_console(env)
    finally:
        server.shutdown()
        server.server_close()
    assert result.status is Status.OK, result


def test_console_down(config: AppConfig) -> None:
    env = make_env(replace(config, console=ConsoleConfig(listen=f"127.0.0.1:{free_port()}")))
    (result,) = doctor.check_console(env)
    assert result.status is Status.FAIL and "journalctl -u schoolgate-console" in result.fix


@pytest.mark.parametrize("listening", [True, False])
def test_proxy(config: AppConfig, listening: bool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if listening:
            sock.listen()
        env = make_env(replace(config, proxy=ProxyConfig(listen=f"127.0.0.1:{sock.getsockname()[1]}")))
        (result,) = doctor.check_proxy(env)
    assert result.status is (Status.OK if listening else Status.FAIL)


@pytest.fixture
def database(config: AppConfig) -> AppConfig:
    from schoolgate.store.db import init_db, make_engine

    engine = make_engine(config.database_url)
    init_db(engine)
    engine.dispose()
    return config


def write_heartbeat(config: AppConfig, name: str, at: dt.datetime) -> None:
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.models import DaemonStatus

    engine = make_engine(config.database_url)
    with session_factory(engine)() as session:
        session.add(DaemonStatus(site=config.site.id, name=name, pid=4242, started_at=at, heartbeat_at=at, stats="{}"))
        session.commit()
    engine.dispose()


@pytest.mark.parametrize(
    ("age_s", "expected"),
    [(20, Status.OK), (doctor.HEARTBEAT_STALE_S + 60, Status.FAIL), (None, Status.FAIL)],
)
def test_scheduler_heartbeat(database: AppConfig, age_s: int | None, expected: Status) -> None:
    if age_s is not None:
        write_heartbeat(database, "scheduler", NOW - dt.timedelta(seconds=age_s))
    (result,) = doctor.check_heartbeats(make_env(database))
    assert result.status is expected, result
    assert result.check == "scheduler"


def test_heartbeat_without_a_database_creates_none(config: AppConfig) -> None:
    (result,) = doctor.check_heartbeats(make_env(config))
    assert result.status is Status.FAIL and "db upgrade" in result.fix
    assert not config.data_dir.exists()


# ------------------------------------------------------------------------ storage


def test_database_ok(database: AppConfig) -> None:
    usage = SimpleNamespace(total=100 << 30, used=10 << 30, free=90 << 30)
    results = doctor.check_database(make_env(database, disk_usage=lambda _p: usage))
    assert statuses(results) == [Status.OK, Status.OK]


def test_database_missing(config: AppConfig) -> None:
    """No data directory at all: the database FAILs, the disk is measured where it would be."""
    results = doctor.check_database(make_env(config))
    assert results[0].status is Status.FAIL and "db upgrade" in results[0].fix
    assert str(config.source) in results[0].fix
    assert results[1].check == "disk" and results[1].status is not None
    assert not config.data_dir.exists()


def test_database_not_a_database(config: AppConfig) -> None:
    config.data_dir.mkdir()
    (config.data_dir / "schoolgate.db").write_bytes(b"this is not SQLite" * 512)
    results = doctor.check_database(make_env(config))
    assert results[0].status is Status.FAIL and "not writable" in results[0].message


@pytest.mark.parametrize(
    ("total_gib", "free_gib", "expected"),
    [(100, 50, Status.OK), (100, 0.9, Status.WARN), (100, 8, Status.WARN), (4, 2, Status.OK), (100, 0.05, Status.FAIL)],
)
def test_disk(database: AppConfig, total_gib: float, free_gib: float, expected: Status) -> None:
    usage = SimpleNamespace(total=int(total_gib * (1 << 30)), free=int(free_gib * (1 << 30)))
    results = doctor.check_database(make_env(database, disk_usage=lambda _p: usage))
    assert results[1].check == "disk" and results[1].status is expected, results[1]


# ------------------------------------------------------------------------ CA, clock, mail


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from schoolgate.ca import init_ca

    directory = tmp_path_factory.mktemp("doctor-ca")
    init_ca(directory, school_name="Doctor Test School", now=NOW)
    return directory


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (NOW, Status.OK),
        (NOW + dt.timedelta(days=3650 - 30), Status.WARN),  # a month before the ten years are up
        (NOW + dt.timedelta(days=3660), Status.FAIL),
    ],
)
def test_ca(config: AppConfig, ca_dir: Path, now: dt.datetime, expected: Status) -> None:
    env = Env(config=replace(config, proxy=ProxyConfig(ca_dir=str(ca_dir))), now=lambda: now)
    (result,) = doctor.check_ca(env)
    assert result.status is expected, result


def test_ca_missing(config: AppConfig) -> None:
    (result,) = doctor.check_ca(make_env(config))
    assert result.status is Status.FAIL and "ca init" in result.fix


def fake_run(stdout: str, returncode: int = 0) -> Callable[[Sequence[str], float], subprocess.CompletedProcess[str]]:
    def run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(list(argv), returncode, stdout, "")

    return run


@pytest.mark.parametrize(("answer", "expected"), [("yes\n", Status.OK), ("no\n", Status.FAIL)])
def test_clock_timedatectl(config: AppConfig, answer: str, expected: Status) -> None:
    env = make_env(config, run=fake_run(answer), which=lambda name: f"/usr/bin/{name}")
    (result,) = doctor.check_clock(env)
    assert result.status is expected
    if expected is Status.FAIL:
        assert "timedatectl set-ntp" in result.fix


def test_clock_kernel_fallback(config: AppConfig) -> None:
    """Without timedatectl the kernel's adjtimex state decides (real call, either answer)."""
    env = make_env(config, which=lambda name: None)
    (result,) = doctor.check_clock(env)
    synced = doctor.kernel_clock_synchronised()
    assert synced is not None
    assert result.status is (Status.OK if synced else Status.FAIL)


def test_mail_ok(config: AppConfig, smtp_server: tuple[str, int]) -> None:
    host, port = smtp_server
    env = make_env(replace(config, mail=MailConfig(host=host, port=port)))
    assert statuses(doctor.check_mail(env)) == [Status.OK]


def test_mail_starttls_missing(config: AppConfig, smtp_server: tuple[str, int]) -> None:
    host, port = smtp_server
    env = make_env(replace(config, mail=MailConfig(host=host, port=port, starttls=True)))
    (result,) = doctor.check_mail(env)
    assert result.status is Status.FAIL and "STARTTLS" in result.message


@pytest.mark.parametrize(("host", "expected"), [("", Status.WARN), ("127.0.0.1", Status.FAIL)])
def test_mail_unreachable_or_unset(config: AppConfig, host: str, expected: Status) -> None:
    env = make_env(replace(config, mail=MailConfig(host=host, port=free_port())))
    assert statuses(doctor.check_mail(env)) == [expected]


@pytest.mark.parametrize(("chair", "expected"), [("", Status.WARN), ("chair@governors.example", Status.OK)])
def test_concerns_about_the_headteacher_have_somewhere_to_go(config: AppConfig, chair: str, expected: Status) -> None:
    env = make_env(replace(config, mail=MailConfig(chair_of_governors=chair)))
    (result,) = doctor.check_concerns(env)
    assert result.status is expected
    if expected is Status.WARN:
        assert "the DSL instead" in result.message and "chair_of_governors" in result.fix


# ------------------------------------------------------------------------ network setup


@pytest.mark.parametrize(
    ("files", "ipv6", "expected"),
    [
        ({"net/ipv4/ip_forward": "1\n"}, False, [Status.OK]),
        ({"net/ipv4/ip_forward": "0\n"}, False, [Status.FAIL]),
        ({"net/ipv4/ip_forward": "1\n", "net/ipv6/conf/all/forwarding": "0\n"}, True, [Status.OK, Status.FAIL]),
        ({}, False, [Status.FAIL]),
    ],
)
def test_forwarding(
    config: AppConfig, tmp_path: Path, files: dict[str, str], ipv6: bool, expected: list[Status]
) -> None:
    for name, value in files.items():
        (tmp_path / "sys" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys" / name).write_text(value)
    network = NetworkConfig(appliance_ipv6="fd00::1" if ipv6 else "")
    env = make_env(replace(config, network=network), proc_sys=tmp_path / "sys")
    assert statuses(doctor.check_forwarding(env)) == expected


def nft_json(sets: list[str], chains: list[str]) -> str:
    items: list[dict[str, Any]] = [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "inet", "name": "schoolgate"}},
    ]
    items += [{"set": {"family": "inet", "table": "schoolgate", "name": s}} for s in sets]
    items += [{"chain": {"family": "inet", "table": "schoolgate", "name": c}} for c in chains]
    return json.dumps({"nftables": items})


@pytest.mark.parametrize(
    ("stdout", "returncode", "expected", "words"),
    [
        (nft_json(["watched4", "watched6"], ["steer", "forward"]), 0, Status.OK, "2 chains"),
        (nft_json(["watched4"], ["steer"]), 0, Status.FAIL, "watched6"),
        (nft_json(["watched4", "watched6"], []), 0, Status.FAIL, "no chains"),
        ("", 1, Status.FAIL, "not loaded"),
        ("garbage", 0, Status.FAIL, "not JSON"),
    ],
)
def test_nftables_parsing(config: AppConfig, stdout: str, returncode: int, expected: Status, words: str) -> None:
    env = make_env(config, run=fake_run(stdout, returncode), which=lambda name: "/usr/sbin/nft")
    (result,) = doctor.check_nftables(env)
    assert result.status is expected and words in result.message, result


def test_nftables_command_missing(config: AppConfig) -> None:
    (result,) = doctor.check_nftables(make_env(config, which=lambda name: None))
    assert result.status is Status.FAIL and "apt-get install nftables" in result.fix


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"deploy-doctor-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def ns(name: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", name, *argv], check=True)


@pytest.mark.root
def test_nftables_real_table(config: AppConfig, netns: str) -> None:
    """A real table in a namespace of our own: loaded -> OK; deleted -> FAIL."""
    table = "deploy_doctor"
    ruleset = (
        f"table inet {table} {{\n set watched4 {{ type ipv4_addr; flags timeout; }}\n"
        f" set watched6 {{ type ipv6_addr; flags timeout; }}\n"
        " chain steer { type nat hook prerouting priority dstnat; }\n}\n"
    )
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=ruleset, text=True, check=True)

    def run_in_ns(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )

    env = make_env(config, run=run_in_ns, nft_table=table)
    (result,) = doctor.check_nftables(env)
    assert result.status is Status.OK, result
    ns(netns, "nft", "delete", "table", "inet", table)
    (result,) = doctor.check_nftables(env)
    assert result.status is Status.FAIL and "not loaded" in result.message


@pytest.mark.root
def test_interfaces(config: AppConfig, netns: str) -> None:
    ns(netns, "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan0peer")
    ns(netns, "ip", "addr", "add", "10.77.0.1/24", "dev", "lan0")
    network = NetworkConfig(lan_interface="lan0", appliance_ipv4="10.77.0.1")
    env = make_env(replace(config, network=network), netns=netns)

    assert statuses(doctor.check_interfaces(env)) == [Status.FAIL, Status.OK]  # down, address present
    ns(netns, "ip", "link", "set", "lan0", "up")
    assert statuses(doctor.check_interfaces(env)) == [Status.FAIL, Status.OK]  # no carrier: peer down
    ns(netns, "ip", "link", "set", "lan0peer", "up")
    assert statuses(doctor.check_interfaces(env)) == [Status.OK, Status.OK]

    wrong = make_env(replace(config, network=replace(network, appliance_ipv4="10.77.0.2")), netns=netns)
    results = doctor.check_interfaces(wrong)
    assert statuses(results) == [Status.OK, Status.FAIL] and "10.77.0.2" in results[1].message

    missing = make_env(replace(config, network=replace(network, lan_interface="lan9")), netns=netns)
    (result,) = doctor.check_interfaces(missing)
    assert result.status is Status.FAIL and "does not exist" in result.message


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("lan", "edit", "expected"),
    [
        (["10.41.20.0/22"], None, [Status.OK]),
        (["10.41.0.0/16"], None, [Status.OK]),  # overlaps several [[networks]]
        (["192.168.7.0/24"], None, [Status.OK, Status.WARN]),  # the example's ranges are not this school's
        ([], ("[school]", "[school]\nnot_a_setting = 1"), [Status.FAIL]),
    ],
)
def test_policy(
    config: AppConfig, tmp_path: Path, lan: list[str], edit: tuple[str, str] | None, expected: list[Status]
) -> None:
    policy = tmp_path / "policy.toml"
    text = (REPO / "deploy/policy.example.toml").read_text()
    policy.write_text(text.replace(*edit, 1) if edit else text)
    if (REPO / "deploy/lists").is_dir():
        shutil.copytree(REPO / "deploy/lists", tmp_path / "lists", dirs_exist_ok=True)
    env = make_env(replace(config, policy=policy, network=NetworkConfig(lan_cidrs=lan)))
    results = doctor.check_policy(env)
    assert statuses(results) == expected, results
    if expected[-1] is Status.WARN:
        assert "192.168.7.0/24" in results[-1].message and "guest" in results[-1].message
    if expected[-1] is Status.FAIL:
        assert "not_a_setting" in results[0].message and "policy check" in results[0].fix


@pytest.mark.parametrize(("verified_days_ago", "error", "expected", "fragment"), [
    (None, None, Status.WARN, "no version installed yet"),
    (1, None, Status.OK, "confirmed current 1.0 days ago"),
    (1, "download failed: HTTP 503", Status.WARN, "last error: download failed: HTTP 503"),
    (4, None, Status.WARN, "older than 3 days"),
])
def test_lists(config: AppConfig, tmp_path: Path, verified_days_ago: int | None, error: str | None,
               expected: Status, fragment: str) -> None:
    from schoolgate.lists.state import ListState, state_dir_of

    policy = tmp_path / "policy.toml"
    policy.write_text((REPO / "deploy/policy.example.toml").read_text())
    config = replace(config, policy=policy)
    if verified_days_ago is not None:
        verified = (NOW - dt.timedelta(days=verified_days_ago)).isoformat()
        ListState(state_dir_of(config)).write_manifest({"lists": {"ut1": {
            "version": "ut1-1.sgl", "installed_at": verified, "verified_at": verified, "last_error": error,
            "entries": {"gambling": 10},
        }}})
    (result,) = doctor.check_lists(make_env(config))
    assert result.status is expected and fragment in result.message, result
    if expected is Status.WARN and error is None:
        assert "schoolgate lists update --config" in result.fix


@pytest.mark.parametrize(
    ("seed", "now", "expected"),
    [
        ("aspire-federation", NOW, []),
        # Crockham Hill's "Next Review: Spring 2026" has passed.
        ("crockham-hill", NOW, ["due for review by Friday 27 March 2026"]),
        # 30 days before ASPIRE's last term date (Wednesday 21 July 2027), its review (March 2027) overdue.
        ("aspire-federation", dt.datetime(2027, 6, 21, 9, tzinfo=dt.UTC),
         ["run out on Wednesday 21 July 2027 (in 30 days)", "due for review by Wednesday 31 March 2027"]),
        ("aspire-federation", dt.datetime(2027, 9, 6, 9, tzinfo=dt.UTC),
         ["ended on Wednesday 21 July 2027", "due for review by Wednesday 31 March 2027"]),
    ],
)
def test_policy_upkeep(
    config: AppConfig, tmp_path: Path, seed: str, now: dt.datetime, expected: list[str]
) -> None:
    """The term dates running out and the written policy's review date passing are warnings."""
    policy = tmp_path / "policy.toml"
    shutil.copy(REPO / "deploy" / "policies" / f"{seed}.toml", policy)
    shutil.copytree(REPO / "deploy/lists", tmp_path / "lists", dirs_exist_ok=True)
    env = Env(config=replace(config, policy=policy, network=NetworkConfig(lan_cidrs=[])), now=lambda: now)
    upkeep = [r for r in doctor.check_policy(env) if r.check == "policy upkeep"]
    assert [r.status for r in upkeep] == [Status.WARN] * len(expected)
    for result, words in zip(upkeep, expected, strict=True):
        assert words in result.message and result.fix


# ------------------------------------------------------------------------ the whole run


def test_a_crashing_check_is_reported_and_the_rest_run(config: AppConfig) -> None:
    def broken(env: Env) -> list[doctor.Result]:
        raise RuntimeError("boom")

    def fine(env: Env) -> list[doctor.Result]:
        return [doctor.ok("fine", "all good")]

    results = doctor.run_checks(make_env(config), [("broken", broken), ("fine", fine)])
    assert statuses(results) == [Status.FAIL, Status.OK]
    assert "boom" in results[0].message
    assert doctor.exit_status(results) == 1
    assert doctor.exit_status(results[1:]) == 0
    assert doctor.exit_status([doctor.warn("x", "y", "z")]) == 0


def test_command_line(tmp_path: Path, dns_server: str) -> None:
    """The real command on a config file: one line per result, exit 1 on any FAIL."""
    (tmp_path / "schoolgate.toml").write_text(
        'policy = "policy.toml"\ndata_dir = "data"\n'
        f'[dns]\nlisten = ["{dns_server}"]\nupstreams = ["{dns_server}"]\n'
        f'[proxy]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    program = (
        "import argparse, sys\n"
        "from schoolgate import doctor\n"
        "parser = argparse.ArgumentParser()\n"
        "doctor.register(parser.add_subparsers())\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.func(args))\n"
    )
    argv = ["doctor", "--config", str(tmp_path / "schoolgate.toml"), "--timeout", "0.5"]
    for name in ("dns", "upstream", "proxy"):
        argv += ["--only", name]
    done = subprocess.run([sys.executable, "-c", program, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("OK   dns: answering on 127.0.0.1:")
    assert lines[1].startswith("FAIL proxy: not accepting connections") and " -> sudo systemctl restart" in lines[1]
    assert lines[2].startswith("OK   upstream: 127.0.0.1:")
    assert lines[3] == "3 checks: 1 failed, 0 warnings"

    bad = tmp_path / "bad.toml"
    bad.write_text('policy = "policy.toml"\n[dns]\nlisten = 53\n')
    done = subprocess.run(
        [sys.executable, "-c", program, "doctor", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "dns.listen" in done.stderr


# ------------------------------------------------------------------------ deployment modes


@pytest.mark.parametrize(
    ("mode", "warnings", "words"),
    [
        ("gateway", 0, "every device's router"),
        ("bridge", 2, "bypass switch"),
        ("dns-only", 4, "allow DNS (UDP and TCP port 53) out only from the appliance"),
    ],
)
def test_mode_says_what_the_school_must_do_itself(config: AppConfig, mode: str, warnings: int, words: str) -> None:
    results = doctor.check_mode(make_env(replace(config, network=NetworkConfig(mode=mode))))
    assert results[0].status is Status.OK and results[0].check == "mode"
    assert [r.status for r in results[1:]] == [Status.WARN] * warnings
    assert any(words in r.message or words in r.fix for r in results)
    assert doctor.exit_status(results) == 0  # a mode's known gaps are warnings, not failures


@pytest.mark.parametrize(
    ("mode", "files", "expected", "words"),
    [
        ("dns-only", {}, Status.OK, "not used in dns-only mode"),
        ("bridge", {"net/bridge/bridge-nf-call-iptables": "0\n"}, Status.OK, "skips the IP hooks"),
        ("bridge", {"net/bridge/bridge-nf-call-iptables": "1\n"}, Status.WARN, "conntrack"),
        ("bridge", {}, Status.OK, "no br_netfilter"),
    ],
)
def test_forwarding_in_the_other_modes(
    config: AppConfig, tmp_path: Path, mode: str, files: dict[str, str], expected: Status, words: str
) -> None:
    for name, value in files.items():
        (tmp_path / "sys" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "sys" / name).write_text(value)
    env = make_env(replace(config, network=NetworkConfig(mode=mode)), proc_sys=tmp_path / "sys")
    (result,) = doctor.check_forwarding(env)
    assert result.status is expected and words in result.message


def bridge_nft_json(with_sets: bool) -> str:
    items: list[dict[str, Any]] = [{"metainfo": {"json_schema_version": 1}}]
    if with_sets:
        items += [{"set": {"family": "bridge", "name": s}} for s in ("watched4", "watched6")]
    items += [{"chain": {"family": "bridge", "name": "divert"}}]
    return json.dumps({"nftables": items})


def test_nftables_in_bridge_mode_wants_both_tables_and_the_sets_in_the_bridge_table(config: AppConfig) -> None:
    def run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        family = argv[4]
        if family == "bridge":
            return subprocess.CompletedProcess(list(argv), 0, bridge_nft_json(with_sets=True), "")
        return subprocess.CompletedProcess(list(argv), 0, nft_json([], ["steer", "guard"]), "")

    bridge = replace(config, network=NetworkConfig(mode="bridge"))
    (result,) = doctor.check_nftables(make_env(bridge, run=run, which=lambda name: "/usr/sbin/nft"))
    assert result.status is Status.OK and "bridge schoolgate and inet schoolgate" in result.message

    def missing_inet(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        if argv[4] == "inet":
            return subprocess.CompletedProcess(list(argv), 1, "", "No such file or directory")
        return run(argv, timeout)

    (result,) = doctor.check_nftables(make_env(bridge, run=missing_inet, which=lambda name: "/usr/sbin/nft"))
    assert result.status is Status.FAIL and "inet schoolgate is not loaded" in result.message


@pytest.mark.root
def test_bridge_checks(config: AppConfig, netns: str) -> None:
    """The bridge, both ports with a link, the pinned MAC and the address, as net apply leaves them."""
    for port in ("lan0", "wan0"):
        ns(netns, "ip", "link", "add", port, "type", "veth", "peer", "name", f"{port}peer")
    ns(netns, "ip", "link", "set", "lan0", "address", "02:77:00:00:00:02")
    network = NetworkConfig(mode="bridge", lan_interface="lan0", wan_interface="wan0", bridge_interface="br0",
                            appliance_ipv4="10.77.0.2")
    env = make_env(replace(config, network=network), netns=netns)
    (result,) = doctor.check_interfaces(env)
    assert result.status is Status.FAIL and "school is offline" in result.message  # no bridge at all

    ns(netns, "ip", "link", "add", "br0", "type", "bridge")
    ns(netns, "ip", "link", "set", "br0", "address", "02:77:00:00:00:02")
    for port in ("lan0", "wan0"):
        ns(netns, "ip", "link", "set", port, "master", "br0")
        ns(netns, "ip", "link", "set", port, "up")
    ns(netns, "ip", "link", "set", "lan0peer", "up")  # the switch side has a link; the router side not
    ns(netns, "ip", "link", "set", "br0", "up")
    ns(netns, "ip", "addr", "add", "10.77.0.2/24", "dev", "br0")
    results = doctor.check_bridge(env)
    by_text = {r.message: r.status for r in results}
    assert by_text["lan0 (to the school's switch) is in br0 with a link"] is Status.OK
    assert by_text["wan0 (to the school's router) has no link: traffic cannot cross the bridge"] is Status.FAIL
    assert by_text["br0 has 10.77.0.2"] is Status.OK
    assert any(r.status is Status.WARN and "no default route" in r.message for r in results)

    ns(netns, "ip", "link", "set", "wan0peer", "up")
    ns(netns, "ip", "route", "add", "default", "via", "10.77.0.1")
    assert all(r.status is Status.OK for r in doctor.check_bridge(env)), doctor.check_bridge(env)
    ns(netns, "ip", "link", "set", "br0", "address", "02:77:00:00:00:99")  # the MAC the ruleset uses moved
    assert any(r.status is Status.FAIL and "would not reach the appliance" in r.message
               for r in doctor.check_bridge(env))


def test_the_identity_service_is_checked_once_the_school_feeds_it(database: AppConfig) -> None:
    from schoolgate.config import IdentityConfig
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.models import DaemonStatus

    write_heartbeat(database, "scheduler", NOW)
    assert [r.check for r in doctor.check_heartbeats(make_env(database))] == ["scheduler"]  # nothing configured
    fed = replace(database, identity=IdentityConfig(lease_files=["isc:/var/lib/dhcp/dhcpd.leases"]))
    missing = doctor.check_heartbeats(make_env(fed))
    assert [(r.check, r.status) for r in missing] == [("scheduler", Status.OK), ("identity", Status.FAIL)]
    stats = {"radius": {"dropped": {"bad_authenticator": 3}},
             "lease_files": [{"file": "/x", "problem": "/x: [Errno 2] No such file or directory"}]}
    engine = make_engine(database.database_url)
    with session_factory(engine)() as session:
        session.add(DaemonStatus(site=database.site.id, name="identity", pid=7, started_at=NOW, heartbeat_at=NOW,
                                 stats=json.dumps(stats)))
        session.commit()
    engine.dispose()
    results = doctor.check_heartbeats(make_env(fed))
    assert [(r.check, r.status) for r in results] == [
        ("scheduler", Status.OK), ("identity", Status.OK), ("identity", Status.WARN), ("identity", Status.WARN)]
    assert "3 with the wrong shared secret" in results[2].message and "No such file" in results[3].message
