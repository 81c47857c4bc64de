"""The appliance configuration (`schoolgate.toml`): where things are and how daemons listen.

The school's rules live in the policy file (see schoolgate.policy); this file says which
policy file to load, where the database is, and how each daemon is wired to the network.
It is read and validated once, at start-up; a mistake names the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from schoolgate.tomlpos import ConfigError, locate


@dataclass(frozen=True)
class SiteConfig:
    id: str = "school"
    name: str = "Our School"


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""  # empty: SQLite in data_dir


@dataclass(frozen=True)
class DnsConfig:
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:5353"])
    upstreams: list[str] = field(default_factory=lambda: ["127.0.0.1:53"])
    workers: int = 1
    upstream_timeout_ms: int = 1500
    cache_size: int = 50_000
    names: list[str] = field(default_factory=lambda: ["schoolgate.lan"])
    watched_set_timeout_s: int = 3600
    nftables: bool = False  # add watched addresses to the gateway's nftables sets
    # The resolver that carries the illegal-content lists (IWF child abuse, police CTIRU
    # terrorism), which only members receive: the school's ISP's filtered resolver or a member
    # resolver. When set, every query goes through it and `upstreams` is not used. Not editable
    # from the console; each change is recorded in the audit log when the DNS daemon starts.
    illegal_content_provider: str = ""  # who runs it, e.g. "Example ISP filtered DNS (IWF member)"
    illegal_content_upstream: list[str] = field(default_factory=list)  # "ADDRESS[:PORT]", ...


@dataclass(frozen=True)
class ProxyConfig:
    listen: str = "127.0.0.1:8081"  # "*:8081": every address, IPv4 and IPv6
    ca_dir: str = ""  # empty: <data_dir>/ca
    nftables: bool = False
    mode: str = "transparent"  # "regular" (an explicit HTTP proxy) for development only
    stats_file: str = ""  # empty: <data_dir>/proxy-stats.json
    # Processes sharing the listening port (SO_REUSEPORT; transparent mode): the supervisor
    # runs "proxy" (worker 1), "proxy.2"... each restarted on its own.
    workers: int = 1
    neighbours: bool = True  # read the kernel's neighbour table for client MACs
    resolvers: list[str] = field(default_factory=list)  # for learning watched addresses; empty: dns.upstreams
    watched_names: list[str] = field(default_factory=list)  # resolved besides the catalogue's domains
    prefix_hosts: list[str] = field(default_factory=list)  # "157.240.0.0/16 facebook.com": a service's ranges
    address_refresh_s: int = 300
    inspect_search_engines: bool = False  # decrypt allowed search engines on CA-trusting devices
    upstream_ca_file: str = ""  # extra CA bundle for verifying servers when inspecting


class NetworkMode(StrEnum):
    """How the appliance sits in the school's network (`[network] mode`).

    - gateway: it is every device's router (DHCP gives its address as gateway and DNS);
    - bridge: it sits in the cable between the school's router and its switch, as a
      transparent bridge: nothing on the network is re-addressed;
    - dns-only: it is only the DNS server the school's DHCP hands out; what needs the
      gateway (refusing DoT, DoH and QUIC, the proxy for watched sites, forcing port 53) is
      left to the school's own firewall. See schoolgate.gateway.modes for the plain words.
    """

    GATEWAY = "gateway"
    BRIDGE = "bridge"
    DNS_ONLY = "dns-only"


@dataclass(frozen=True)
class NetworkConfig:
    mode: str = NetworkMode.GATEWAY.value  # gateway, bridge or dns-only (see NetworkMode)
    # gateway and dns-only: the interface facing the school's devices. bridge: the port
    # facing the school's switch (its devices); wan_interface is the port facing its router.
    lan_interface: str = "eth0"
    wan_interface: str = ""
    bridge_interface: str = "br0"  # bridge mode: the bridge joining the two ports
    router_ipv4: str = ""  # bridge, dns-only: the school's router (the appliance's own default route)
    # bridge: the DNS servers the school's DHCP hands out (besides the router). Queries to them
    # are answered by the appliance as a matter of course; to any other server they are logged
    # as a circumvention attempt (and still answered by the appliance).
    school_dns_servers: list[str] = field(default_factory=list)
    appliance_ipv4: str = "127.0.0.1"
    appliance_ipv6: str = ""
    lan_cidrs: list[str] = field(default_factory=list)
    watched_prefixes: list[str] = field(default_factory=list)  # e.g. Meta's published ranges
    doh_addresses: list[str] = field(default_factory=list)
    known_doh_addresses: bool = True  # also refuse the well-known public DoH resolvers
    nflog_group: int = 7  # where the ruleset logs refused circumvention attempts


@dataclass(frozen=True)
class ConsoleConfig:
    listen: str = "127.0.0.1:8443"
    base_url: str = "https://schoolgate.lan:8443"
    tls_cert: str = ""
    tls_key: str = ""
    plain_http: bool = False  # development only
    secret_key_file: str = ""  # empty: <data_dir>/console-secret
    session_minutes: int = 30
    session_max_hours: int = 12  # a sign-in lasts at most this long, however active
    max_exception_days: int = 366  # the longest access a triaged request may propose
    # Failed sign-ins never lock an account (schoolgate.console.throttle): past these counts each
    # further attempt must wait, longer each time, at most lockout_minutes.
    lockout_failures: int = 5  # on one account from unknown devices, or from one known device
    lockout_minutes: int = 15  # the longest wait, and how long a failure counts
    address_failures: int = 20  # from one address (an IPv6 client: its /64), over all accounts
    # Socket-activated (`schoolgate run`, or systemd's schoolgate-console.socket): the console
    # stops after this many minutes without a connection and the next one starts it again
    # (schoolgate.console.activation). 0: always on. Fractions are allowed.
    idle_minutes: int | float = 10


@dataclass(frozen=True)
class MailConfig:
    host: str = ""
    port: int = 25
    starttls: bool = False
    username: str = ""
    password_file: str = ""
    sender: str = "schoolgate@localhost"
    digest_time: str = "07:30"
    digest_recipients: list[str] = field(default_factory=list)
    # Who hears of a concern about the headteacher (seed 001 §8: "the Chair of Board of
    # Trustees"; a school's chair of governors): an e-mail address. Never the headteacher.
    chair_of_governors: str = ""


@dataclass(frozen=True)
class RetentionConfig:
    allowed_days: int = 30
    blocked_days: int = 365
    alerts_days: int = 2190  # six years: safeguarding records


@dataclass(frozen=True)
class AlertsConfig:
    """The DSL's alert rules (schoolgate.services.alert_rules); times are on the school's clock
    (the policy's [school] timezone)."""

    repeated_blocks_threshold: int = 10  # blocked attempts by one device ...
    repeated_blocks_window_minutes: int = 10  # ... within this many minutes raise an alert
    out_of_hours_start: str = "19:00"  # activity from this time ...
    out_of_hours_end: str = "07:00"  # ... until this time is out of hours
    out_of_hours_roles: list[str] = field(default_factory=lambda: ["pupil"])
    keywords_file: str = ""  # empty: the built-in safeguarding term list
    immediate_severities: list[str] = field(default_factory=lambda: ["high", "critical"])
    scan_interval_seconds: int = 30
    # DNS sent to another resolver (port 53), which schoolgate answers anyway, is evidence in a
    # circumvention case; true: it raises a (low) case of its own as well.
    foreign_resolver_alerts: bool = False
    settle_seconds: int = 5  # events this young wait for the next scan (see AlertSettings.settle)


@dataclass(frozen=True)
class ListsConfig:
    """List subscriptions (schoolgate.lists): where versions live and when they are updated."""

    dir: str = ""  # empty: <data_dir>/lists
    update_time: str = "03:30"  # every day, on the school's clock (the policy's [school] timezone)
    stale_days: int = 3  # a list not confirmed current for longer is a warning (doctor, console, mail)
    update_timeout_s: int = 3600  # the scheduler ends an update run that takes longer


@dataclass(frozen=True)
class TeachersConfig:
    """What a teacher may open for their class until the end of the lesson
    (schoolgate.services.lesson_unlocks)."""

    unlocks_per_day: int = 3  # per teacher per school day; 0 turns the power off
    # Categories only the headteacher can open (besides locked and harmful-content categories,
    # which a teacher never can): social media, as the seed policies need her permission.
    refused_categories: list[str] = field(default_factory=lambda: ["social_media", "dating"])


@dataclass(frozen=True)
class IdentityConfig:
    """Who is behind an address, from the school's own systems (schoolgate.identity)."""

    # The DHCP servers' lease files the identity daemon follows, as FORMAT:PATH, FORMAT one of
    # windows (Get-DhcpServerv4Lease | Export-Csv), isc (dhcpd.leases), kea (kea-leases4.csv), dnsmasq.
    lease_files: list[str] = field(default_factory=list)
    lease_poll_s: int = 5
    lease_date_order: str = "auto"  # Windows exports: auto, day-first or month-first
    # RADIUS accounting from the Wi-Fi controller: where to listen ("10.41.0.2:1813"; empty: off),
    # which controllers may send (addresses or ranges), and the file holding their shared secret.
    radius_listen: str = ""
    radius_clients: list[str] = field(default_factory=list)
    radius_secret_file: str = ""


@dataclass(frozen=True)
class SelftestConfig:
    """The self-test (schoolgate.selftest): when it runs and where it asks from."""

    enabled: bool = True  # the scheduler's morning and after-change runs
    # The appliance's own addresses in each role's network, from which it asks as a device there
    # would; empty: the last usable address of each policy network. Keep them out of DHCP.
    probe_addresses: list[str] = field(default_factory=list)
    allowed_sites: list[str] = field(default_factory=lambda: ["www.gov.uk"])  # must pass untouched
    morning_time: str = ""  # "HH:MM"; empty: 30 minutes before the policy's school day starts
    timeout_ms: int = 2000
    heartbeat_max_age_s: int = 180


@dataclass(frozen=True)
class CoverageConfig:
    """The coverage watchdog (schoolgate.services.coverage)."""

    dns_silence_hours: int = 24  # forwarding without schoolgate's DNS for this long: not filtered
    grace_minutes: int = 15  # a device that has just joined gets this long to ask


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus /metrics and the SIEM's JSON export on the console (schoolgate.services.metrics,
    schoolgate.services.export): for people signed in with the permission, or a bearer token."""

    token_file: str = ""  # a file holding the token scrapers and SIEMs send; empty: no token access


@dataclass(frozen=True)
class ExportConfig:
    """The optional syslog export of events and audit entries to a trust's SIEM."""

    syslog: str = ""  # "host:port" of the SIEM's syslog receiver; empty: no export
    protocol: str = "tcp"  # tcp (RFC 6587 octet counting) or udp
    events: str = "blocked"  # blocked (blocked and flagged events) or all
    audit: bool = True


@dataclass(frozen=True)
class AppConfig:
    source: Path
    policy: Path
    data_dir: Path
    site: SiteConfig = SiteConfig()
    database: DatabaseConfig = DatabaseConfig()
    dns: DnsConfig = DnsConfig()
    proxy: ProxyConfig = ProxyConfig()
    network: NetworkConfig = NetworkConfig()
    console: ConsoleConfig = ConsoleConfig()
    mail: MailConfig = MailConfig()
    retention: RetentionConfig = RetentionConfig()
    alerts: AlertsConfig = AlertsConfig()
    lists: ListsConfig = ListsConfig()
    teachers: TeachersConfig = TeachersConfig()
    identity: IdentityConfig = IdentityConfig()
    selftest: SelftestConfig = SelftestConfig()
    coverage: CoverageConfig = CoverageConfig()
    metrics: MetricsConfig = MetricsConfig()
    export: ExportConfig = ExportConfig()

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'schoolgate.db'}"

    @property
    def mode(self) -> NetworkMode:
        """The deployment mode (validated at load, so always one of NetworkMode)."""
        return NetworkMode(self.network.mode)


_SECTIONS: dict[str, type[Any]] = {
    "site": SiteConfig,
    "database": DatabaseConfig,
    "dns": DnsConfig,
    "proxy": ProxyConfig,
    "network": NetworkConfig,
    "console": ConsoleConfig,
    "mail": MailConfig,
    "retention": RetentionConfig,
    "alerts": AlertsConfig,
    "lists": ListsConfig,
    "teachers": TeachersConfig,
    "identity": IdentityConfig,
    "selftest": SelftestConfig,
    "coverage": CoverageConfig,
    "metrics": MetricsConfig,
    "export": ExportConfig,
}


def _check_type(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list,):
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_check_type(v, item) for v in value)
    if origin in (types.UnionType, typing.Union):
        return any(_check_type(value, a) for a in typing.get_args(annotation))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is type(None):
        return value is None
    return isinstance(value, annotation)


def _section(path: Path, text: str, name: str, raw: Any, cls: type[Any]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(path, locate(text, (name,)), name, "must be a table, e.g. [" + name + "]")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        where = locate(text, (name, key))
        if key not in known:
            choices = ", ".join(sorted(known))
            raise ConfigError(path, where, f"{name}.{key}", f"unknown setting (known: {choices})")
        if not _check_type(value, hints[key]):
            expected = getattr(hints[key], "__name__", str(hints[key]))
            raise ConfigError(path, where, f"{name}.{key}", f"expected {expected}, got {value!r}")
    return cls(**raw)


def load_config(path: str | Path) -> AppConfig:
    """Read and validate the appliance configuration; raise ConfigError naming file, line, field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(path, None, "", f"cannot read the file: {err.strerror}") from err
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, getattr(err, "lineno", None), "", f"not valid TOML: {err}") from err
    base = path.parent
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _SECTIONS:
            kwargs[key] = _section(path, text, key, value, _SECTIONS[key])
        elif key in ("policy", "data_dir"):
            if not isinstance(value, str):
                raise ConfigError(path, locate(text, (key,)), key, "must be a path in quotes")
        else:
            known = ", ".join(sorted([*_SECTIONS, "policy", "data_dir"]))
            raise ConfigError(path, locate(text, (key,)), key, f"unknown setting (known: {known})")
    if "policy" not in raw:
        hint = 'missing: the policy file to load, e.g. policy = "policy.toml"'
        raise ConfigError(path, None, "policy", hint)
    policy = (base / raw["policy"]).resolve()
    data_dir = (base / raw.get("data_dir", "data")).resolve()
    if "network" in kwargs:
        _check_network(path, text, kwargs["network"])
    if "identity" in kwargs:
        _check_identity(path, text, kwargs["identity"])
    if "console" in kwargs:
        _check_console(path, text, kwargs["console"])
    return AppConfig(source=path.resolve(), policy=policy, data_dir=data_dir, **kwargs)


# A day: a console asleep for longer than a school day is what 0 (always on) is for.
MAX_CONSOLE_IDLE_MINUTES = 24 * 60


def _check_console(path: Path, text: str, console: ConsoleConfig) -> None:
    if not 0 <= console.idle_minutes <= MAX_CONSOLE_IDLE_MINUTES or console.idle_minutes != console.idle_minutes:
        raise ConfigError(
            path, locate(text, ("console", "idle_minutes")), "console.idle_minutes",
            f"{console.idle_minutes!r}: minutes without a connection before the console sleeps, "
            f"0 (always on) to {MAX_CONSOLE_IDLE_MINUTES}",
        )


def _check_identity(path: Path, text: str, identity: IdentityConfig) -> None:
    import ipaddress

    def refuse(key: str, message: str) -> ConfigError:
        return ConfigError(path, locate(text, ("identity", key)), f"identity.{key}", message)

    formats = ("windows", "isc", "kea", "dnsmasq")
    for spec in identity.lease_files:
        fmt, sep, file = spec.partition(":")
        if not sep or fmt not in formats or not file.startswith("/"):
            raise refuse("lease_files", f"{spec!r}: write FORMAT:/absolute/path, FORMAT one of {', '.join(formats)}")
    if identity.lease_date_order not in ("auto", "day-first", "month-first"):
        raise refuse("lease_date_order", f"{identity.lease_date_order!r}: one of auto, day-first, month-first")
    if not 1 <= identity.lease_poll_s <= 3600:
        raise refuse("lease_poll_s", "between 1 and 3600 seconds")
    if not identity.radius_listen:
        return
    _host, sep, port = identity.radius_listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise refuse("radius_listen", f"{identity.radius_listen!r} needs a port, e.g. 10.41.0.2:1813")
    for client in identity.radius_clients:
        try:
            ipaddress.ip_network(client, strict=False)
        except ValueError as err:
            raise refuse("radius_clients", f"{client!r} is not an address or range") from err
    if not identity.radius_clients:
        raise refuse("radius_clients", "list the Wi-Fi controllers' addresses that may send accounting")
    if not identity.radius_secret_file:
        raise refuse("radius_secret_file", "the file that holds the controllers' shared secret (alone on one line)")


def _check_network(path: Path, text: str, network: NetworkConfig) -> None:
    """The settings each mode needs; the rest of the network settings are checked by `net`."""
    modes = [m.value for m in NetworkMode]
    if network.mode not in modes:
        raise ConfigError(
            path, locate(text, ("network", "mode")), "network.mode",
            f"{network.mode!r} is not a mode (one of: {', '.join(modes)})",
        )
    if network.mode != NetworkMode.BRIDGE:
        return
    ports = {"network.lan_interface": network.lan_interface, "network.wan_interface": network.wan_interface}
    for name, value in ports.items():
        if not value:
            hint = "the port facing the school's switch" if "lan" in name else "the port facing the school's router"
            raise ConfigError(path, locate(text, tuple(name.split("."))), name, f"bridge mode needs {hint}")
    names = [network.lan_interface, network.wan_interface, network.bridge_interface]
    if len(set(names)) != 3:
        raise ConfigError(
            path, locate(text, ("network", "bridge_interface")), "network.bridge_interface",
            f"the bridge and its two ports must be three different interfaces, got {', '.join(names)}",
        )
    if not network.appliance_ipv4 or network.appliance_ipv4.startswith("127."):
        raise ConfigError(
            path, locate(text, ("network", "appliance_ipv4")), "network.appliance_ipv4",
            "bridge mode needs the appliance's own address on the school LAN (a free one, e.g. reserved in DHCP)",
        )


def load_config_or_report(path: str | Path, prog: str = "schoolgate") -> AppConfig | None:
    """For commands: the configuration, or None after telling the technician what is wrong."""
    try:
        return load_config(path)
    except ConfigError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return None
