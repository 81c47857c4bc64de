"""The appliance's nftables ruleset, generated as text from the appliance configuration.

A pure function: no root, no kernel, no I/O, so it is tested as text (and checked with
`nft -c -f` where nft is installed). The whole table is replaced in one `nft -f` transaction
(see schoolgate.gateway.nft), so applying twice changes nothing.

What the kernel does with each packet from the LAN:

- port 53 (UDP and TCP), whatever address it was sent to: redirected to schoolgate-dns;
- TCP 80/443 to the block address or to a watched address: redirected to schoolgate-proxy;
- QUIC (UDP 443/80) to watched addresses, DoT/DoQ (853) anywhere, and TCP/UDP 443 to known
  DoH resolvers: rejected at once (not dropped, so browsers fall back to TCP or to our DNS
  without a timeout) and logged to an NFLOG group, from which schoolgate turns each attempt
  into a circumvention event;
- everything else: forwarded by the kernel and masqueraded out of the WAN side.

That is gateway mode. Bridge mode (schoolgate.gateway.ruleset_bridge) does the same to the
frames crossing a transparent bridge; dns-only mode (schoolgate.gateway.ruleset_dnsonly) only
brings the appliance's own DNS and block-page ports to the daemons. `render_ruleset` picks
the renderer from the plan's mode.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from schoolgate.gateway.census import census_declarations, census_rules
from schoolgate.gateway.sets import BLOCKED_V4, BLOCKED_V6, NFT_TABLE, WATCHED_V4, WATCHED_V6
from schoolgate.resolvers import known_doh_addresses

# Sets beside the DNS-fed watched sets. Prefix sets are interval sets with static elements
# (a service's published ranges); the DNS-fed sets are host sets with per-element timeouts.
PREFIXES_V4 = "watched_prefixes4"
PREFIXES_V6 = "watched_prefixes6"
DOH_V4 = "doh4"
DOH_V6 = "doh6"
# The appliance's own addresses in each role's network, from which its self-test asks
# (schoolgate.selftest.vantage): their traffic is steered like a device's.
PROBES_V4 = "selftest4"

# The NFLOG prefix names the kind of attempt; the circumvention reader parses it back.
LOG_PREFIX = "schoolgate-circumvention: "
KIND_DNS_BYPASS = "dns-bypass"  # port 53 sent to a resolver other than the appliance
KIND_DOT = "dot"  # DNS over TLS / QUIC on 853
KIND_DOH = "doh"  # HTTPS to a known DoH resolver address
KIND_QUIC = "quic"  # QUIC to a watched service: would bypass the proxy's SNI check
KINDS = (KIND_DNS_BYPASS, KIND_DOT, KIND_DOH, KIND_QUIC)

# The deployment modes (schoolgate.config.NetworkMode values; no import: this module is pure).
MODE_GATEWAY = "gateway"
MODE_BRIDGE = "bridge"
MODE_DNS_ONLY = "dns-only"
MODES = (MODE_GATEWAY, MODE_BRIDGE, MODE_DNS_ONLY)

# Well-known public resolvers that answer DoH on their anycast addresses. A browser or app
# configured with one of these by address never asks our DNS, so its HTTPS must be refused.
# Names of DoH services are blocked by the policy's circumvention catalogue in DNS; resolving
# them here at boot would only capture today's CDN addresses, so the address list is static
# (schoolgate.resolvers, which the alert rules share).
KNOWN_DOH_ADDRESSES: tuple[str, ...] = known_doh_addresses()


# Every mode's counters, by the same names: `schoolgate net status` and the tests read them.
COUNTERS = (
    "dns_redirected",
    "proxy_redirected",
    "forwarded_connections",
    *(f"refused_{k.replace('-', '_')}" for k in (KIND_DOT, KIND_DOH, KIND_QUIC)),
)


class RulesetError(ValueError):
    """The configuration cannot be turned into a ruleset (names the offending setting)."""


@dataclass(frozen=True)
class GatewayPlan:
    """Everything the ruleset depends on, already validated."""

    lan_interface: str  # bridge mode: the port facing the school's switch
    wan_interface: str  # empty: no masquerade (the gateway is not the NAT router)
    dns_port: int
    proxy_port: int
    appliance_ipv4: str | None  # where clients are told to send DNS (DHCP option 6)
    appliance_ipv6: str | None
    block_ipv4: str | None  # what DNS answers for blocked names (the policy's block address)
    block_ipv6: str | None
    watched_prefixes_v4: tuple[str, ...] = ()
    watched_prefixes_v6: tuple[str, ...] = ()
    doh_v4: tuple[str, ...] = ()
    doh_v6: tuple[str, ...] = ()
    nflog_group: int = 7
    watched_timeout_s: int = 3600
    extra_counters: bool = True
    lan_cidrs: tuple[str, ...] = field(default=())
    mode: str = "gateway"  # schoolgate.config.NetworkMode value
    bridge_interface: str = ""  # bridge mode: the bridge joining lan_interface and wan_interface
    bridge_mac: str = ""  # bridge mode: the bridge's own address; diverted frames are sent to it
    # bridge mode: where the school's DHCP tells devices to send DNS (the appliance included);
    # a query to any other server is also answered by the appliance, and logged as a bypass.
    expected_dns_v4: tuple[str, ...] = ()
    expected_dns_v6: tuple[str, ...] = ()
    probes_v4: tuple[str, ...] = ()  # the self-test's probe addresses


def _interface(name: str, setting: str) -> str:
    # Interface names go into the ruleset in quotes; refuse anything that could break out.
    if not name or len(name) > 15 or not all(c.isalnum() or c in "-_.@" for c in name):
        raise RulesetError(f"{setting}: {name!r} is not a valid interface name")
    return name


def _split_networks(values: Iterable[str], setting: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    v4: list[str] = []
    v6: list[str] = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError as err:
            raise RulesetError(f"{setting}: {value!r} is not an address or prefix") from err
        text = str(network.network_address) if network.num_addresses == 1 else str(network)
        (v4 if network.version == 4 else v6).append(text)
    return _collapse(v4), _collapse(v6)


def _collapse(values: Sequence[str]) -> tuple[str, ...]:
    """Interval sets refuse overlapping elements: merge them, keep a stable order."""
    networks = [ipaddress.ip_network(v) for v in values]
    merged = ipaddress.collapse_addresses(networks)  # type: ignore[type-var]
    return tuple(str(n.network_address) if n.num_addresses == 1 else str(n) for n in merged)


def _port(listen: str, setting: str) -> int:
    _host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise RulesetError(f"{setting}: {listen!r} needs a port, e.g. 0.0.0.0:53")
    return int(port)


def _check_reachable(listens: Sequence[str], setting: str, appliance: Sequence[str]) -> None:
    """`redirect` delivers to the LAN interface's own address: a daemon must listen there.

    A daemon bound to loopback (the development default) would never see the redirected
    traffic, and the LAN would lose DNS or web access to watched sites without any error.
    Each configured appliance address (IPv4 and IPv6) must be covered.
    """
    hosts = {item.rpartition(":")[0].strip("[]") for item in listens}
    for address in (a for a in appliance if a):
        every = {"", "*", "::"} | ({"0.0.0.0"} if "." in address else set())
        if not hosts & (every | {address}):
            raise RulesetError(
                f"{setting}: {', '.join(listens)} does not listen on {address}; redirected traffic "
                f"arrives there (listen on it, or on *:PORT)"
            )


def _mac(value: str, setting: str) -> str:
    from schoolgate.identity.macs import normalise_mac

    mac = normalise_mac(value)
    if mac is None:
        raise RulesetError(f"{setting}: {value!r} is not an Ethernet MAC address")
    return mac


def _address(value: str, version: int, setting: str) -> str | None:
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError as err:
        raise RulesetError(f"{setting}: {value!r} is not an IP address") from err
    if address.version != version:
        raise RulesetError(f"{setting}: {value!r} is not an IPv{version} address")
    return str(address)


def plan_from_config(
    *,
    lan_interface: str,
    wan_interface: str,
    dns_listen: Sequence[str],
    proxy_listen: str,
    appliance_ipv4: str,
    appliance_ipv6: str,
    watched_prefixes: Sequence[str],
    block_ipv4: str = "",
    block_ipv6: str = "",
    doh_addresses: Sequence[str],
    nflog_group: int = 7,
    watched_timeout_s: int = 3600,
    include_known_doh: bool = True,
    lan_cidrs: Sequence[str] = (),
    mode: str = "gateway",
    bridge_interface: str = "",
    bridge_mac: str = "",
    router_ipv4: str = "",
    school_dns_servers: Sequence[str] = (),
    probe_addresses: Sequence[str] = (),
) -> GatewayPlan:
    """Validate the network settings and gather what the ruleset needs.

    The block addresses come from the policy (`[school] block_ipv4/6`); without them the
    appliance's own addresses are the block addresses. Bridge mode also needs the bridge's
    MAC address (`bridge_mac`), which the caller reads from the system.
    """
    if mode not in MODES:
        raise RulesetError(f"network.mode: {mode!r} is not one of {', '.join(MODES)}")
    if not dns_listen:
        raise RulesetError("dns.listen: at least one address:port is needed")
    dns_ports = {_port(item, "dns.listen") for item in dns_listen}
    if len(dns_ports) != 1:
        raise RulesetError(f"dns.listen: every listener must use the same port, got {sorted(dns_ports)}")
    own_v4 = _address(appliance_ipv4, 4, "network.appliance_ipv4")
    own_v6 = _address(appliance_ipv6, 6, "network.appliance_ipv6")
    _check_reachable(dns_listen, "dns.listen", [own_v4 or "", own_v6 or ""])
    _check_reachable([proxy_listen], "proxy.listen", [own_v4 or "", own_v6 or ""])
    prefixes_v4, prefixes_v6 = _split_networks(watched_prefixes, "network.watched_prefixes")
    doh = [*doh_addresses, *(KNOWN_DOH_ADDRESSES if include_known_doh else ())]
    doh_v4, doh_v6 = _split_networks(doh, "network.doh_addresses")
    if not 0 <= nflog_group < 65536:
        raise RulesetError(f"network.nflog_group: {nflog_group} is outside 0..65535")
    _split_networks(lan_cidrs, "network.lan_cidrs")
    expected_v4: tuple[str, ...] = ()
    expected_v6: tuple[str, ...] = ()
    if mode == MODE_BRIDGE:
        if not (bridge_interface and wan_interface):
            raise RulesetError(
                "network.bridge_interface, network.wan_interface: bridge mode needs the bridge and both ports"
            )
        _address(router_ipv4, 4, "network.router_ipv4")
        expected_v4, expected_v6 = _split_networks(
            [a for a in (own_v4, own_v6, router_ipv4, *school_dns_servers) if a], "network.school_dns_servers"
        )
    probes_v4, probes_v6 = _split_networks(probe_addresses, "selftest.probe_addresses")
    if probes_v6:
        raise RulesetError(f"selftest.probe_addresses: {probes_v6[0]}: the self-test asks over IPv4 only")
    return GatewayPlan(
        probes_v4=probes_v4 if own_v4 else (),
        mode=mode,
        bridge_interface=_interface(bridge_interface, "network.bridge_interface") if mode == MODE_BRIDGE else "",
        bridge_mac=_mac(bridge_mac, f"the address of {bridge_interface}") if mode == MODE_BRIDGE else "",
        expected_dns_v4=expected_v4,
        expected_dns_v6=expected_v6,
        lan_interface=_interface(lan_interface, "network.lan_interface"),
        wan_interface=_interface(wan_interface, "network.wan_interface") if wan_interface else "",
        dns_port=dns_ports.pop(),
        proxy_port=_port(proxy_listen, "proxy.listen"),
        appliance_ipv4=own_v4,
        appliance_ipv6=own_v6,
        block_ipv4=_address(block_ipv4 or appliance_ipv4, 4, "school.block_ipv4"),
        block_ipv6=_address(block_ipv6 or appliance_ipv6, 6, "school.block_ipv6"),
        watched_prefixes_v4=prefixes_v4,
        watched_prefixes_v6=prefixes_v6,
        doh_v4=doh_v4,
        doh_v6=doh_v6,
        nflog_group=nflog_group,
        watched_timeout_s=watched_timeout_s,
        lan_cidrs=tuple(lan_cidrs),
    )


def _elements(values: Sequence[str]) -> str:
    return f"\t\telements = {{ {', '.join(values)} }}\n" if values else ""


def _log(plan: GatewayPlan, kind: str) -> str:
    # One NFLOG message per rejected packet; snaplen keeps just the headers we parse.
    return f'log prefix "{LOG_PREFIX}{kind} " group {plan.nflog_group} snaplen 96'


def set_declarations(plan: GatewayPlan) -> list[str]:
    """The watched, prefix and DoH sets, in whichever table does the steering."""
    timeout = f"timeout {plan.watched_timeout_s}s; " if plan.watched_timeout_s else ""
    out = [
        f"\tset {WATCHED_V4} {{\n\t\ttype ipv4_addr; flags timeout; {timeout}size 65535;\n\t}}",
        f"\tset {WATCHED_V6} {{\n\t\ttype ipv6_addr; flags timeout; {timeout}size 65535;\n\t}}",
    ]
    for name, kind, values in (
        (PREFIXES_V4, "ipv4_addr", plan.watched_prefixes_v4),
        (PREFIXES_V6, "ipv6_addr", plan.watched_prefixes_v6),
        (DOH_V4, "ipv4_addr", plan.doh_v4),
        (DOH_V6, "ipv6_addr", plan.doh_v6),
        # Filled at run time from the lists (schoolgate.gateway.blocked), never by the ruleset.
        (BLOCKED_V4, "ipv4_addr", ()),
        (BLOCKED_V6, "ipv6_addr", ()),
    ):
        out.append(interval_set(name, kind, values))
    return out


def interval_set(name: str, kind: str, values: Sequence[str]) -> str:
    return f"\tset {name} {{\n\t\ttype {kind}; flags interval;\n{_elements(values)}\t}}"


def counter_declarations(names: Iterable[str]) -> list[str]:
    return [f"\tcounter {name} {{\n\t}}" for name in names]


def log_rule(plan: GatewayPlan, kind: str) -> str:
    """The statement that sends one refused or redirected attempt to the circumvention reader."""
    return _log(plan, kind)


def refused_counter(kind: str) -> str:
    return f"refused_{kind.replace('-', '_')}"


REFUSE_CHAIN = [
    "\tchain refuse {",
    "\t\tmeta l4proto tcp reject with tcp reset",
    "\t\treject with icmpx type admin-prohibited",
    "\t}",
]


def selftest_chain(plan: GatewayPlan, *, watched: bool) -> list[str]:
    """The self-test's traffic, made on the appliance, steered as a device's would be.

    Locally made packets never pass `prerouting`, so these `output` rules repeat the steering
    for the probe addresses only: DNS to the DNS daemon, web traffic to the block address (and,
    where this table holds the watched sets, to a watched address) to the proxy. `dnat`, not
    `redirect`: redirect would send locally made packets to 127.0.0.1, where the daemons do not
    listen. Nothing else on the appliance is touched: only these source addresses match.
    """
    if not plan.probes_v4 or not plan.appliance_ipv4:
        return []
    own = plan.appliance_ipv4
    probes = f"ip saddr @{PROBES_V4}"
    web = "tcp dport { 80, 443 }"
    proxy = f"dnat ip to {own}:{plan.proxy_port}"
    lines = [
        interval_set(PROBES_V4, "ipv4_addr", plan.probes_v4),
        *counter_declarations(["selftest_dns"]),
        "\tchain selftest {",
        "\t\ttype nat hook output priority -100; policy accept;",
        f'\t\t{probes} meta l4proto {{ tcp, udp }} th dport 53 counter name "selftest_dns" '
        f"dnat ip to {own}:{plan.dns_port}",
    ]
    if plan.block_ipv4:
        lines.append(f"\t\t{probes} ip daddr {plan.block_ipv4} {web} {proxy}")
    if watched:
        lines.append(f"\t\t{probes} ip daddr @{WATCHED_V4} {web} {proxy}")
        lines.append(f"\t\t{probes} ip daddr @{PREFIXES_V4} {web} {proxy}")
    lines.append("\t}")
    return lines


def render_ruleset(plan: GatewayPlan) -> str:
    """The complete ruleset for `nft -f`: the tables are created, emptied and rebuilt atomically."""
    if plan.mode == MODE_BRIDGE:
        from schoolgate.gateway.ruleset_bridge import render_bridge_ruleset

        return render_bridge_ruleset(plan)
    if plan.mode == MODE_DNS_ONLY:
        from schoolgate.gateway.ruleset_dnsonly import render_dns_only_ruleset

        return render_dns_only_ruleset(plan)
    return render_gateway_ruleset(plan)


def render_gateway_ruleset(plan: GatewayPlan) -> str:
    """Gateway mode: the appliance routes the LAN; one inet table steers, refuses and masquerades."""
    lan = f'iifname "{plan.lan_interface}"'
    t = NFT_TABLE
    out: list[str] = [
        "#!/usr/sbin/nft -f",
        "# Generated by `schoolgate net apply`; edit schoolgate.toml, not this file.",
        # Declare-then-delete makes the transaction work whether or not the table exists.
        f"table inet {t}",
        f"delete table inet {t}",
        "",
        f"table inet {t} {{",
    ]
    out.extend(set_declarations(plan))
    out.extend(census_declarations())

    # Steering: DNS and watched web traffic into the local daemons. `redirect` rewrites the
    # destination to the LAN interface's own address, so no route_localnet is needed and the
    # daemons see the original destination through conntrack (SO_ORIGINAL_DST).
    dst = ["\tchain steer {", "\t\ttype nat hook prerouting priority dstnat; policy accept;"]
    if plan.appliance_ipv4:
        dst.append(
            f"\t\t{lan} meta l4proto {{ tcp, udp }} th dport 53 ip daddr != {plan.appliance_ipv4} "
            + _log(plan, KIND_DNS_BYPASS)
        )
    if plan.appliance_ipv6:
        dst.append(
            f"\t\t{lan} meta l4proto {{ tcp, udp }} th dport 53 ip6 daddr != {plan.appliance_ipv6} "
            + _log(plan, KIND_DNS_BYPASS)
        )
    dst.append(
        f'\t\t{lan} meta l4proto {{ tcp, udp }} th dport 53 counter name "dns_redirected" '
        f"redirect to :{plan.dns_port}"
    )
    web = "tcp dport { 80, 443 }"
    proxy = f'counter name "proxy_redirected" redirect to :{plan.proxy_port}'
    if plan.block_ipv4:
        dst.append(f"\t\t{lan} ip daddr {plan.block_ipv4} {web} {proxy}")
    if plan.block_ipv6:
        dst.append(f"\t\t{lan} ip6 daddr {plan.block_ipv6} {web} {proxy}")
    dst.append(f"\t\t{lan} ip daddr @{WATCHED_V4} {web} {proxy}")
    dst.append(f"\t\t{lan} ip6 daddr @{WATCHED_V6} {web} {proxy}")
    dst.append(f"\t\t{lan} ip daddr @{PREFIXES_V4} {web} {proxy}")
    dst.append(f"\t\t{lan} ip6 daddr @{PREFIXES_V6} {web} {proxy}")
    # Addresses the lists name: the proxy judges them per role (schoolgate.proxy.judge).
    dst.append(f"\t\t{lan} ip daddr @{BLOCKED_V4} {web} {proxy}")
    dst.append(f"\t\t{lan} ip6 daddr @{BLOCKED_V6} {web} {proxy}")
    dst.append("\t}")

    # Refusals happen in forward: only traffic leaving through the gateway is judged here;
    # what the steer chain redirected goes to input instead and never reaches these rules.
    fwd = [
        "\tchain guard {",
        "\t\ttype filter hook forward priority filter; policy accept;",
        # Only a connection's first packet is judged; the bulk of forwarded traffic leaves
        # the chain here, so filtering costs a download nothing measurable.
        "\t\tct state established,related accept",
        # Which devices the gateway forwards for, and which use VPN ports (schoolgate.gateway.census).
        *census_rules(lan),
    ]

    def refuse(match: str, kind: str) -> None:
        fwd.append(f"\t\t{lan} {match} {_log(plan, kind)}")
        fwd.append(f'\t\t{lan} {match} counter name "{refused_counter(kind)}" jump refuse')

    refuse("meta l4proto { tcp, udp } th dport 853", KIND_DOT)
    refuse(f"ip daddr @{DOH_V4} meta l4proto {{ tcp, udp }} th dport 443", KIND_DOH)
    refuse(f"ip6 daddr @{DOH_V6} meta l4proto {{ tcp, udp }} th dport 443", KIND_DOH)
    for family, watched, prefixes in (
        ("ip", WATCHED_V4, PREFIXES_V4),
        ("ip6", WATCHED_V6, PREFIXES_V6),
    ):
        refuse(f"{family} daddr @{watched} udp dport {{ 80, 443 }}", KIND_QUIC)
        refuse(f"{family} daddr @{prefixes} udp dport {{ 80, 443 }}", KIND_QUIC)
    # QUIC to a listed address would pass the proxy by: refused, so the browser falls back to
    # TCP, which the steer chain sends to the proxy. Not a circumvention attempt: not logged.
    fwd.append(f"\t\t{lan} ip daddr @{BLOCKED_V4} udp dport {{ 80, 443 }} jump refuse")
    fwd.append(f"\t\t{lan} ip6 daddr @{BLOCKED_V6} udp dport {{ 80, 443 }} jump refuse")
    fwd.append('\t\tcounter name "forwarded_connections"')
    fwd.append("\t}")

    out.extend(counter_declarations(COUNTERS))
    out.extend(selftest_chain(plan, watched=True))
    out.extend(dst)
    out.extend(fwd)
    out.extend(REFUSE_CHAIN)
    if plan.wan_interface:
        out.extend(
            [
                "\tchain egress {",
                "\t\ttype nat hook postrouting priority srcnat; policy accept;",
                f'\t\toifname "{plan.wan_interface}" masquerade',
                "\t}",
            ]
        )
    out.append("}")
    return "\n".join(out) + "\n"
