"""`schoolgate net apply|show|status|watch|census|down`: the appliance's network, from schoolgate.toml.

apply  - pyroute2 (links, the bridge in bridge mode, addresses, sysctls, pinned neighbours),
         then the nftables ruleset of the configured mode in one `nft -f` transaction.
         Idempotent: the tables are replaced as a whole; the addresses DNS learnt at run time
         are carried over with the time they had left.
show   - print the ruleset that apply would load (no root needed).
status - the schoolgate table's counters and the number of watched addresses.
watch  - read refused circumvention attempts from NFLOG and write them as events; take the
         census of the LAN's devices every minute.
census - take that census now.
down   - remove the schoolgate table (forwarding sysctls are left as they are).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from schoolgate.config import load_config_or_report


def register(sub: argparse._SubParsersAction[Any]) -> None:
    net = sub.add_parser("net", help="the gateway's network setup (nftables, addresses, sysctls)")
    net_sub = net.add_subparsers(dest="net_command", metavar="ACTION", required=True)
    for name, helptext, handler in (
        ("apply", "set up addresses and sysctls, load the nftables ruleset", _apply),
        ("show", "print the nftables ruleset without applying it", _show),
        ("status", "print the ruleset's counters and watched addresses", _status),
        ("watch", "turn refused circumvention attempts (NFLOG) into events", _watch),
        ("census", "record which devices the gateway forwards for, now (net watch does it every minute)",
         _census),
        ("down", "remove the schoolgate nftables table", _down),
    ):
        parser = net_sub.add_parser(name, help=helptext)
        parser.add_argument("--config", required=True, help="the appliance's schoolgate.toml")
        if name == "apply":
            parser.add_argument(
                "--rules-only", action="store_true", help="load the ruleset, leave links and sysctls alone"
            )
            parser.add_argument(
                "--flush-watched",
                action="store_true",
                help="drop the addresses DNS learnt instead of carrying them over",
            )
        parser.set_defaults(func=handler)


def policy_block_addresses(config: Any) -> tuple[str, str]:
    """The policy's block addresses; ("", "") if the policy cannot be read.

    A broken policy must not leave the school unfiltered at boot: the ruleset then uses the
    appliance's own addresses (the usual block address) and the error is reported.
    """
    from schoolgate.policy import load_policy
    from schoolgate.tomlpos import ConfigError

    try:
        school = load_policy(config.policy).school
    except (ConfigError, OSError) as err:
        print(f"schoolgate: warning: policy not read ({err}); block address = appliance address",
              file=sys.stderr)
        return "", ""
    return school.block_ipv4 or "", school.block_ipv6 or ""


def bridge_mac(config: Any) -> str:
    """Bridge mode: the bridge's MAC as `net apply` pins it (the LAN port's); "" otherwise."""
    from schoolgate.gateway.netsetup import NetSetupError, bridge_mac_for
    from schoolgate.gateway.ruleset import RulesetError

    if config.network.mode != "bridge":
        return ""
    try:
        return bridge_mac_for(config.network.lan_interface)
    except NetSetupError as err:
        raise RulesetError(f"network.lan_interface: {err}") from err


def selftest_probes(config: Any) -> tuple[str, ...]:
    """The self-test's probe addresses (schoolgate.selftest.vantage); () if they cannot be had.

    Without them the appliance filters as before; only its self-test cannot ask from each
    network, and says so.
    """
    from schoolgate.policy import load_policy
    from schoolgate.selftest.vantage import VantageError, probe_addresses
    from schoolgate.tomlpos import ConfigError

    if not config.selftest.enabled:
        return ()
    try:
        policy = load_policy(config.policy)
        reserved = (config.network.appliance_ipv4, policy.school.block_ipv4)
        return tuple(p.address for p in probe_addresses(policy, config.selftest, reserved=reserved))
    except (ConfigError, OSError, VantageError) as err:
        print(f"schoolgate: warning: no self-test addresses ({err})", file=sys.stderr)
        return ()


def build_ruleset(config: Any) -> str:
    from schoolgate.gateway.ruleset import plan_from_config, render_ruleset

    network = config.network
    block_ipv4, block_ipv6 = policy_block_addresses(config)
    plan = plan_from_config(
        mode=network.mode,
        bridge_interface=network.bridge_interface,
        bridge_mac=bridge_mac(config),
        router_ipv4=network.router_ipv4,
        school_dns_servers=network.school_dns_servers,
        lan_interface=network.lan_interface,
        wan_interface=network.wan_interface,
        dns_listen=config.dns.listen,
        proxy_listen=config.proxy.listen,
        appliance_ipv4=network.appliance_ipv4,
        appliance_ipv6=network.appliance_ipv6,
        watched_prefixes=network.watched_prefixes,
        block_ipv4=block_ipv4,
        block_ipv6=block_ipv6,
        doh_addresses=network.doh_addresses,
        include_known_doh=network.known_doh_addresses,
        nflog_group=network.nflog_group,
        watched_timeout_s=config.dns.watched_set_timeout_s,
        lan_cidrs=network.lan_cidrs,
        probe_addresses=selftest_probes(config),
    )
    return render_ruleset(plan)


def _ruleset_or_error(config: Any) -> str | None:
    from schoolgate.gateway.ruleset import RulesetError

    try:
        return build_ruleset(config)
    except RulesetError as err:
        print(f"schoolgate: {config.source}: {err}", file=sys.stderr)
        return None


def _show(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    ruleset = _ruleset_or_error(config) if config else None
    if ruleset is None:
        return 2
    sys.stdout.write(ruleset)
    return 0


def _pinned_devices(config: Any) -> tuple[tuple[str, str], ...]:
    """Registered devices with both a fixed address and a MAC (empty if no database yet)."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.models import Device

    engine = make_engine(config.database_url)
    try:
        with session_factory(engine)() as session:
            rows = session.execute(
                select(Device.ip, Device.mac).where(
                    Device.site == config.site.id, Device.ip.is_not(None), Device.mac.is_not(None)
                )
            ).all()
    except SQLAlchemyError:
        return ()
    finally:
        engine.dispose()
    return tuple((str(ip), str(mac)) for ip, mac in rows if ip and mac)


def _apply(args: argparse.Namespace) -> int:
    from schoolgate.gateway.netsetup import (
        InterfacePlan,
        NetSetupError,
        apply_interfaces,
        apply_sysctls,
        desired_sysctls,
        lan_addresses,
    )
    from schoolgate.gateway.nft import NftError, apply_ruleset
    from schoolgate.gateway.sets import watched_family

    config = load_config_or_report(args.config)
    ruleset = _ruleset_or_error(config) if config else None
    if config is None or ruleset is None:
        return 2
    network = config.network
    if not args.rules_only:
        plan = InterfacePlan(
            mode=network.mode,
            lan_interface=network.lan_interface,
            wan_interface=network.wan_interface,
            bridge_interface=network.bridge_interface,
            router_ipv4=network.router_ipv4,
            lan_addresses=lan_addresses(
                [network.appliance_ipv4, network.appliance_ipv6], network.lan_cidrs
            ),
            ipv6=bool(network.appliance_ipv6),
            pinned_neighbours=_pinned_devices(config),
            probe_addresses=selftest_probes(config),
        )
        try:
            for change in apply_interfaces(plan) + apply_sysctls(desired_sysctls(plan)):
                print(f"changed: {change}")
        except (NetSetupError, OSError) as err:
            print(f"schoolgate: network setup failed: {err}", file=sys.stderr)
            return 1
    try:
        kept = apply_ruleset(
            ruleset, keep_learnt=not args.flush_watched, watched_family=watched_family(network.mode)
        )
    except (NftError, OSError) as err:
        print(f"schoolgate: nft refused the ruleset: {err}", file=sys.stderr)
        return 1
    tables = "tables bridge and inet schoolgate" if network.mode == "bridge" else "table inet schoolgate"
    print(f"{network.mode} mode: ruleset loaded ({tables}); {kept} learnt watched addresses kept")
    return 0


def _status(args: argparse.Namespace) -> int:
    from schoolgate.gateway.nft import NftError, live_watched_elements, read_counters

    if load_config_or_report(args.config) is None:
        return 2
    try:
        counters = read_counters()
        watched = live_watched_elements()
    except (NftError, OSError) as err:
        print(f"schoolgate: {err}", file=sys.stderr)
        return 1
    if not counters:
        print("the schoolgate table is not loaded")
        return 1
    for name, (packets, size) in sorted(counters.items()):
        print(f"{name:20} {packets:>12} packets {size:>14} bytes")
    print(f"{'watched addresses':20} {len(watched):>12}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    import logging

    from schoolgate.gateway.circumvention import run_watcher

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run_watcher(config)


def _census(args: argparse.Namespace) -> int:
    from schoolgate.clock import clock_from_env
    from schoolgate.gateway.census import read_census, record
    from schoolgate.gateway.nft import NftError
    from schoolgate.store.db import make_engine, session_factory

    config = load_config_or_report(args.config)
    if config is None:
        return 2
    try:
        census = read_census(clock_from_env().now(), lan=config.network.lan_cidrs)
    except (NftError, OSError) as err:
        print(f"schoolgate: {err}", file=sys.stderr)
        return 1
    engine = make_engine(config.database_url)
    try:
        touched = record(config, session_factory(engine), census)
    finally:
        engine.dispose()
    for seen in census.forwarding:
        print(f"forwarding  {seen.ip:<39} {seen.mac}  {seen.connections:>6} connections")
    for use in census.vpn:
        print(f"vpn         {use.ip:<39} {use.mac}  {use.label} x{use.connections}")
    print(f"{len(census.neighbours)} neighbours; {touched} devices recorded")
    return 0


def _down(args: argparse.Namespace) -> int:
    from schoolgate.gateway.nft import NftError, remove_table

    if load_config_or_report(args.config) is None:
        return 2
    try:
        remove_table()
    except (NftError, OSError) as err:
        print(f"schoolgate: {err}", file=sys.stderr)
        return 1
    return 0
