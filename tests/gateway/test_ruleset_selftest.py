"""The self-test's probe addresses are steered like a device's, in every mode, and nothing else is."""

from __future__ import annotations

import re
import subprocess

import pytest

from schoolgate.gateway.ruleset import GatewayPlan, RulesetError, plan_from_config, render_ruleset

PROBES = ["10.77.23.254", "10.77.10.254"]


def make_plan(mode: str = "gateway", **overrides: object) -> GatewayPlan:
    settings: dict[str, object] = {
        "mode": mode,
        "lan_interface": "eth1",
        "wan_interface": "" if mode == "dns-only" else "eth0",
        "bridge_interface": "br0",
        "bridge_mac": "02:42:00:00:00:02",
        "router_ipv4": "10.77.0.254",
        "dns_listen": ["10.77.0.1:5353"],
        "proxy_listen": "*:8081",
        "appliance_ipv4": "10.77.0.1",
        "appliance_ipv6": "",
        "watched_prefixes": ["157.240.0.0/16"],
        "doh_addresses": [],
        "include_known_doh": False,
        "probe_addresses": PROBES,
    }
    settings.update(overrides)
    return plan_from_config(**settings)  # type: ignore[arg-type]


def selftest_rules(text: str) -> list[str]:
    match = re.search(r"\tchain selftest {\n(.*?)\n\t}", text, re.S)
    assert match, "chain selftest missing"
    return [line.strip() for line in match.group(1).splitlines()]


def test_gateway_mode_steers_the_probes_dns_and_web_traffic_to_the_daemons() -> None:
    text = render_ruleset(make_plan())
    assert "elements = { 10.77.10.254, 10.77.23.254 }" in text
    rules = selftest_rules(text)
    # Locally made packets: the output hook, and dnat to the LAN address (redirect would pick 127.0.0.1).
    assert rules[0] == "type nat hook output priority -100; policy accept;"
    assert rules[1] == ('ip saddr @selftest4 meta l4proto { tcp, udp } th dport 53 counter name "selftest_dns" '
                        "dnat ip to 10.77.0.1:5353")
    assert "ip saddr @selftest4 ip daddr 10.77.0.1 tcp dport { 80, 443 } dnat ip to 10.77.0.1:8081" in rules
    assert "ip saddr @selftest4 ip daddr @watched4 tcp dport { 80, 443 } dnat ip to 10.77.0.1:8081" in rules
    assert "ip saddr @selftest4 ip daddr @watched_prefixes4 tcp dport { 80, 443 } dnat ip to 10.77.0.1:8081" in rules
    assert all(rule.startswith("ip saddr @selftest4") for rule in rules[1:])  # nothing else is touched


@pytest.mark.parametrize("mode", ["bridge", "dns-only"])
def test_other_modes_check_dns_and_the_block_page(mode: str) -> None:
    rules = selftest_rules(render_ruleset(make_plan(mode)))
    assert any("th dport 53" in rule for rule in rules)
    assert any("ip daddr 10.77.0.1 tcp dport { 80, 443 }" in rule for rule in rules)
    assert not any("@watched" in rule for rule in rules)  # those sets are not in this table


def test_no_probes_no_chain() -> None:
    assert "chain selftest" not in render_ruleset(make_plan(probe_addresses=[]))


def test_ipv6_probes_are_refused_by_name() -> None:
    with pytest.raises(RulesetError, match=r"selftest\.probe_addresses: fd77::9"):
        make_plan(probe_addresses=["fd77::9"])


@pytest.mark.root
@pytest.mark.parametrize("mode", ["gateway", "bridge", "dns-only"])
def test_nft_accepts_the_selftest_chain(private_netns: str, mode: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", private_netns, "nft", "-c", "-f", "-"],
                          input=render_ruleset(make_plan(mode)), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
