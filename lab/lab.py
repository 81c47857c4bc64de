"""The network lab: a school LAN, the appliance and an internet, in network namespaces.

Gateway topology (today's appliance, `[network] mode = "gateway"`):

    <prefix>-pupil, -pupilca, -staff, -guest, -sup   devices, each on a veth into the gateway's
                                                      LAN bridge (10.41.0.0/16)
    <prefix>-gw    the gateway: br-lan 10.41.0.1, wan0 203.0.113.1; runs the real appliance
                   daemons (dns, proxy, console, scheduler, net watch) under `schoolgate run`,
                   which restarts any that dies, and the real `schoolgate net apply`
    <prefix>-net   the internet: authoritative DNS 203.0.113.53 and the websites (lab.internet)

Bridge topology: devices -- <prefix>-sw (a switch) -- lan0 [<prefix>-gw: br0 10.41.0.2] wan0 --
<prefix>-rtr (the school's router: 10.41.0.1, NAT to 203.0.113.1) -- <prefix>-net. The devices
keep the router as gateway and DNS server.

DNS-only topology: devices, the router's LAN side and the appliance (eth0 10.41.0.2) all on
<prefix>-sw; the devices' DNS server is the appliance, their gateway the router. A phone on a
routed Wi-Fi network (10.42.0.0/24, the router's wifi0) reaches the appliance only through
the router.

State (PIDs with their start times, paths) lives in a state directory, so `down` and
`status` work from another process. Everything `up` creates is removed by `down`, and by
`up` itself if it fails half way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from schoolgate.clock import set_clock_file
from schoolgate.lab import netns
from schoolgate.lab.internet import (
    ALL_IPS,
    ANY_NAME_PREFIX,
    DOH_IP,
    GATEWAY_WAN_IP,
    INTERNET_IP,
    MAIL_IP,
    MAIL_PORT,
    OTHER_NAMES,
    RESOLVER_IP,
    SITES,
)
from schoolgate.lab.netns import LabError
from schoolgate.lab.pki import LabCA
from schoolgate.lab.topology import (
    DEVICES,
    DNS_PORT,
    GATEWAY_LAN_IP,
    LAN_BRIDGE,
    LAN_CIDR,
    LAN_PREFIXLEN,
    NFLOG_GROUP,
    PROXY_PORT,
    ROUTED_PREFIXLEN,
    ROUTED_ROUTER_IP,
    UPSTREAM_DNS,
    WAN_INTERFACE,
    WAN_PREFIXLEN,
    LabDevice,
    LabNames,
    Topology,
    device,
    topology,
)

log = logging.getLogger(__name__)

DEFAULT_STATE_ROOT = Path("/run/schoolgate-lab")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_POLICY = REPO_ROOT / "deploy" / "policy.example.toml"
# `python -P`: never put the working directory on sys.path. Started from a checkout, the
# project's top-level `dns/` folder would otherwise shadow dnspython.
# A Monday in the autumn term, mid-morning: lessons are on.
DEFAULT_CLOCK = "2026-11-23T10:15:00+00:00"
SITE_ID = "kingswood"  # the example policy's school
SITE_NAME = "Kingswood Primary School"
# Meta's published ranges, as a school would list them in network.watched_prefixes.
META_PREFIXES = ("203.0.113.10/32", "203.0.113.11/32")
DAEMONS = ("dns", "proxy", "console", "scheduler", "watch", "identity")
SUPERVISOR = "appliance"  # `schoolgate run` in the gateway: the daemons are its children
SUPERVISOR_GRACE_S = 12.0
START_FAILURES = 3  # a daemon that dies this often while the lab starts will not come up
CONSOLE_PORT = 8443
RADIUS_PORT = 1813


@dataclass
class LabState:
    prefix: str
    state_dir: str
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {pid, start, ns, log}
    config: str = ""
    clock_file: str = ""
    public_ca: str = ""
    school_ca: str = ""
    database_url: str = ""
    daemons: bool = True
    topology: str = "gateway"
    extra_devices: list[str] = field(default_factory=list)  # keys of devices attached after `up`
    # Seconds from each daemon's process start to its first sign of serving, as the lab came up.
    first_start_s: dict[str, float] = field(default_factory=dict)

    def save(self) -> None:
        path = Path(self.state_dir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, state_dir: Path) -> LabState | None:
        path = state_dir / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))


class Lab:
    """Build, run and tear down one lab. `prefix` keeps labs apart (tests use their own)."""

    def __init__(
        self,
        prefix: str = "sg",
        *,
        state_root: Path = DEFAULT_STATE_ROOT,
        policy: Path = DEFAULT_POLICY,
        daemons: bool = True,
        python: str = sys.executable,
        dns_workers: int = 1,
        proxy_workers: int = 1,  # several: the lab client's proxy_stats reads worker 1's only
        topology: str | None = None,
        console_idle_minutes: float | None = None,  # None: the appliance's default
    ) -> None:
        self.names = LabNames(prefix)
        self.state_dir = state_root / prefix
        self.policy = policy
        self.with_daemons = daemons
        self.python = python
        self.dns_workers = dns_workers
        self.proxy_workers = proxy_workers
        self.console_idle_minutes = console_idle_minutes
        self.state = LabState.load(self.state_dir) or LabState(prefix, str(self.state_dir))
        # A lab that is up keeps its topology for `down`, `status` and the device commands.
        self.wiring: Topology = _topology(topology or self.state.topology)

    @property
    def appliance_ip(self) -> str:
        """The appliance's LAN address: its DNS, proxy, console and block page."""
        return self.wiring.appliance_ip

    @property
    def console_url(self) -> str:
        return f"http://{self.appliance_ip}:{CONSOLE_PORT}"

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.state_dir / "schoolgate.toml"

    @property
    def clock_path(self) -> Path:
        return self.state_dir / "clock"

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def public_ca(self) -> Path:
        return self.state_dir / "pki" / "public-ca.pem"

    @property
    def school_ca(self) -> Path:
        return self.state_dir / "ca" / "mitmproxy-ca-cert.pem"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'schoolgate.db'}"

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    # ------------------------------------------------------------------ up

    def up(self, clock: str = DEFAULT_CLOCK) -> LabState:
        if self.state.namespaces and any(netns.exists(n) for n in self.state.namespaces):
            raise LabError(f"lab {self.names.prefix!r} is already up (run `schoolgate lab down` first)")
        leftovers = [n for n in self.names.all() if netns.exists(n)]
        if leftovers:
            raise LabError(f"namespaces already exist: {', '.join(leftovers)}; remove them or use --prefix")
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        (self.state_dir / "logs").mkdir(parents=True)
        self.data_dir.mkdir()
        self.state = LabState(self.names.prefix, str(self.state_dir), daemons=self.with_daemons,
                              topology=self.wiring.name)
        try:
            set_clock_file(self.clock_path, datetime.fromisoformat(clock))
            self._build_network()
            self._start_internet()
            self._write_config()
            if self.with_daemons:
                # The register first: `net apply` pins the registered devices' neighbours.
                self._prepare_store()
            self._run_schoolgate(["net", "apply", "--config", str(self.config_path)])
            if self.with_daemons:
                self._start_daemons()
            self.state.save()
        except BaseException:
            log.exception("lab up failed; tearing down")
            self.down()
            raise
        return self.state

    def _build_network(self) -> None:
        if self.wiring.name == "bridge":
            self._build_bridge()
        elif self.wiring.name == "dns-only":
            self._build_dns_only()
        else:
            self._build_gateway()

    def _namespace(self, name: str, nameserver: str | None = None) -> None:
        netns.add(name, nameserver=nameserver)
        self.state.namespaces.append(name)
        self.state.save()

    def _build_internet_link(self, edge: str) -> None:
        """The internet namespace and its link to `edge` (the gateway, or the school's router)."""
        internet = self.names.internet
        self._namespace(internet)
        netns.ip("link", "add", WAN_INTERFACE, "netns", edge, "type", "veth", "peer", "name", "eth0", "netns", internet)
        netns.exec_in(internet, ["ip", "addr", "add", f"{INTERNET_IP}/{WAN_PREFIXLEN}", "dev", "eth0"])
        for address in ALL_IPS:
            netns.exec_in(internet, ["ip", "addr", "add", f"{address}/32", "dev", "eth0"])
        netns.exec_in(internet, ["ip", "link", "set", "eth0", "up"])
        # Every other name's address: the whole range is local here (servers bind 0.0.0.0).
        netns.exec_in(internet, ["ip", "route", "add", "local", ANY_NAME_PREFIX, "dev", "lo"])
        netns.exec_in(internet, ["ip", "route", "add", "default", "via", GATEWAY_WAN_IP])
        netns.exec_in(edge, ["ip", "addr", "add", f"{GATEWAY_WAN_IP}/{WAN_PREFIXLEN}", "dev", WAN_INTERFACE])
        netns.exec_in(edge, ["ip", "link", "set", WAN_INTERFACE, "up"])
        netns.exec_in(edge, ["ip", "route", "add", "default", "via", INTERNET_IP])

    def _add_device(self, index: int, item: LabDevice, attach: str, bridge: str) -> None:
        """A device namespace on a veth into `bridge` in namespace `attach`."""
        ns = self.names.device(item.key)
        self._namespace(ns, nameserver=self.wiring.device_dns)
        port = f"lan{index}"
        netns.ip("link", "add", port, "netns", attach, "type", "veth", "peer", "name", "eth0", "netns", ns)
        netns.exec_in(attach, ["ip", "link", "set", port, "master", bridge])
        netns.exec_in(attach, ["ip", "link", "set", port, "up"])
        netns.exec_in(ns, ["ip", "link", "set", "eth0", "address", item.mac])
        netns.exec_in(ns, ["ip", "addr", "add", f"{item.ip}/{LAN_PREFIXLEN}", "dev", "eth0"])
        netns.exec_in(ns, ["ip", "link", "set", "eth0", "up"])
        netns.exec_in(ns, ["ip", "route", "add", "default", "via", self.wiring.device_gateway])

    def _build_gateway(self) -> None:
        gw = self.names.gateway
        self._namespace(gw)
        self._build_internet_link(gw)
        # LAN: a bridge in the gateway; `schoolgate net apply` gives it its address.
        netns.exec_in(gw, ["ip", "link", "add", LAN_BRIDGE, "type", "bridge"])
        netns.exec_in(gw, ["ip", "link", "set", LAN_BRIDGE, "up"])
        for index, item in enumerate(self.wiring.devices):
            self._add_device(index, item, gw, LAN_BRIDGE)

    def _build_router_and_switch(self) -> None:
        """The school's own router (NAT to the internet) and a switch for the devices."""
        router, switch = self.names.router, self.names.switch
        self._namespace(router)
        self._build_internet_link(router)
        netns.exec_in(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        netns.run(["ip", "netns", "exec", router, "nft", "-f", "-"], input_text=(
            "table ip labrouter {\n"
            "\tchain egress { type nat hook postrouting priority srcnat; policy accept; "
            f'oifname "{WAN_INTERFACE}" masquerade; }}\n}}\n'
        ))
        self._namespace(switch)
        netns.exec_in(switch, ["ip", "link", "add", LAN_BRIDGE, "type", "bridge"])
        netns.exec_in(switch, ["ip", "link", "set", LAN_BRIDGE, "up"])
        for index, item in enumerate(d for d in self.wiring.devices if not d.routed):
            self._add_device(index, item, switch, LAN_BRIDGE)

    def _build_bridge(self) -> None:
        """switch -- lan0 [appliance br0] wan0 -- router: `net apply` makes the bridge."""
        self._build_router_and_switch()
        gw, router, switch = self.names.gateway, self.names.router, self.names.switch
        self._namespace(gw)
        netns.ip("link", "add", "uplink", "netns", switch, "type", "veth", "peer", "name", "lan0", "netns", gw)
        netns.exec_in(switch, ["ip", "link", "set", "uplink", "master", LAN_BRIDGE])
        netns.exec_in(switch, ["ip", "link", "set", "uplink", "up"])
        netns.ip("link", "add", "wan0", "netns", gw, "type", "veth", "peer", "name", "lan", "netns", router)
        netns.exec_in(router, ["ip", "addr", "add", f"{self.wiring.device_gateway}/{LAN_PREFIXLEN}", "dev", "lan"])
        netns.exec_in(router, ["ip", "link", "set", "lan", "up"])

    def _build_dns_only(self) -> None:
        """The appliance is one more host on the switch; a phone sits behind the router."""
        self._build_router_and_switch()
        gw, router, switch = self.names.gateway, self.names.router, self.names.switch
        self._namespace(gw)
        for peer, name, address in ((router, "lan", self.wiring.device_gateway), (gw, "eth0", None)):
            netns.ip("link", "add", f"to-{name}", "netns", switch, "type", "veth", "peer", "name", name, "netns", peer)
            netns.exec_in(switch, ["ip", "link", "set", f"to-{name}", "master", LAN_BRIDGE])
            netns.exec_in(switch, ["ip", "link", "set", f"to-{name}", "up"])
            if address:
                netns.exec_in(peer, ["ip", "addr", "add", f"{address}/{LAN_PREFIXLEN}", "dev", name])
                netns.exec_in(peer, ["ip", "link", "set", name, "up"])
        netns.exec_in(router, ["ip", "link", "add", "wifi", "type", "bridge"])
        netns.exec_in(router, ["ip", "addr", "add", f"{ROUTED_ROUTER_IP}/{ROUTED_PREFIXLEN}", "dev", "wifi"])
        netns.exec_in(router, ["ip", "link", "set", "wifi", "up"])
        for index, item in enumerate(d for d in self.wiring.devices if d.routed):
            ns = self.names.device(item.key)
            self._namespace(ns, nameserver=self.wiring.device_dns)
            port = f"wifi{index}"
            netns.ip("link", "add", port, "netns", router, "type", "veth", "peer", "name", "eth0", "netns", ns)
            netns.exec_in(router, ["ip", "link", "set", port, "master", "wifi"])
            netns.exec_in(router, ["ip", "link", "set", port, "up"])
            netns.exec_in(ns, ["ip", "link", "set", "eth0", "address", item.mac])
            netns.exec_in(ns, ["ip", "addr", "add", f"{item.ip}/{ROUTED_PREFIXLEN}", "dev", "eth0"])
            netns.exec_in(ns, ["ip", "link", "set", "eth0", "up"])
            netns.exec_in(ns, ["ip", "route", "add", "default", "via", ROUTED_ROUTER_IP])

    def _start_internet(self) -> None:
        ca = LabCA(self.state_dir / "pki")
        ca.ensure()
        certs = {}
        for site in SITES:
            issued = ca.issue(site.label, site.names)
            certs[site.label] = (str(issued.cert_path), str(issued.key_path))
        other = ca.issue("other", OTHER_NAMES)
        certs["other"] = (str(other.cert_path), str(other.key_path))
        (self.state_dir / "internet.json").write_text(json.dumps({"certs": certs}))
        self.state.public_ca = str(ca.cert_path)
        self._spawn("internet", self.names.internet,
                    [self.python, "-P", "-m", "schoolgate.lab.internet", str(self.state_dir)])
        netns.wait_for(lambda: (self.state_dir / "internet.ready").exists() or self._died("internet"),
                       timeout=20, what="the lab internet to start")
        self._check_alive("internet")

    def _network_section(self) -> str:
        common = (
            f'lan_cidrs = ["{LAN_CIDR}"]\n'
            f"watched_prefixes = {json.dumps(list(META_PREFIXES))}\n"
            f'doh_addresses = ["{RESOLVER_IP}", "{DOH_IP}"]\n'
            f"nflog_group = {NFLOG_GROUP}\n"
        )
        if self.wiring.name == "bridge":
            return (
                'mode = "bridge"\nlan_interface = "lan0"  # the port facing the switch\n'
                'wan_interface = "wan0"  # the port facing the router\nbridge_interface = "br0"\n'
                f'router_ipv4 = "{self.wiring.device_gateway}"\nappliance_ipv4 = "{self.appliance_ip}"\n' + common
            )
        if self.wiring.name == "dns-only":
            return (
                f'mode = "dns-only"\nlan_interface = "eth0"\nrouter_ipv4 = "{self.wiring.device_gateway}"\n'
                f'appliance_ipv4 = "{self.appliance_ip}"\n' + common
            )
        return (
            f'lan_interface = "{LAN_BRIDGE}"\nwan_interface = "{WAN_INTERFACE}"\n'
            f'appliance_ipv4 = "{GATEWAY_LAN_IP}"\n' + common
        )

    @property
    def radius_secret(self) -> bytes:
        return b"lab-wifi-controller-secret"

    @property
    def lease_file(self) -> Path:
        """dns-only: the school DHCP server's lease file (ISC format), which the lab writes."""
        return self.state_dir / "dhcpd.leases"

    @property
    def identity_configured(self) -> bool:
        """Whether the identity service has anything to receive here (lease files, RADIUS); when
        not, `schoolgate run` does not start it."""
        return self.wiring.name == "dns-only"

    def _identity_section(self) -> str:
        """dns-only: the router is also the Wi-Fi controller (RADIUS accounting) and the DHCP
        server of the routed Wi-Fi network; its lease file is the lab's to write."""
        if not self.identity_configured:
            return ""
        secret = self.state_dir / "radius-secret"
        secret.write_bytes(self.radius_secret + b"\n")
        self.lease_file.write_text("# ISC dhcpd lease file of the lab's routed Wi-Fi network\n")
        return (
            "\n[identity]\n"
            f'lease_files = ["isc:{self.lease_file}"]\n'
            "lease_poll_s = 1\n"
            f'radius_listen = "{self.appliance_ip}:{RADIUS_PORT}"\n'
            f'radius_clients = ["{self.wiring.device_gateway}"]\n'
            f"radius_secret_file = {json.dumps(str(secret))}\n"
        )

    def _policy_file(self) -> Path:
        """The policy the appliance runs. Away from the gateway topology the block address is
        the appliance's own (the router keeps 10.41.0.1), so a copy says so; the files the
        policy names (its lists) are linked beside the copy."""
        policy = self.policy.resolve()
        if self.appliance_ip == GATEWAY_LAN_IP:
            return policy
        text = policy.read_text()
        wanted = f'block_ipv4 = "{self.appliance_ip}"'
        changed = re.sub(r'(?m)^block_ipv4\s*=\s*"[^"]*"', wanted, text, count=1)
        if changed == text and wanted not in text:
            raise LabError(f"{policy}: no [school] block_ipv4 to point at the appliance ({self.appliance_ip})")
        folder = self.state_dir / "policy"
        folder.mkdir(exist_ok=True)
        for sibling in policy.parent.iterdir():
            if sibling != policy and not (folder / sibling.name).exists():
                (folder / sibling.name).symlink_to(sibling)
        (folder / policy.name).write_text(changed)
        return folder / policy.name

    def _write_config(self) -> None:
        policy = self._policy_file()
        address = self.appliance_ip
        text = f"""# The lab's appliance configuration (written by `schoolgate lab up`).
policy = {json.dumps(str(policy))}
data_dir = {json.dumps(str(self.data_dir))}

[site]
id = "{SITE_ID}"
name = "{SITE_NAME}"

[database]
url = {json.dumps(self.database_url)}

[dns]
workers = {self.dns_workers}
listen = ["{address}:{DNS_PORT}"]
upstreams = ["{UPSTREAM_DNS}"]
names = ["schoolgate.lan"]
watched_set_timeout_s = 600
nftables = true

[proxy]
listen = "{address}:{PROXY_PORT}"
workers = {self.proxy_workers}
ca_dir = {json.dumps(str(self.state_dir / "ca"))}
nftables = true
# The lab's websites use the lab's own public CA: what the proxy verifies them with when it
# opens a connection it intercepts (pages under an approved URL prefix, inspected searches).
upstream_ca_file = {json.dumps(str(self.public_ca))}

[network]
{self._network_section()}
[console]
listen = "{address}:{CONSOLE_PORT}"
base_url = "http://{address}:{CONSOLE_PORT}"
plain_http = true  # the lab only: an appliance serves the console over TLS
{"" if self.console_idle_minutes is None else f"idle_minutes = {self.console_idle_minutes}"}

[mail]
# The lab's mail relay keeps every message in the state directory's mail/ folder.
host = "{MAIL_IP}"
port = {MAIL_PORT}
sender = "schoolgate@kingswood.lab.example"

[alerts]
scan_interval_seconds = 5  # the lab shows a DSL's case a few seconds after what raised it
{self._identity_section()}"""
        self.config_path.write_text(text)
        self.state.config = str(self.config_path)
        self.state.clock_file = str(self.clock_path)
        self.state.database_url = self.database_url

    def _prepare_store(self) -> None:
        self._run_schoolgate(["db", "upgrade", "--config", str(self.config_path)], namespace=None)
        seed_register(self.database_url)
        self._run_schoolgate(["ca", "init", "--config", str(self.config_path)], namespace=None)
        self.state.school_ca = str(self.school_ca)

    @property
    def supervisor_state_path(self) -> Path:
        return self.state_dir / "run.json"

    def _supervisor_argv(self) -> list[str]:
        # The same supervisor a developer runs (`schoolgate run`): it restarts a daemon that
        # dies within 2 s and records what a crash may have lost. One mechanism, not two.
        return [self.python, "-P", "-m", "schoolgate", "run", "--config", str(self.config_path),
                "--state-file", str(self.supervisor_state_path), "--grace", str(SUPERVISOR_GRACE_S)]

    def _start_daemons(self) -> None:
        env = {"SCHOOLGATE_CLOCK_FILE": str(self.clock_path), "PYTHONUNBUFFERED": "1"}
        self._spawn(SUPERVISOR, self.names.gateway, self._supervisor_argv(), env=env)
        gw, address = self.names.gateway, self.appliance_ip
        checks: list[tuple[str, Callable[[], bool], str]] = [
            ("dns", lambda: _tcp_open(gw, address, DNS_PORT), "schoolgate dns to listen"),
            ("proxy", lambda: _tcp_open(gw, address, PROXY_PORT), "schoolgate proxy to listen"),
            # An answer, not an open port: the supervisor holds the console's socket and this
            # first request wakes the console (`schoolgate run` starts it on demand).
            ("console", lambda: _http_answers(gw, address, CONSOLE_PORT), "schoolgate console to answer"),
            ("scheduler", lambda: self._reported("scheduler"), "schoolgate scheduler to report"),
        ]
        if self.identity_configured:  # else schoolgate run does not start it: nothing to receive
            checks.append(("identity", lambda: self._reported("identity"), "schoolgate identity to report"))
        if self.wiring.name != "dns-only":  # nothing is refused or logged by the kernel there
            checks.append(
                ("watch", lambda: nflog_bound(gw, NFLOG_GROUP), "schoolgate net watch to bind its NFLOG group")
            )
        # All checks in each round, so that each daemon's first start is timed by its own
        # readiness, not by the daemons checked before it: the restart tests bound a restart by it.
        pending = list(checks)
        # When each daemon was first seen serving (seconds since boot). Its process's start comes
        # from the supervisor's state file, which a quick daemon can beat: the time is taken when
        # it serves and the start read once the file has it.
        ready_at: dict[str, float] = {}
        timed: set[str] = set()
        deadline = time.monotonic() + 60
        while pending or timed != set(ready_at):
            failure = self._start_failure()
            if failure:
                tail = _tail(self.log_path(SUPERVISOR))
                raise LabError(f"{failure}; last lines of its log:\n{tail}")
            for check in list(pending):
                name, ready, _what = check
                if ready():
                    pending.remove(check)
                    ready_at[name] = time.clock_gettime(time.CLOCK_BOOTTIME)
            for name, seen in ready_at.items():
                started = self._process_started(name) if name not in timed else None
                if started is not None:
                    timed.add(name)
                    self.state.first_start_s[name] = round(seen - started, 3)
                    log.info("%s is up (%.3f s after its process started)", name, seen - started)
            if not pending and timed == set(ready_at):
                break
            if time.monotonic() > deadline:
                waiting = pending[0][2] if pending else "the supervisor to record its daemons' starts"
                raise LabError(f"timed out after 60s waiting for {waiting}")
            time.sleep(0.05)
        self.state.save()

    def _process_started(self, name: str) -> float | None:
        """When the daemon's process started (forked by the supervisor), in seconds since boot,
        by the kernel's record in the supervisor's state file; None until the file has it."""
        info = self._child_running(name)
        if not info.get("start"):
            return None
        return int(info["start"]) / os.sysconf("SC_CLK_TCK")

    def first_start(self, name: str) -> float | None:
        """How long the daemon took from its process's start to serving when the lab came up:
        what a restart of it should take too (it is forked from the same preloaded supervisor)."""
        return self.state.first_start_s.get(name)

    def _reported(self, name: str) -> bool:
        """The daemon has written its daemon_status row (it is up, and listening if configured)."""
        import sqlite3

        if self.daemon_pid(name) is None:
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.data_dir / 'schoolgate.db'}?mode=ro", uri=True)) as db:
                return db.execute("SELECT 1 FROM daemon_status WHERE name = ?", (name,)).fetchone() is not None
        except sqlite3.Error:
            return False

    def _start_failure(self) -> str | None:
        if self._died(SUPERVISOR):
            return "schoolgate run exited during start-up"
        for name, info in self.supervisor_state()["children"].items():
            if info.get("unclean_exits", 0) >= START_FAILURES:
                return f"schoolgate {name} exited {info['unclean_exits']} times during start-up"
        return None

    def supervisor_state(self) -> dict[str, Any]:
        """What `schoolgate run` says about its daemons: PIDs, restarts, unclean exits."""
        try:
            state: dict[str, Any] = json.loads(self.supervisor_state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {"supervisor": None, "children": {}}
        return state

    def host_of(self, name: str) -> str:
        """The supervisor's child that runs daemon `name`: itself, or the one whose process it
        runs in (net watch runs in the event-writing process, "events")."""
        children = self.supervisor_state()["children"]
        if name in children:
            return name
        return next((child for child, info in children.items() if name in info.get("runs", ())), name)

    def _child_running(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = self.supervisor_state()["children"].get(self.host_of(name)) or {}
        return info

    def daemon_pid(self, name: str) -> int | None:
        """The PID of the process that runs one appliance daemon (dns, proxy, console, scheduler,
        watch), if running: net watch's is the event-writing process's (see `host_of`)."""
        info = self._child_running(name)
        if not info or not info.get("pid"):
            return None
        pid = int(info["pid"])
        return pid if netns.process_alive(pid, info.get("start")) else None

    def stop_daemons(self) -> None:
        """Stop the appliance daemons (the supervisor stops each, letting it flush)."""
        info = self.state.processes.pop(SUPERVISOR, None)
        if info is not None:
            netns.stop_process(int(info["pid"]), info.get("start"), grace=SUPERVISOR_GRACE_S + 5)
            self.state.save()

    # ------------------------------------------------------------------ processes

    def _spawn(self, name: str, namespace: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        process = netns.spawn(namespace, argv, log_path=self.log_path(name), env=env)
        self.state.processes[name] = {
            "pid": process.pid,
            "start": netns.process_start_time(process.pid),
            "namespace": namespace,
            "log": str(self.log_path(name)),
            "argv": argv,
        }
        self.state.save()

    def _died(self, name: str) -> bool:
        info = self.state.processes.get(name)
        return info is None or not netns.process_alive(info["pid"], info["start"])

    def _check_alive(self, name: str) -> None:
        if self._died(name):
            tail = _tail(self.log_path(name))
            raise LabError(f"{name} exited during start-up; last lines of its log:\n{tail}")

    def _run_schoolgate(self, args: list[str], namespace: str | None = "gw") -> str:
        argv = [self.python, "-P", "-m", "schoolgate", *args]
        if namespace == "gw":
            done = netns.exec_in(self.names.gateway, argv, check=False, timeout=120)
        else:
            done = netns.run(argv, check=False, timeout=120)
        if done.returncode != 0:
            raise LabError(f"schoolgate {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def restart(self, name: str, timeout: float = 30.0) -> int:
        """Restart one appliance daemon (e.g. after changing the config); returns its new PID.

        The daemon is asked to stop (SIGTERM: it flushes) and the supervisor starts it again.
        """
        old = self.daemon_pid(name)
        if old is None:
            raise LabError(f"{name} is not running")
        netns.stop_process(old, netns.process_start_time(old), grace=SUPERVISOR_GRACE_S)
        found: list[int] = []

        def restarted() -> bool:
            pid = self.daemon_pid(name)
            if pid is not None and pid != old:
                found.append(pid)
                return True
            return False

        netns.wait_for(restarted, timeout=timeout, what=f"{name} to be restarted")
        return found[0]

    # ------------------------------------------------------------------ down / status / clock

    def down(self) -> list[str]:
        """Stop our processes (by PID, checked against their start time), delete namespaces."""
        done: list[str] = []
        for name, info in reversed(list(self.state.processes.items())):
            grace = SUPERVISOR_GRACE_S + 5 if name == SUPERVISOR else 8.0
            netns.stop_process(int(info["pid"]), info.get("start"), grace=grace)
            done.append(f"stopped {name} (pid {info['pid']})")
        self.state.processes = {}
        names = list(dict.fromkeys([*self.state.namespaces, *self.names.all()]))
        for name in reversed(names):
            if netns.exists(name) or (netns.ETC_NETNS / name).exists():
                netns.delete(name)
                done.append(f"deleted namespace {name}")
        self.state.namespaces = []
        if self.state_dir.exists():
            self.state.save()
        return done

    def status(self) -> dict[str, Any]:
        namespaces = {n: netns.exists(n) for n in self.names.all(self.wiring)}
        processes = {
            name: {"pid": info["pid"], "alive": netns.process_alive(info["pid"], info.get("start"))}
            for name, info in self.state.processes.items()
        }
        clock = self.clock_path.read_text().strip() if self.clock_path.exists() else None
        supervised = self.supervisor_state()["children"] if processes.get(SUPERVISOR, {}).get("alive") else {}
        daemons = {
            name: {
                "pid": info.get("pid"),
                "alive": bool(info.get("pid")) and netns.process_alive(int(info["pid"]), info.get("start")),
                "state": info.get("state", ""),
                "restarts": info.get("restarts", 0),
                "unclean_exits": info.get("unclean_exits", 0),
                "events_maybe_lost": info.get("events_maybe_lost", 0),
            }
            for name, info in supervised.items()
        }
        for host, info in supervised.items():  # net watch, in the event-writing process
            for name in info.get("runs", ()):
                daemons[name] = {**daemons[host], "runs_in": host}
        return {
            "prefix": self.names.prefix,
            "topology": self.wiring.name,
            "state_dir": str(self.state_dir),
            "namespaces": namespaces,
            "processes": processes,
            "daemons": daemons,
            "clock": clock,
            "config": self.state.config,
        }

    def set_clock(self, instant: datetime) -> None:
        set_clock_file(self.clock_path, instant)

    def clock_now(self) -> datetime:
        """The daemons' "now" (the clock file's instant, running on in real time)."""
        from schoolgate.clock import FileClock

        return FileClock(self.clock_path).now()

    # ------------------------------------------------------------------ for tests and benches

    def attach_device(self, item: LabDevice) -> str:
        """One more device on the gateway's LAN bridge, after `up` (a session's visitor, a pupil's
        own phone); the register is left alone. `down` removes it with the rest. Its namespace."""
        if self.wiring.name != "gateway":
            raise LabError("devices are attached to the gateway topology's LAN bridge only")
        if item.key in {d.key for d in self.wiring.devices} or item.key in self.state.extra_devices:
            raise LabError(f"the lab already has a device {item.key!r}")
        index = 100 + len(self.state.extra_devices)
        self._add_device(index, item, self.names.gateway, LAN_BRIDGE)
        self.state.extra_devices.append(item.key)
        self.state.save()
        return self.names.device(item.key)

    def device_namespace(self, key: str) -> str:
        if key in self.state.extra_devices:
            return self.names.device(key)
        if key not in {d.key for d in self.wiring.devices}:
            device(key)  # an unknown key names the devices there are
            raise LabError(f"the {self.wiring.name} lab has no device {key!r}")
        return self.names.device(key)


def _topology(name: str) -> Topology:
    try:
        return topology(name)
    except ValueError as err:
        raise LabError(str(err)) from err


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _tcp_open(namespace: str, host: str, port: int) -> bool:
    def attempt() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return netns.call_in(namespace, attempt)


def _http_answers(namespace: str, host: str, port: int) -> bool:
    def attempt() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5) as sock:
                sock.settimeout(10)  # a console woken by this request loads before it answers
                sock.sendall(f"GET /login HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                return sock.recv(64).startswith(b"HTTP/1.1 ")
        except OSError:
            return False

    return netns.call_in(namespace, attempt)


def nflog_bound(namespace: str, group: int) -> bool:
    done = netns.exec_in(namespace, ["cat", "/proc/net/netfilter/nfnetlink_log"], check=False)
    return any(line.split()[:1] == [str(group)] for line in done.stdout.splitlines())


def lab_email(name: str) -> str:
    """The lab school's e-mail address (and Wi-Fi user name) for a person: cara.teacher@..."""
    return ".".join(name.lower().split()) + "@kingswood.example"


def seed_register(database_url: str) -> None:
    """The school's people and devices as the lab needs them (and a ban for the supervised one)."""
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.models import Site
    from schoolgate.store.overlay import bump_generation

    engine = make_engine(database_url)
    now = datetime.now().astimezone()
    try:
        with session_factory(engine)() as session, session.begin():
            if session.get(Site, SITE_ID) is None:
                session.add(Site(id=SITE_ID, name=SITE_NAME))
            for item in DEVICES:
                if not item.registered:
                    continue
                _seed_device(session, item, now)
            bump_generation(session, SITE_ID)
    finally:
        engine.dispose()


def _seed_device(session: Any, item: LabDevice, now: datetime) -> None:
    from schoolgate.store.models import BanRow, Device, Person

    person = None
    if item.person_id:
        person = Person(
            site=SITE_ID,
            external_id=item.person_id,
            name=item.person_name or item.person_id,
            role=item.person_role or "pupil",
            year_group=item.year_group,
            groups=item.groups,
            email=lab_email(item.person_name or item.person_id),
        )
        session.add(person)
        session.flush()
    session.add(
        Device(
            site=SITE_ID,
            device_id=item.device_id,
            name=item.device_name,
            mac=item.mac,
            ip=item.ip,
            kind="lab",
            role=item.role,
            person_id=person.id if person else None,
            trusts_school_ca=item.trusts_school_ca,
        )
    )
    if item.banned:
        # Long enough to cover any clock a test sets (the lab may move to another year).
        session.add(
            BanRow(
                site=SITE_ID,
                device_id=item.device_id,
                person_id=item.person_id,
                mac=item.mac,
                starts=now - timedelta(days=3650),
                until=now + timedelta(days=3650),
                reason="lab: circumvention attempt (seed 001 §9)",
                created_by="lab",
            )
        )
