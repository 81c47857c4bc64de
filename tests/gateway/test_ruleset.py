"""The ruleset generator: structure of the generated text, validation, and `nft -c` acceptance."""

from __future__ import annotations

import re
import subprocess

import pytest

from schoolgate.gateway.ruleset import (
    KNOWN_DOH_ADDRESSES,
    LOG_PREFIX,
    GatewayPlan,
    RulesetError,
    plan_from_config,
    render_ruleset,
)


def make_plan(**overrides: object) -> GatewayPlan:
    settings: dict[str, object] = {
        "lan_interface": "br-lan",
        "wan_interface": "wan0",
        "dns_listen": ["10.77.0.1:5353", "[fd77::1]:5353"],
        "proxy_listen": "*:8081",
        "appliance_ipv4": "10.77.0.1",
        "appliance_ipv6": "fd77::1",
        "watched_prefixes": ["157.240.0.0/16", "31.13.24.0/21", "2a03:2880::/32"],
        "doh_addresses": ["203.0.113.53"],
        "nflog_group": 9,
    }
    settings.update(overrides)
    return plan_from_config(**settings)  # type: ignore[arg-type]


def chain(text: str, name: str) -> list[str]:
    """The rule lines of one chain (the hook line excluded)."""
    match = re.search(rf"\tchain {name} {{\n(.*?)\n\t}}", text, re.S)
    assert match, f"chain {name} missing"
    return [line.strip() for line in match.group(1).splitlines() if "hook" not in line]


def test_table_is_replaced_as_a_whole() -> None:
    text = render_ruleset(make_plan())
    lines = text.splitlines()
    # declare, delete, recreate: one transaction that works whether or not the table exists
    assert lines.index("table inet schoolgate") < lines.index("delete table inet schoolgate")
    assert lines.index("delete table inet schoolgate") < lines.index("table inet schoolgate {")
    assert "flush ruleset" not in text  # other tables on the box are left alone


def test_rendering_is_deterministic() -> None:
    assert render_ruleset(make_plan()) == render_ruleset(make_plan())


def test_all_dns_from_the_lan_is_redirected_whatever_the_destination() -> None:
    steer = chain(render_ruleset(make_plan()), "steer")
    redirect = [r for r in steer if "th dport 53" in r and "redirect" in r]
    assert redirect == [
        'iifname "br-lan" meta l4proto { tcp, udp } th dport 53 counter name "dns_redirected" redirect to :5353'
    ]
    # no daddr condition on the redirect itself: queries to other resolvers are captured too
    assert "daddr" not in redirect[0]


def test_dns_sent_past_the_appliance_is_logged_as_circumvention_before_redirect() -> None:
    steer = chain(render_ruleset(make_plan()), "steer")
    logged = [i for i, r in enumerate(steer) if "dns-bypass" in r]
    redirect = next(i for i, r in enumerate(steer) if "redirect to :5353" in r)
    assert len(logged) == 2 and all(i < redirect for i in logged)
    assert "ip daddr != 10.77.0.1" in steer[logged[0]]
    assert "ip6 daddr != fd77::1" in steer[logged[1]]
    assert f'prefix "{LOG_PREFIX}dns-bypass " group 9' in steer[logged[0]]


@pytest.mark.parametrize(
    "match",
    [
        "ip daddr 10.77.0.1 tcp dport { 80, 443 }",
        "ip6 daddr fd77::1 tcp dport { 80, 443 }",
        "ip daddr @watched4 tcp dport { 80, 443 }",
        "ip6 daddr @watched6 tcp dport { 80, 443 }",
        "ip daddr @watched_prefixes4 tcp dport { 80, 443 }",
        "ip6 daddr @watched_prefixes6 tcp dport { 80, 443 }",
    ],
)
def test_web_traffic_to_block_address_and_watched_sets_goes_to_the_proxy(match: str) -> None:
    steer = chain(render_ruleset(make_plan()), "steer")
    rule = next(r for r in steer if match in r)
    assert rule.startswith('iifname "br-lan"')
    assert rule.endswith("redirect to :8081")


@pytest.mark.parametrize(
    ("match", "kind"),
    [
        ("meta l4proto { tcp, udp } th dport 853", "dot"),
        ("ip daddr @doh4 meta l4proto { tcp, udp } th dport 443", "doh"),
        ("ip6 daddr @doh6 meta l4proto { tcp, udp } th dport 443", "doh"),
        ("ip daddr @watched4 udp dport { 80, 443 }", "quic"),
        ("ip6 daddr @watched6 udp dport { 80, 443 }", "quic"),
        ("ip daddr @watched_prefixes4 udp dport { 80, 443 }", "quic"),
        ("ip6 daddr @watched_prefixes6 udp dport { 80, 443 }", "quic"),
    ],
)
def test_circumvention_is_logged_then_rejected_not_dropped(match: str, kind: str) -> None:
    guard = chain(render_ruleset(make_plan()), "guard")
    rules = [r for r in guard if match in r]
    assert len(rules) == 2, rules
    assert f'log prefix "{LOG_PREFIX}{kind} " group 9' in rules[0]
    assert rules[1].endswith("jump refuse")
    assert guard.index(rules[0]) + 1 == guard.index(rules[1])


def test_refusal_answers_at_once() -> None:
    refuse = chain(render_ruleset(make_plan()), "refuse")
    assert refuse == ["meta l4proto tcp reject with tcp reset", "reject with icmpx type admin-prohibited"]
    assert " drop" not in render_ruleset(make_plan())


def test_everything_else_is_forwarded_and_masqueraded() -> None:
    text = render_ruleset(make_plan())
    assert "type filter hook forward priority filter; policy accept;" in text
    assert chain(text, "egress") == ['oifname "wan0" masquerade']


def test_no_wan_interface_means_no_nat() -> None:
    assert "masquerade" not in render_ruleset(make_plan(wan_interface=""))


def test_sets_and_their_elements() -> None:
    text = render_ruleset(make_plan())
    assert re.search(r"set watched4 \{\n\t\ttype ipv4_addr; flags timeout; timeout 3600s;", text)
    assert re.search(r"set watched6 \{\n\t\ttype ipv6_addr; flags timeout;", text)
    assert "elements = { 31.13.24.0/21, 157.240.0.0/16 }" in text
    assert "elements = { 2a03:2880::/32 }" in text
    doh4 = re.search(r"set doh4 \{.*?elements = \{ (.*?) \}", text, re.S)
    assert doh4 and "203.0.113.53" in doh4.group(1) and "8.8.8.8" in doh4.group(1)


def test_overlapping_prefixes_are_merged_for_the_interval_set() -> None:
    plan = make_plan(watched_prefixes=["10.1.0.0/16", "10.1.2.0/24", "10.2.0.1"])
    assert plan.watched_prefixes_v4 == ("10.1.0.0/16", "10.2.0.1")


def test_known_doh_list_can_be_turned_off() -> None:
    plan = make_plan(include_known_doh=False)
    assert plan.doh_v4 == ("203.0.113.53",) and plan.doh_v6 == ()
    assert len(make_plan().doh_v4) > 10
    assert all(":" in a or "." in a for a in KNOWN_DOH_ADDRESSES)


def test_ipv4_only_appliance_has_no_ipv6_block_rules() -> None:
    text = render_ruleset(make_plan(appliance_ipv6=""))
    assert "ip6 daddr != " not in text and "ip6 daddr fd77" not in text
    assert "ip6 daddr @watched6" in text  # watched IPv6 addresses are still steered


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lan_interface": 'eth0" accept; #'}, "network.lan_interface"),
        ({"lan_interface": "a-very-long-interface-name"}, "network.lan_interface"),
        ({"dns_listen": ["10.0.0.1"]}, "dns.listen"),
        ({"dns_listen": []}, "dns.listen"),
        ({"dns_listen": ["10.0.0.1:53", "10.0.0.2:5353"]}, "same port"),
        ({"proxy_listen": "10.0.0.1:99999"}, "proxy.listen"),
        ({"appliance_ipv4": "fd00::1"}, "network.appliance_ipv4"),
        ({"appliance_ipv6": "banana"}, "network.appliance_ipv6"),
        ({"watched_prefixes": ["157.240.0.0/33"]}, "network.watched_prefixes"),
        ({"doh_addresses": ["dns.google"]}, "network.doh_addresses"),
        ({"nflog_group": 70000}, "network.nflog_group"),
        ({"dns_listen": ["127.0.0.1:5353"]}, "dns.listen"),
        ({"proxy_listen": "127.0.0.1:8081"}, "proxy.listen"),
        ({"proxy_listen": "10.9.9.9:8081"}, "proxy.listen"),
    ],
)
def test_bad_settings_name_the_setting(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(RulesetError, match=re.escape(message)):
        make_plan(**overrides)


@pytest.mark.root
def test_nft_accepts_the_generated_text(private_netns: str) -> None:
    for plan in (make_plan(), make_plan(wan_interface="", appliance_ipv6="", watched_prefixes=[])):
        done = subprocess.run(
            ["ip", "netns", "exec", private_netns, "nft", "-c", "-f", "-"],
            input=render_ruleset(plan),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_the_policys_block_address_is_steered_to_the_proxy() -> None:
    text = render_ruleset(make_plan(block_ipv4="10.41.0.9", block_ipv6="fd41::9"))
    steer = chain(text, "steer")
    assert any(r.startswith('iifname "br-lan" ip daddr 10.41.0.9 tcp dport { 80, 443 }') for r in steer)
    assert any("ip6 daddr fd41::9 tcp dport { 80, 443 }" in r for r in steer)
    # DNS bypass is judged against where clients are told to send DNS: the appliance
    assert any("th dport 53 ip daddr != 10.77.0.1" in r for r in steer)
    assert not any("ip daddr 10.77.0.1 tcp dport" in r for r in steer)


def test_only_a_connections_first_packet_is_judged() -> None:
    guard = chain(render_ruleset(make_plan()), "guard")
    assert guard[0] == "ct state established,related accept"
    assert guard[-1] == 'counter name "forwarded_connections"'


@pytest.mark.parametrize("listen", ["*:8081", "[::]:8081", ":8081"])
def test_the_proxy_may_listen_on_every_address(listen: str) -> None:
    assert make_plan(proxy_listen=listen).proxy_port == 8081


@pytest.mark.parametrize("listen", ["0.0.0.0:8081", "10.77.0.1:8081"])
def test_an_ipv4_listener_is_enough_for_an_ipv4_only_appliance(listen: str) -> None:
    assert make_plan(proxy_listen=listen, appliance_ipv6="").proxy_port == 8081
    with pytest.raises(RulesetError, match="does not listen on fd77::1"):
        make_plan(proxy_listen=listen)  # the IPv6 address is configured too


def test_dns_may_listen_on_several_addresses_covering_the_appliances() -> None:
    plan = make_plan(dns_listen=["127.0.0.1:53", "10.77.0.1:53", "[fd77::1]:53"])
    assert plan.dns_port == 53
