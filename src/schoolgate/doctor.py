"""`schoolgate doctor`: check a running appliance and say plainly what is wrong and what to do.

Each check is a small function that takes the environment (`Env`: the configuration plus the
few things that reach outside, such as where /proc/sys is and how commands are run) and returns
one or more `Result`s. Every network probe goes to an address the configuration names, so the
checks run unchanged against loopback fakes in the tests.

Exit status: 0 when nothing FAILed (warnings allowed), 1 when anything did, 2 on a bad config.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime as dt
import enum
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schoolgate.config import AppConfig

DEFAULT_CONFIG = "/etc/schoolgate/schoolgate.toml"
NFT_TABLE = "schoolgate"
LOW_DISK_BYTES = 1 << 30
LOW_DISK_FRACTION = 0.10
CA_WARN_DAYS = 90
HEARTBEAT_STALE_S = 180  # daemons write a heartbeat every minute or so; three missed is a fault
# The daemons' heartbeat rows in daemon_status that must be fresh.
HEARTBEAT_DAEMONS = ("scheduler",)


class Status(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Result:
    status: Status
    check: str
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4} {self.check}: {self.message}"
        return f"{text} -> {self.fix}" if self.fix else text


def ok(check: str, message: str) -> Result:
    return Result(Status.OK, check, message)


def warn(check: str, message: str, fix: str) -> Result:
    return Result(Status.WARN, check, message, fix)


def fail(check: str, message: str, fix: str) -> Result:
    return Result(Status.FAIL, check, message, fix)


def _run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class Env:
    """What the checks look at. The defaults are the real appliance; tests replace parts."""

    config: AppConfig
    timeout_s: float = 2.0
    proc_sys: Path = Path("/proc/sys")
    nft_table: str = NFT_TABLE
    run: Callable[[Sequence[str], float], subprocess.CompletedProcess[str]] = _run_command
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    which: Callable[[str], str | None] = shutil.which
    disk_usage: Callable[[Path], Any] = shutil.disk_usage
    netns: str | None = None  # look at the links of this network namespace instead of our own


Check = Callable[[Env], list[Result]]


# ------------------------------------------------------------------------ helpers


def split_hostport(value: str, default_port: int) -> tuple[str, int]:
    """'10.0.0.1:53', '[::1]:53', '10.0.0.1', '::1' -> (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, default_port


def _connect_host(host: str) -> str:
    """A wildcard listen address is reached on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def dns_query(host: str, port: int, name: str, qtype: str, timeout_s: float) -> Any:
    """Send one real DNS query over UDP and return the parsed reply (dnslib DNSRecord)."""
    from dnslib import DNSRecord

    query = DNSRecord.question(name, qtype)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((host, port))
        sock.send(query.pack())
        while True:
            data = sock.recv(65535)
            reply = DNSRecord.parse(data)
            if reply.header.id == query.header.id:
                return reply


# ------------------------------------------------------------------------ network setup


def check_interfaces(env: Env) -> list[Result]:
    from pyroute2 import IPRoute

    network = env.config.network
    if network.mode == "bridge":
        return check_bridge(env)
    name = network.lan_interface
    with IPRoute(netns=env.netns) if env.netns else IPRoute() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            return [
                fail(
                    "interface",
                    f"the LAN interface {name} does not exist",
                    "set network.lan_interface in schoolgate.toml to one `ip link` lists",
                )
            ]
        index = links[0]
        link = ipr.get_links(index)[0]
        up = bool(link["flags"] & 1) and link.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN")
        addresses = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index)}
    results = []
    if up:
        results.append(ok("interface", f"{name} is up"))
    else:
        results.append(
            fail("interface", f"{name} is down (no link?)", f"check the cable, then: sudo ip link set {name} up")
        )
    for wanted in (network.appliance_ipv4, network.appliance_ipv6):
        if not wanted:
            continue
        if wanted in addresses:
            results.append(ok("address", f"{name} has {wanted}"))
        else:
            results.append(
                fail(
                    "address",
                    f"{name} lacks the appliance address {wanted}",
                    "sudo systemctl restart schoolgate-net  (it sets the address)",
                )
            )
    return results


def check_bridge(env: Env) -> list[Result]:
    """Bridge mode: the bridge, its two ports (with a link each) and its address and MAC.

    A port without a link is the whole school offline (router side) or a part of it (switch
    side), so it is a FAIL; the fix says where to look, and the README why to fit a bypass switch.
    """
    from pyroute2 import IPRoute

    network = env.config.network
    bridge_name = network.bridge_interface
    restart = "sudo systemctl restart schoolgate-net  (it builds the bridge)"
    results: list[Result] = []
    with IPRoute(netns=env.netns) if env.netns else IPRoute() as ipr:
        found = ipr.link_lookup(ifname=bridge_name)
        if not found:
            return [fail("bridge", f"the bridge {bridge_name} does not exist: the school is offline", restart)]
        (bridge,) = ipr.get_links(found[0])
        if bridge.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "bridge":
            return [fail("bridge", f"{bridge_name} is not a bridge", "set network.bridge_interface to a free name")]
        bridge_mac = str(bridge.get_attr("IFLA_ADDRESS")).lower()
        sides = ((network.lan_interface, "the school's switch"), (network.wan_interface, "the school's router"))
        for port, side in sides:
            index = ipr.link_lookup(ifname=port)
            if not index:
                results.append(fail("bridge", f"the port {port} (to {side}) does not exist",
                                    "set network.lan_interface / wan_interface to the two ports `ip link` lists"))
                continue
            (link,) = ipr.get_links(index[0])
            if link.get_attr("IFLA_MASTER") != found[0]:
                results.append(fail("bridge", f"{port} (to {side}) is not in {bridge_name}", restart))
            elif link.get_attr("IFLA_OPERSTATE") not in ("UP", "UNKNOWN"):
                results.append(fail("bridge", f"{port} (to {side}) has no link: traffic cannot cross the bridge",
                                    f"check the cable from {port} to {side} and that it is switched on"))
            else:
                results.append(ok("bridge", f"{port} (to {side}) is in {bridge_name} with a link"))
            if port == network.lan_interface and str(link.get_attr("IFLA_ADDRESS")).lower() != bridge_mac:
                results.append(fail("bridge", f"{bridge_name} has the address {bridge_mac}, not {port}'s: "
                                    "diverted DNS and web traffic would not reach the appliance", restart))
        addresses = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=found[0])}
        default = [r for r in ipr.get_routes(family=2, table=254) if r["dst_len"] == 0]
    for wanted in (network.appliance_ipv4, network.appliance_ipv6):
        if wanted and wanted not in addresses:
            results.append(fail("address", f"{bridge_name} lacks the appliance address {wanted}", restart))
        elif wanted:
            results.append(ok("address", f"{bridge_name} has {wanted}"))
    if not default:
        results.append(warn("bridge", "the appliance has no default route: it cannot reach its upstream DNS",
                            "set network.router_ipv4 to the school router's address and restart schoolgate-net"))
    return results


def check_forwarding(env: Env) -> list[Result]:
    mode = env.config.network.mode
    if mode == "bridge":
        return _check_bridge_netfilter(env)
    if mode != "gateway":
        return [ok("forwarding", f"not used in {mode} mode (the school's router forwards)")]
    wanted = [("net/ipv4/ip_forward", "IPv4")]
    if env.config.network.appliance_ipv6:
        wanted.append(("net/ipv6/conf/all/forwarding", "IPv6"))
    results = []
    for key, label in wanted:
        path = env.proc_sys / key
        try:
            value = path.read_text().strip()
        except OSError as err:
            results.append(fail("forwarding", f"cannot read {path}: {err.strerror}", "run doctor on the appliance"))
            continue
        if value == "1":
            results.append(ok("forwarding", f"{label} forwarding is on"))
        else:
            results.append(
                fail(
                    "forwarding",
                    f"{label} forwarding is off: the school cannot reach the internet",
                    "sudo systemctl restart schoolgate-net  (it turns forwarding on)",
                )
            )
    return results


def _check_bridge_netfilter(env: Env) -> list[Result]:
    """Bridged frames should not be handed to the IP hooks (br_netfilter): it costs every frame."""
    path = env.proc_sys / "net/bridge/bridge-nf-call-iptables"
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        return [ok("forwarding", "bridge mode: the kernel bridges without the IP hooks (no br_netfilter)")]
    except OSError as err:
        return [fail("forwarding", f"cannot read {path}: {err.strerror}", "run doctor on the appliance")]
    if value == "0":
        return [ok("forwarding", "bridge mode: bridged traffic skips the IP hooks")]
    return [warn("forwarding", "bridge-nf-call-iptables is on: every bridged frame goes through conntrack",
                 "sudo systemctl restart schoolgate-net  (it turns it off)")]


def check_mode(env: Env) -> list[Result]:
    """The deployment mode in plain words, and each thing it leaves to the school's equipment."""
    from schoolgate.gateway.modes import facts

    mode = facts(env.config.network.mode)
    results = [ok("mode", f"{mode.title}: {mode.summary}")]
    results.extend(warn("mode", gap.what, gap.instead) for gap in mode.gaps)
    return results


def check_nftables(env: Env) -> list[Result]:
    name = "nftables"
    if env.which("nft") is None:
        return [fail(name, "the nft command is missing", "sudo apt-get install nftables")]
    from schoolgate.gateway.sets import WATCHED_V4, WATCHED_V6, watched_family

    mode = env.config.network.mode
    table = env.nft_table
    # Which table must hold the watched sets (none in dns-only mode), and which tables must exist.
    families = ["bridge", "inet"] if mode == "bridge" else ["inet"]
    sets_in = watched_family(mode) if mode != "dns-only" else None
    chains = 0
    sets: set[str] = set()
    for family in families:
        try:
            done = env.run(["nft", "-j", "list", "table", family, table], env.timeout_s * 2)
        except (OSError, subprocess.TimeoutExpired) as err:
            return [fail(name, f"nft did not answer: {err}", "check the kernel's nf_tables support")]
        if done.returncode != 0:
            return [
                fail(
                    name,
                    f"the table {family} {table} is not loaded: nothing is being filtered",
                    "sudo systemctl restart schoolgate-net  (and check `journalctl -u schoolgate-net`)",
                )
            ]
        try:
            items = json.loads(done.stdout).get("nftables", [])
        except ValueError:
            return [fail(name, "nft printed something that is not JSON", "check the nftables package version")]
        chains += sum(1 for i in items if "chain" in i)
        if family == sets_in:
            sets = {i["set"]["name"] for i in items if "set" in i}
            missing = sorted({WATCHED_V4, WATCHED_V6} - sets)
            if missing:
                return [
                    fail(
                        name,
                        f"table {family} {table} lacks the sets {', '.join(missing)}",
                        "sudo systemctl restart schoolgate-net  (reloads the whole ruleset)",
                    )
                ]
    if not chains:
        return [fail(name, f"table inet {table} has no chains", "sudo systemctl restart schoolgate-net")]
    where = " and ".join(f"{family} {table}" for family in families)
    noun = "table" if len(families) == 1 else "tables"
    return [ok(name, f"{noun} {where} loaded ({chains} chains, {len(sets)} sets)")]


def check_policy(env: Env) -> list[Result]:
    """The policy file loads, and its [[networks]] know the LAN (else every device is a stranger)."""
    import ipaddress

    from schoolgate.policy import load_policy
    from schoolgate.tomlpos import ConfigError

    path = env.config.policy
    try:
        policy = load_policy(path)
    except ConfigError as err:
        return [
            fail(
                "policy",
                f"{err}",
                f"fix it, then: schoolgate policy check {path}  (the daemons keep the last good version meanwhile)",
            )
        ]
    results = [ok("policy", f"{path} loads: {len(policy.rules)} rules, {len(policy.networks)} networks")]
    results += _policy_upkeep(env, policy)
    known = [net for network in policy.networks for net in network.networks]
    role = getattr(policy.school.unknown_network_role, "value", policy.school.unknown_network_role)
    for cidr in env.config.network.lan_cidrs:
        try:
            lan = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            continue
        if not any(lan.version == net.version and lan.overlaps(net) for net in known):
            results.append(
                warn(
                    "policy",
                    f"no [[networks]] in the policy cover the LAN {lan}: every device there is treated as {role}",
                    f"add the LAN's ranges under [[networks]] in {path.name} with their roles",
                )
            )
    return results


def check_lists(env: Env) -> list[Result]:
    """Every subscription has a version, confirmed current within [lists] stale_days days."""
    from schoolgate.lists.state import ListStateError
    from schoolgate.lists.status import FAILING, MISSING, STALE, read_statuses
    from schoolgate.tomlpos import ConfigError

    config = env.config
    command = f"schoolgate lists update --config {config.source}"
    try:
        statuses = read_statuses(config, env.now())
    except ConfigError:
        return []  # the policy check says what is wrong with the file
    except ListStateError as err:
        return [fail("lists", str(err), f"move the damaged manifest aside, then: {command}")]
    results: list[Result] = []
    for status in statuses:
        if status.kind == "file":
            continue
        if status.state == MISSING:
            results.append(warn("lists", status.describe() + "; its categories are not filled from it",
                                f"{command}  (or schoolgate lists import for an appliance without internet)"))
        elif status.state == STALE:
            results.append(warn("lists", status.describe() + f"; older than {config.lists.stale_days} days",
                                f"check the appliance reaches {status.source}, then: {command}"))
        elif status.state == FAILING:
            results.append(warn("lists", status.describe(), "the version in force still applies; see the error"))
        else:
            results.append(ok("lists", status.describe()))
    return results


def _policy_upkeep(env: Env, policy: Any) -> list[Result]:
    """Term dates about to run out and a written policy past its review date (policy.upkeep)."""
    from schoolgate.policy.upkeep import REVIEW, upkeep_warnings

    today = env.now().astimezone(policy.school.zone).date()
    name = env.config.policy.name
    fixes = {REVIEW: f"review the school's policy, then update {name} and its [document] review_by"}
    check = f"edit {name}, then: schoolgate policy check {env.config.policy}"
    return [
        warn("policy upkeep", warning.message, fixes.get(warning.kind, check))
        for warning in upkeep_warnings(policy, today)
    ]


# ------------------------------------------------------------------------ daemons


def check_dns(env: Env) -> list[Result]:
    name = env.config.dns.names[0] if env.config.dns.names else "schoolgate.lan"
    results = []
    for listen in env.config.dns.listen:
        host, port = split_hostport(listen, 53)
        host = _connect_host(host)
        try:
            reply = dns_query(host, port, name, "A", env.timeout_s)
        except (OSError, ValueError) as err:
            results.append(
                fail(
                    "dns",
                    f"no answer on {listen} ({err})",
                    "sudo systemctl restart schoolgate-dns; journalctl -u schoolgate-dns",
                )
            )
            continue
        rcode = reply.header.rcode
        if rcode == 2:  # SERVFAIL: the daemon answers but cannot resolve
            results.append(warn("dns", f"{listen} answers SERVFAIL for {name}", "check the upstream DNS results below"))
        else:
            results.append(ok("dns", f"answering on {listen}"))
    return results


def _http_status(url: str, timeout_s: float) -> int:
    import http.client
    import ssl
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        # The console's certificate comes from the school CA; doctor asks "is it up?", not "is
        # the certificate trusted here?", so it does not verify.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/", headers={"User-Agent": "schoolgate-doctor"})
        return conn.getresponse().status
    finally:
        conn.close()


# A console asleep (socket-activated: schoolgate-console.socket, or `schoolgate run`) answers
# doctor's request once it has started, a new Python process under systemd: on a Raspberry Pi
# that takes seconds, which is not a fault.
CONSOLE_WAKE_S = 30.0


def check_console(env: Env) -> list[Result]:
    console = env.config.console
    host, port = split_hostport(console.listen, 8443)
    host = _connect_host(host)
    scheme = "http" if console.plain_http else "https"
    shown = f"[{host}]" if ":" in host else host
    base = f"{scheme}://{shown}:{port}"
    timeout_s = max(env.timeout_s, CONSOLE_WAKE_S) if console.idle_minutes > 0 else env.timeout_s
    try:
        status = _http_status(base + "/healthz", timeout_s)
        path = "/healthz"
        if status == 404:  # an older console without a health endpoint: its login page will do
            status = _http_status(base + "/login", timeout_s)
            path = "/login"
    except (OSError, ValueError) as err:
        return [
            fail(
                "console",
                f"not answering on {console.listen} ({err})",
                "sudo systemctl restart schoolgate-console; journalctl -u schoolgate-console",
            )
        ]
    if status >= 500 or status == 404:
        return [fail("console", f"GET {path} gave HTTP {status}", "journalctl -u schoolgate-console")]
    on_demand = f"; started on demand, asleep after {console.idle_minutes:g} idle minutes" \
        if console.idle_minutes > 0 else ""
    return [ok("console", f"answering on {console.listen} (GET {path}: {status}){on_demand}")]


def check_proxy(env: Env) -> list[Result]:
    listen = env.config.proxy.listen
    host, port = split_hostport(listen, 8081)
    try:
        with socket.create_connection((_connect_host(host), port), timeout=env.timeout_s):
            pass
    except OSError as err:
        return [
            fail(
                "proxy",
                f"not accepting connections on {listen} ({err.strerror or err})",
                "sudo systemctl restart schoolgate-proxy; journalctl -u schoolgate-proxy",
            )
        ]
    return [ok("proxy", f"accepting connections on {listen}")]


def check_heartbeats(env: Env) -> list[Result]:
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.identity.daemon import has_something_to_receive
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.events import read_status

    url = env.config.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        # Connecting would create an empty database file owned by whoever runs doctor.
        return [
            fail(
                "heartbeat",
                "there is no database yet, so no daemon has reported",
                f"sudo schoolgate db upgrade --config {env.config.source}",
            )
        ]
    engine = make_engine(url)
    try:
        with session_factory(engine, readonly=True)() as session:
            status = read_status(session, env.config.site.id)
    except SQLAlchemyError as err:
        return [
            fail(
                "heartbeat",
                f"cannot read daemon_status: {err.__class__.__name__}",
                f"sudo schoolgate db upgrade --config {env.config.source}",
            )
        ]
    finally:
        engine.dispose()
    results = []
    now = env.now()
    identity = env.config.identity
    # The identity service matters once the school's systems feed it (leases, Wi-Fi sign-ins).
    wanted = (*HEARTBEAT_DAEMONS, "identity") if has_something_to_receive(identity) else HEARTBEAT_DAEMONS
    for daemon in wanted:
        row = status.get(daemon)
        unit = f"schoolgate-{daemon}"
        if row is None:
            results.append(fail(daemon, "has never reported a heartbeat", f"sudo systemctl start {unit}"))
            continue
        age = (now - row["heartbeat_at"]).total_seconds()
        if age > HEARTBEAT_STALE_S:
            results.append(
                fail(
                    daemon,
                    f"last heartbeat {int(age)} s ago (pid {row['pid']})",
                    f"sudo systemctl restart {unit}; journalctl -u {unit}",
                )
            )
        else:
            results.append(ok(daemon, f"heartbeat {max(0, int(age))} s ago"))
            if daemon == "identity":
                results.extend(_identity_findings(row["stats"]))
    return results


def _identity_findings(stats: dict[str, Any]) -> list[Result]:
    """What the identity service's own counters say needs a technician's eye."""
    found = []
    dropped = (stats.get("radius") or {}).get("dropped") or {}
    if dropped.get("bad_authenticator") or dropped.get("unknown_client"):
        found.append(warn(
            "identity",
            f"RADIUS packets dropped: {dropped.get('bad_authenticator', 0)} with the wrong shared secret, "
            f"{dropped.get('unknown_client', 0)} from addresses not in identity.radius_clients",
            "make the Wi-Fi controller's accounting secret match identity.radius_secret_file, and list its address",
        ))
    for followed in stats.get("lease_files") or []:
        if followed.get("problem"):
            found.append(warn("identity", f"lease file {followed['problem']}",
                              "check the path in identity.lease_files and that the export still runs"))
    return found


# ------------------------------------------------------------------------ storage


def check_database(env: Env) -> list[Result]:
    url = env.config.database_url
    if not url.startswith("sqlite:///"):
        return [_check_database_server(url)]
    path = Path(url.removeprefix("sqlite:///"))
    results = [_check_sqlite_writable(env, path)]
    existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("/"))
    results.append(_check_disk(existing, env.disk_usage))
    return results


def _check_database_server(url: str) -> Result:
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as err:
        return fail("database", f"cannot connect: {err.__class__.__name__}", "check database.url and the server")
    finally:
        engine.dispose()
    return ok("database", f"{engine.url.render_as_string(hide_password=True)} answers")


def _check_sqlite_writable(env: Env, path: Path) -> Result:
    import sqlite3

    if not path.exists():
        return fail("database", f"{path} does not exist", f"sudo schoolgate db upgrade --config {env.config.source}")
    try:
        # BEGIN IMMEDIATE takes the write lock, exactly what a daemon's event flush needs.
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        finally:
            conn.close()
    except sqlite3.Error as err:
        return fail(
            "database",
            f"{path} is not writable ({err})",
            f"check ownership and mode: sudo chgrp schoolgate {path}* && sudo chmod 0660 {path}*",
        )
    return ok("database", f"{path} is writable")


def _check_disk(directory: Path, disk_usage: Callable[[Path], Any]) -> Result:
    usage = disk_usage(directory)
    free_gib = usage.free / (1 << 30)
    fraction = usage.free / usage.total if usage.total else 0.0
    text = f"{free_gib:.1f} GiB free ({fraction:.0%}) for {directory}"
    if usage.free < LOW_DISK_BYTES // 8:
        return fail("disk", text, "free space now: the event log stops when the disk is full")
    if usage.free < LOW_DISK_BYTES or fraction < LOW_DISK_FRACTION:
        return warn("disk", text, "free space, or shorten [retention] in schoolgate.toml")
    return ok("disk", text)


# ------------------------------------------------------------------------ outside world


def check_upstreams(env: Env) -> list[Result]:
    upstreams = env.config.dns.upstreams
    if not upstreams:
        return [fail("upstream", "no upstream DNS servers configured", "set dns.upstreams in schoolgate.toml")]
    results = []
    for upstream in upstreams:
        host, port = split_hostport(upstream, 53)
        try:
            reply = dns_query(host, port, ".", "NS", env.timeout_s)
        except (OSError, ValueError) as err:
            results.append(
                fail(
                    "upstream",
                    f"{upstream} does not answer ({err})",
                    "check the WAN link, or replace it in dns.upstreams",
                )
            )
            continue
        if reply.header.rcode in (0, 3):
            results.append(ok("upstream", f"{upstream} answers"))
        else:
            results.append(
                warn(
                    "upstream",
                    f"{upstream} answers with rcode {reply.header.rcode}",
                    "ask the ISP whether this resolver serves the school",
                )
            )
    if results and all(r.status is Status.FAIL for r in results):
        return results
    # One working upstream keeps the school online: the others are warnings.
    return [Result(Status.WARN, r.check, r.message, r.fix) if r.status is Status.FAIL else r for r in results]


def check_illegal_content(env: Env) -> list[Result]:
    """Which resolver carries the IWF and CTIRU lists, and whether each of its addresses answers."""
    from schoolgate.services.illegal_content import setting_of

    setting = setting_of(env.config)
    if not setting.configured:
        return [warn(
            "illegal-content",
            "no resolver carrying the IWF and CTIRU lists is configured; schoolgate cannot ship those lists, "
            "so illegal content is left to the ISP's own filtering",
            "ask the ISP for its filtered (IWF member) resolver and set [dns] illegal_content_provider "
            "and illegal_content_upstream in schoolgate.toml",
        )]
    provider = setting.provider or "an unnamed provider"
    results: list[Result] = []
    for upstream in setting.upstreams:
        host, port = split_hostport(upstream, 53)
        try:
            reply = dns_query(host, port, "www.iwf.org.uk", "A", env.timeout_s)
        except (OSError, ValueError) as err:
            results.append(fail(
                "illegal-content",
                f"{provider}: {upstream} does not answer ({err}); every DNS query goes through it",
                "check the WAN link and the address with the provider",
            ))
            continue
        if reply.header.rcode in (0, 3):
            results.append(ok("illegal-content", f"{provider}: {upstream} answers (IWF and CTIRU lists applied "
                                                 "there; every DNS query goes through it)"))
        else:
            results.append(warn("illegal-content", f"{provider}: {upstream} answers with rcode {reply.header.rcode}",
                                "ask the provider whether this resolver serves the school"))
    if not env.config.dns.illegal_content_provider.strip():
        results.append(warn("illegal-content", "the provider is not named", "set [dns] illegal_content_provider"))
    return results


def check_ca(env: Env) -> list[Result]:
    from cryptography import x509

    ca_dir = Path(env.config.proxy.ca_dir) if env.config.proxy.ca_dir else env.config.data_dir / "ca"
    cert_path = ca_dir / "mitmproxy-ca-cert.pem"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        return [
            fail(
                "ca",
                f"{cert_path} is missing",
                f"sudo schoolgate ca init --config {env.config.source} --owner schoolgate-proxy",
            )
        ]
    except PermissionError:
        return [fail("ca", f"cannot read {cert_path}", "run doctor with sudo")]
    except ValueError:
        return [fail("ca", f"{cert_path} is not a PEM certificate", "restore the CA from a backup")]
    left = cert.not_valid_after_utc - env.now()
    if left.total_seconds() <= 0:
        return [
            fail(
                "ca",
                f"the school CA expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                "create a new CA (ca init --force) and install it on every device",
            )
        ]
    if left.days < CA_WARN_DAYS:
        return [
            warn(
                "ca",
                f"the school CA expires in {left.days} days ({cert.not_valid_after_utc:%Y-%m-%d})",
                "plan a new CA now: every device that trusts it must get the new one",
            )
        ]
    if not (ca_dir / "mitmproxy-ca.pem").exists():
        return [
            fail("ca", f"the CA's private key {ca_dir / 'mitmproxy-ca.pem'} is missing", "restore the CA from a backup")
        ]
    return [ok("ca", f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")]


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>: mode, then the fields up to status; the tail is padding.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_byte * 256),
    ]


STA_UNSYNC = 0x0040
TIME_ERROR = 5


def kernel_clock_synchronised() -> bool | None:
    """The kernel's own view (adjtimex): set by NTP daemons (chrony, timesyncd, ntpd)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    timex = _Timex()
    state = libc.adjtimex(ctypes.byref(timex))  # modes = 0: read only
    if state < 0:
        return None
    return state != TIME_ERROR and not timex.status & STA_UNSYNC


def check_clock(env: Env) -> list[Result]:
    fix = "enable NTP: sudo timedatectl set-ntp true (and let the appliance reach an NTP server)"
    why = "school-hours rules depend on the time"
    if env.which("timedatectl"):
        try:
            done = env.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], env.timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip() in ("yes", "no"):
            if done.stdout.strip() == "yes":
                return [ok("clock", "synchronised (timedatectl)")]
            return [fail("clock", f"not synchronised: {why}", fix)]
    synced = kernel_clock_synchronised()
    if synced is None:
        return [warn("clock", "cannot tell whether the clock is synchronised", "install chrony or systemd-timesyncd")]
    if synced:
        return [ok("clock", "synchronised (kernel)")]
    return [fail("clock", f"not synchronised: {why}", fix)]


def check_mail(env: Env) -> list[Result]:
    import smtplib

    mail = env.config.mail
    if not mail.host:
        return [
            warn(
                "mail",
                "no mail relay configured: digests and alerts are not e-mailed",
                "set [mail] host in schoolgate.toml",
            )
        ]
    where = f"{mail.host}:{mail.port}"
    try:
        with smtplib.SMTP(mail.host, mail.port, timeout=env.timeout_s) as smtp:
            code, _ = smtp.ehlo()
            if code != 250:
                return [fail("mail", f"{where} refused EHLO ({code})", "check the relay allows this appliance")]
            if mail.starttls and not smtp.has_extn("starttls"):
                return [fail("mail", f"{where} does not offer STARTTLS", "set mail.starttls = false or fix the relay")]
    except (OSError, smtplib.SMTPException) as err:
        return [fail("mail", f"cannot reach the relay {where} ({err})", "check [mail] host and port, and the firewall")]
    return [ok("mail", f"relay {where} answers")]


def check_concerns(env: Env) -> list[Result]:
    """Seed 001 §8: a concern about the headteacher goes to the chair of governors or trustees."""
    if env.config.mail.chair_of_governors.strip():
        return [ok("concerns", f"concerns about the headteacher go to {env.config.mail.chair_of_governors.strip()}")]
    return [
        warn(
            "concerns",
            "no chair of governors is set: a concern about the headteacher is e-mailed to the DSL instead",
            "set [mail] chair_of_governors to the chair's e-mail address in schoolgate.toml",
        )
    ]


CHECKS: tuple[tuple[str, Check], ...] = (
    ("mode", check_mode),
    ("interface", check_interfaces),
    ("forwarding", check_forwarding),
    ("nftables", check_nftables),
    ("policy", check_policy),
    ("lists", check_lists),
    ("dns", check_dns),
    ("proxy", check_proxy),
    ("console", check_console),
    ("heartbeat", check_heartbeats),
    ("database", check_database),
    ("upstream", check_upstreams),
    ("illegal-content", check_illegal_content),
    ("ca", check_ca),
    ("clock", check_clock),
    ("mail", check_mail),
    ("concerns", check_concerns),
)


def run_checks(env: Env, checks: Sequence[tuple[str, Check]] = CHECKS) -> list[Result]:
    results: list[Result] = []
    for name, check in checks:
        try:
            results.extend(check(env))
        except Exception as err:  # a check that crashes is itself a finding, never the end of the run
            results.append(
                fail(
                    name,
                    f"the check itself failed: {err.__class__.__name__}: {err}",
                    "report this; the other checks still ran",
                )
            )
    return results


def exit_status(results: Sequence[Result]) -> int:
    return 1 if any(r.status is Status.FAIL for r in results) else 0


# ------------------------------------------------------------------------ command line


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("doctor", help="check a running appliance and say what to fix")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"the appliance's schoolgate.toml ({DEFAULT_CONFIG})")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="CHECK",
        choices=[name for name, _ in CHECKS],
        help="run only these checks (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each probe")
    parser.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from schoolgate.config import load_config
    from schoolgate.tomlpos import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"FAIL config: {err}", file=sys.stderr)
        return 2
    env = Env(config=config, timeout_s=args.timeout)
    checks = [c for c in CHECKS if not args.only or c[0] in args.only]
    results = run_checks(env, checks)
    for result in results:
        print(result.line())
    failed = sum(r.status is Status.FAIL for r in results)
    warned = sum(r.status is Status.WARN for r in results)
    print(f"{len(results)} checks: {failed} failed, {warned} warnings" if results else "no checks ran")
    if os.geteuid() != 0 and failed:
        print("(some checks read files only root may read; run with sudo if in doubt)")
    return exit_status(results)
