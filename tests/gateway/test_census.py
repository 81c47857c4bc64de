"""The census: nft's JSON for the dynamic sets read into devices, without root."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from schoolgate.gateway.census import CLIENTS_V4, VPN_V4, census_declarations, census_rules, parse_census

NOW = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


def nft_set(name: str, elements: list[object], timeout: int = 86400) -> list[dict[str, object]]:
    return [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "inet", "name": name, "table": "schoolgate", "timeout": timeout, "elem": elements}}]


def element(values: list[object], packets: int, expires: int) -> dict[str, object]:
    return {"elem": {"val": {"concat": values}, "timeout": 86400, "expires": expires,
                     "counter": {"packets": packets, "bytes": packets * 60}}}


def test_elements_become_devices_with_when_they_last_connected() -> None:
    sets = {
        CLIENTS_V4: nft_set(CLIENTS_V4, [
            element(["10.41.20.11", "02:41:00:00:20:11"], 42, 86400 - 30),
            element(["192.0.2.9", "02:00:00:00:00:09"], 1, 86000),  # not on the school's LAN
        ]),
        VPN_V4: nft_set(VPN_V4, [element(["10.41.20.12", "02:41:00:00:20:12", "udp", 1194], 3, 86400 - 600)]),
    }
    census = parse_census(sets, NOW, {"10.41.20.11": "02:41:00:00:20:11", "8.8.8.8": "02:00:00:00:00:01"},
                          lan=["10.41.0.0/16"])
    (seen,) = census.forwarding
    assert (seen.ip, seen.mac, seen.connections, seen.last_at) == (
        "10.41.20.11", "02:41:00:00:20:11", 42, NOW - timedelta(seconds=30))
    (vpn,) = census.vpn
    assert (vpn.ip, vpn.protocol, vpn.port, vpn.connections, vpn.label) == (
        "10.41.20.12", "udp", 1194, 3, "OpenVPN (udp/1194)")
    assert vpn.last_at == NOW - timedelta(minutes=10)
    assert census.neighbours == {"10.41.20.11": "02:41:00:00:20:11"}


def test_damaged_elements_are_skipped_not_fatal() -> None:
    sets = {CLIENTS_V4: nft_set(CLIENTS_V4, [{"elem": {"val": "10.41.20.11"}}, "garbage",
                                             element(["10.41.20.13", "02:41:00:00:20:13"], 2, 86000)])}
    census = parse_census(sets, NOW, {}, lan=["10.41.0.0/16"])
    assert [f.ip for f in census.forwarding] == ["10.41.20.13"]


def test_the_rules_count_only_new_connections_from_the_lan_in_the_kernel() -> None:
    rules = census_rules('iifname "br-lan"')
    assert rules[0].strip() == 'iifname "br-lan" update @lan_clients4 { ip saddr . ether saddr counter }'
    assert any("th dport { 500, 1194, 1701, 1723, 4500, 51820 }" in rule for rule in rules)
    assert all("timeout 86400s" in decl and "flags dynamic, timeout" in decl for decl in census_declarations())
