"""The bridge and dns-only rulesets as text, their validation, and `nft -c` acceptance."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from schoolgate.config import load_config
from schoolgate.gateway.ruleset import GatewayPlan, RulesetError, plan_from_config, render_ruleset
from schoolgate.gateway.ruleset_bridge import MARK_DNS, MARK_DNS_BYPASS, MARK_PROXY, MARK_REFUSE, MARK_REFUSE_QUIETLY
from schoolgate.tomlpos import ConfigError

BRIDGE_MAC = "02:42:00:00:00:02"


def make_plan(mode: str = "bridge", **overrides: object) -> GatewayPlan:
    settings: dict[str, object] = {
        "mode": mode,
        "lan_interface": "eth1",
        "wan_interface": "eth0" if mode == "bridge" else "",
        "bridge_interface": "br0",
        "bridge_mac": BRIDGE_MAC,
        "router_ipv4": "10.77.0.254",
        "school_dns_servers": ["10.77.0.53"],
        "dns_listen": ["10.77.0.2:53", "[fd77::2]:53"],
        "proxy_listen": "*:8081",
        "appliance_ipv4": "10.77.0.2",
        "appliance_ipv6": "fd77::2",
        "watched_prefixes": ["157.240.0.0/16", "2a03:2880::/32"],
        "doh_addresses": ["203.0.113.53"],
        "include_known_doh": False,
        "nflog_group": 9,
    }
    settings.update(overrides)
    return plan_from_config(**settings)  # type: ignore[arg-type]


def chain(text: str, table: str, name: str) -> list[str]:
    """The rule lines of one chain of one table (the hook line excluded)."""
    body = re.search(rf"^table {table} schoolgate {{\n(.*?)^}}", text, re.S | re.M)
    assert body, f"table {table} missing"
    match = re.search(rf"\tchain {name} {{\n(.*?)\n\t}}", body.group(1), re.S)
    assert match, f"chain {name} missing from {table}"
    return [line.strip() for line in match.group(1).splitlines() if "hook" not in line]


def test_bridge_mode_replaces_both_tables_in_one_transaction() -> None:
    lines = render_ruleset(make_plan()).splitlines()
    for family in ("bridge", "inet"):
        assert lines.index(f"table {family} schoolgate") < lines.index(f"delete table {family} schoolgate")
        assert lines.index(f"delete table {family} schoolgate") < lines.index(f"table {family} schoolgate {{")
    assert "flush ruleset" not in lines


def test_bridge_mode_diverts_only_what_the_schools_devices_send() -> None:
    divert = chain(render_ruleset(make_plan()), "bridge", "divert")
    assert divert[0] == 'iifname != "eth1" accept'  # the router's side is bridged untouched
    assert divert[-1] == 'tcp flags & (syn | ack) == syn counter name "forwarded_connections"'
    to_host = chain(render_ruleset(make_plan()), "bridge", "to_host")
    assert to_host == [f"meta pkttype set host ether daddr set {BRIDGE_MAC} accept"]


def test_bridge_mode_dns_to_unexpected_servers_is_marked_as_a_bypass_first() -> None:
    text = render_ruleset(make_plan())
    divert = chain(text, "bridge", "divert")
    dns = [rule for rule in divert if "th dport 53" in rule]
    assert dns == [
        f"meta l4proto {{ tcp, udp }} th dport 53 ip daddr != @expected_dns4 meta mark set 0x{MARK_DNS_BYPASS:08x} "
        "goto to_host",
        f"meta l4proto {{ tcp, udp }} th dport 53 ip6 daddr != @expected_dns6 meta mark set 0x{MARK_DNS_BYPASS:08x} "
        "goto to_host",
        f"meta l4proto {{ tcp, udp }} th dport 53 meta mark set 0x{MARK_DNS:08x} goto to_host",
    ]
    # The appliance itself, the router and the school's own DNS server are expected.
    assert "elements = { 10.77.0.2, 10.77.0.53, 10.77.0.254 }" in text
    steer = chain(text, "inet", "steer")
    assert steer[0].startswith(f"meta mark 0x{MARK_DNS_BYPASS:08x} log prefix \"schoolgate-circumvention: dns-bypass ")
    assert steer[1].endswith('counter name "dns_redirected" redirect to :53')


def test_bridge_mode_web_connections_are_diverted_from_their_first_packet_on() -> None:
    divert = chain(render_ruleset(make_plan()), "bridge", "divert")
    syn = [rule for rule in divert if rule.startswith("tcp dport { 80, 443 } tcp flags & (syn | ack) == syn ip daddr")]
    assert syn == [
        "tcp dport { 80, 443 } tcp flags & (syn | ack) == syn ip daddr @watched4 update @steered4 "
        "{ ip saddr . ip daddr . tcp sport }",
        "tcp dport { 80, 443 } tcp flags & (syn | ack) == syn ip daddr @watched_prefixes4 update @steered4 "
        "{ ip saddr . ip daddr . tcp sport }",
        # the addresses the lists name: the proxy judges them per role
        "tcp dport { 80, 443 } tcp flags & (syn | ack) == syn ip daddr @blocked4 update @steered4 "
        "{ ip saddr . ip daddr . tcp sport }",
    ]
    follow = [rule for rule in divert if "@steered4 update" in rule]
    assert follow == [
        "tcp dport { 80, 443 } ip saddr . ip daddr . tcp sport @steered4 update @steered4 "
        f"{{ ip saddr . ip daddr . tcp sport }} meta mark set 0x{MARK_PROXY:08x} goto to_host"
    ]
    assert f"ip daddr 10.77.0.2 tcp dport {{ 80, 443 }} meta mark set 0x{MARK_PROXY:08x} goto to_host" in divert


def test_bridge_mode_refusals_are_logged_and_rejected_in_the_inet_table() -> None:
    guard = chain(render_ruleset(make_plan()), "inet", "guard")
    for kind, mark in MARK_REFUSE.items():
        assert f'meta mark 0x{mark:08x} log prefix "schoolgate-circumvention: {kind} " group 9 snaplen 96' in guard
        assert f'meta mark 0x{mark:08x} counter name "refused_{kind}" jump refuse' in guard
    assert not any("nfproto" in rule for rule in guard)  # both families have an address
    # QUIC to a listed address is refused without a log line: it is no circumvention attempt
    assert f"meta mark 0x{MARK_REFUSE_QUIETLY:08x} jump refuse" in guard
    divert = chain(render_ruleset(make_plan()), "bridge", "divert")
    quietly = f"meta mark set 0x{MARK_REFUSE_QUIETLY:08x} goto to_host"
    assert f"udp dport {{ 80, 443 }} ip daddr @blocked4 {quietly}" in divert


def test_bridge_mode_without_ipv6_refuses_ipv6_dns_and_web_instead_of_passing_them() -> None:
    plan = make_plan(appliance_ipv6="", dns_listen=["10.77.0.2:53"])
    guard = chain(render_ruleset(plan), "inet", "guard")
    assert f"meta nfproto ipv6 meta mark {{ 0x{MARK_DNS:08x}, 0x{MARK_DNS_BYPASS:08x} }} jump refuse" in guard
    assert f"meta nfproto ipv6 meta mark 0x{MARK_PROXY:08x} jump refuse" in guard


def test_bridge_mode_has_no_nat_to_the_wan_and_keeps_the_watched_sets_in_the_bridge_table() -> None:
    text = render_ruleset(make_plan())
    assert "masquerade" not in text and "hook forward" not in text
    bridge = text[text.index("table bridge schoolgate {"): text.index("table inet schoolgate {")]
    inet = text[text.index("table inet schoolgate {"):]
    assert "set watched4" in bridge and "set watched4" not in inet
    assert 'counter dns_redirected' in inet and "counter forwarded_connections" in bridge


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"wan_interface": ""}, "bridge mode needs the bridge and both ports"),
        ({"bridge_interface": ""}, "bridge mode needs the bridge and both ports"),
        ({"bridge_mac": "not-a-mac"}, "is not an Ethernet MAC address"),
        ({"router_ipv4": "fd77::1"}, "network.router_ipv4"),
        ({"school_dns_servers": ["dns.example"]}, "network.school_dns_servers"),
        ({"mode": "router"}, "network.mode"),
    ],
)
def test_bridge_plan_errors_name_the_setting(overrides: dict[str, object], words: str) -> None:
    with pytest.raises(RulesetError, match=re.escape(words)):
        make_plan(**overrides)


def test_dns_only_mode_handles_the_appliances_own_ports_only() -> None:
    text = render_ruleset(make_plan("dns-only"))
    assert text.count("table inet schoolgate {") == 1 and "table bridge" not in text
    steer = chain(text, "inet", "steer")
    assert steer == [
        'iifname "eth1" ip daddr 10.77.0.2 meta l4proto { tcp, udp } th dport 53 counter name "dns_redirected" '
        "redirect to :53",
        'iifname "eth1" ip6 daddr fd77::2 meta l4proto { tcp, udp } th dport 53 counter name "dns_redirected" '
        "redirect to :53",
        'iifname "eth1" ip daddr 10.77.0.2 tcp dport { 80, 443 } counter name "proxy_redirected" redirect to :8081',
        'iifname "eth1" ip6 daddr fd77::2 tcp dport { 80, 443 } counter name "proxy_redirected" redirect to :8081',
    ]
    for absent in ("watched", "reject", "masquerade", "forward", "log prefix"):
        assert absent not in text, absent


def test_nft_accepts_every_modes_text(private_netns: str) -> None:
    plans = [
        make_plan(),
        make_plan(appliance_ipv6="", dns_listen=["10.77.0.2:53"], watched_prefixes=[], school_dns_servers=[]),
        make_plan("dns-only"),
        make_plan("dns-only", appliance_ipv6="", dns_listen=["10.77.0.2:53"]),
    ]
    for plan in plans:
        done = subprocess.run(
            ["ip", "netns", "exec", private_netns, "nft", "-c", "-f", "-"],
            input=render_ruleset(plan), capture_output=True, text=True, check=False,
        )
        assert done.returncode == 0, done.stderr


BRIDGE_CONFIG = """policy = "policy.toml"
[network]
mode = "{mode}"
lan_interface = "{lan}"
wan_interface = "{wan}"
bridge_interface = "br0"
appliance_ipv4 = "{address}"
"""


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({"mode": "transparent"}, "network.mode", "is not a mode (one of: gateway, bridge, dns-only)"),
        ({"wan": ""}, "network.wan_interface", "the port facing the school's router"),
        ({"lan": ""}, "network.lan_interface", "the port facing the school's switch"),
        ({"wan": "br0"}, "network.bridge_interface", "three different interfaces"),
        ({"address": "127.0.0.1"}, "network.appliance_ipv4", "the appliance's own address"),
    ],
)
def test_config_refuses_an_incomplete_bridge(tmp_path: Path, values: dict[str, str], field: str, words: str) -> None:
    settings = {"mode": "bridge", "lan": "eth1", "wan": "eth0", "address": "10.77.0.2", **values}
    path = tmp_path / "schoolgate.toml"
    path.write_text(BRIDGE_CONFIG.format(**settings))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.field == field and words in caught.value.message
    assert caught.value.line is not None  # the technician is told where


def test_config_exposes_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "schoolgate.toml"
    path.write_text(BRIDGE_CONFIG.format(mode="bridge", lan="eth1", wan="eth0", address="10.77.0.2"))
    config = load_config(path)
    assert config.mode == "bridge" and config.mode.value == config.network.mode
    (tmp_path / "plain.toml").write_text('policy = "policy.toml"\n')
    assert load_config(tmp_path / "plain.toml").mode == "gateway"  # today's appliances are unchanged
