"""The blocked-address sets as an nft script, and writes only when the lists change."""

from __future__ import annotations

import ipaddress

from schoolgate.gateway.blocked import BlockedSets, blocked_script


def test_the_script_empties_and_refills_both_sets_with_merged_networks() -> None:
    networks = [ipaddress.ip_network(n) for n in ("118.123.4.0/24", "118.123.4.224/32", "93.184.216.34/32",
                                                  "2a00:1450:4000::/40")]
    script = blocked_script(networks, "bridge")
    assert script.splitlines() == [
        "flush set bridge schoolgate blocked4",
        "flush set bridge schoolgate blocked6",
        "add element bridge schoolgate blocked4 { 93.184.216.34, 118.123.4.0/24 }",
        "add element bridge schoolgate blocked6 { 2a00:1450:4000::/40 }",
    ]
    assert blocked_script([]) == "flush set inet schoolgate blocked4\nflush set inet schoolgate blocked6\n"


def test_large_sets_are_written_in_chunks() -> None:
    networks = [ipaddress.ip_network(f"93.{i // 256}.{i % 256}.1/32") for i in range(4500)]
    lines = blocked_script(networks).splitlines()
    assert len(lines) == 2 + 3 and all(line.count(",") < 2000 for line in lines)


def test_the_sets_are_written_only_when_the_lists_change() -> None:
    scripts: list[str] = []
    sets = BlockedSets(run=scripts.append)
    one = [ipaddress.ip_network("93.184.216.34/32")]
    assert sets.sync(one) and not sets.sync(list(one))
    assert sets.sync(one, force=True)  # after the ruleset was applied afresh
    assert sets.sync([]) and len(scripts) == 3
