"""`schoolgate lab start|up|down|status|clock|browse|request|selftest`: the network lab (needs root)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TOPOLOGIES = ("gateway", "bridge", "dns-only")  # == schoolgate.lab.topology.TOPOLOGIES (kept cheap to import)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    lab = sub.add_parser("lab", help="the network lab: a school LAN, gateway and internet in namespaces")
    lab.description = "start|up|down|status|clock|browse|request|selftest"
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--prefix", default="sg", help="namespace name prefix (default: sg)")
        parser.add_argument(
            "--state-root", default="/run/schoolgate-lab", help="where the lab keeps its state directory"
        )

    up = lab_sub.add_parser("up", help="build the lab and start the appliance daemons in it")
    common(up)
    up.add_argument("--policy", help="the policy file (default: deploy/policy.example.toml)")
    up.add_argument("--clock", help="the daemons' initial time, ISO 8601 with offset")
    up.add_argument("--no-daemons", action="store_true", help="network, internet and ruleset only")
    up.add_argument("--topology", choices=TOPOLOGIES, default="gateway",
                    help="how the appliance sits in the network (its [network] mode; default: gateway)")
    up.set_defaults(func=_up)

    down = lab_sub.add_parser("down", help="stop the lab's processes and delete its namespaces")
    common(down)
    down.set_defaults(func=_down)

    status = lab_sub.add_parser("status", help="what is running")
    common(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    start = lab_sub.add_parser(
        "start", help="build the lab, run the whole appliance in it and wait (Ctrl-C tears it down)"
    )
    common(start)
    start.add_argument("--policy", help="the policy file (default: deploy/policy.example.toml)")
    start.add_argument("--clock", help="the daemons' initial time, ISO 8601 with offset")
    start.add_argument("--topology", choices=TOPOLOGIES, default="gateway",
                       help="how the appliance sits in the network (its [network] mode; default: gateway)")
    start.add_argument("--console-port", type=int, default=8443,
                       help="the host's loopback port that leads to the console (default 8443; 0: any free port)")
    start.set_defaults(func=_start)

    browse = lab_sub.add_parser("browse", help="load a URL on a lab device and print what it sees")
    common(browse)
    browse.add_argument("device", help="pupil, pupilca, staff, guest or sup (and phone in the dns-only lab)")
    browse.add_argument("url")
    browse.set_defaults(func=_browse)

    request = lab_sub.add_parser("request", help="send the block page's access request form from a lab device")
    common(request)
    request.add_argument("device", help="pupil, pupilca, staff, guest or sup")
    request.add_argument("url", help="the blocked URL")
    request.add_argument("--reason", required=True, help="why access is needed")
    request.add_argument("--name", default="Lab pupil", help="who asks (default: Lab pupil)")
    request.add_argument("--staff", default="", help="the member of staff supporting the request")
    request.set_defaults(func=_request)

    clock = lab_sub.add_parser("clock", help="set the daemons' clock, e.g. 2026-11-23T12:30:00+00:00")
    common(clock)
    clock.add_argument("instant")
    clock.set_defaults(func=_clock)

    selftest = lab_sub.add_parser("selftest", help="run the self-test from the lab devices (or the gateway)")
    common(selftest)
    selftest.add_argument("--from", dest="vantage", choices=("devices", "gateway"), default="devices",
                          help="ask from the lab devices' namespaces (default) or, as an appliance does, "
                               "from the gateway's probe addresses")
    selftest.add_argument("--json", action="store_true")
    selftest.set_defaults(func=_selftest)


def _selftest(args: argparse.Namespace) -> int:
    from schoolgate.lab.selftest import run_lab_selftest

    report = run_lab_selftest(_lab(args), from_devices=args.vantage == "devices", trigger="lab")
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for result in report.results:
            print(result.line())
        print(f"self-test {'PASSED' if report.passed else 'FAILED'}: {len(report.results)} checks, "
              f"{len(report.failures)} failed, {report.duration_ms} ms")
    return 0 if report.passed else 1


def _lab(args: argparse.Namespace, **kwargs: Any) -> Any:
    from schoolgate.lab.lab import Lab

    return Lab(args.prefix, state_root=Path(args.state_root), **kwargs)


def _up(args: argparse.Namespace) -> int:
    import logging

    from schoolgate.lab.lab import DEFAULT_CLOCK, DEFAULT_POLICY
    from schoolgate.lab.netns import LabError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        lab = _lab(args, policy=Path(args.policy) if args.policy else DEFAULT_POLICY,
                   daemons=not args.no_daemons, topology=args.topology)
        state = lab.up(clock=args.clock or DEFAULT_CLOCK)
    except (LabError, ValueError, OSError) as err:
        print(f"schoolgate lab: {err}", file=sys.stderr)
        return 1
    print(f"lab {state.prefix!r} is up; state in {state.state_dir}")
    for name, info in state.processes.items():
        print(f"  {name:9} pid {info['pid']:>7} in {info['namespace']}  log {info['log']}")
    return 0


def _start(args: argparse.Namespace) -> int:
    import logging

    from schoolgate.lab.lab import DEFAULT_CLOCK, DEFAULT_POLICY
    from schoolgate.lab.start import run_foreground

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    return run_foreground(
        args.prefix,
        Path(args.state_root),
        args.console_port,
        Path(args.policy) if args.policy else DEFAULT_POLICY,
        args.clock or DEFAULT_CLOCK,
        topology=args.topology,
    )


def _browse(args: argparse.Namespace) -> int:
    from schoolgate.lab.device import browse

    lab = _lab(args)
    if not _device_ok(lab, args.device):
        return 2
    seen = browse(lab, args.device, args.url)
    print(seen.render())
    return 0 if seen.status else 1


def _request(args: argparse.Namespace) -> int:
    from schoolgate.lab.device import request_access

    lab = _lab(args)
    if not _device_ok(lab, args.device):
        return 2
    try:
        sent = request_access(lab, args.device, args.url, reasons=args.reason, requester=args.name,
                              staff_name=args.staff)
    except OSError as err:
        print(f"schoolgate lab: the console did not answer: {err}", file=sys.stderr)
        return 1
    if sent.reference is None:
        print(f"schoolgate lab: the request was not accepted (HTTP {sent.status}):\n{sent.text}", file=sys.stderr)
        return 1
    print(f"request sent: reference {sent.reference}, status code {sent.token}")
    return 0


def _device_ok(lab: Any, key: str) -> bool:
    from schoolgate.lab import netns

    devices = [d.key for d in lab.wiring.devices]
    if key not in devices:
        print(f"schoolgate lab: no device {key!r} (have: {', '.join(devices)})", file=sys.stderr)
        return False
    if not netns.exists(lab.device_namespace(key)):
        print(f"schoolgate lab: lab {lab.names.prefix!r} is not up (as root: ./deploy/dev.sh start)", file=sys.stderr)
        return False
    return True


def _down(args: argparse.Namespace) -> int:
    for line in _lab(args).down():
        print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    status = _lab(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"lab {status['prefix']!r}, {status['topology']} topology ({status['state_dir']}), clock {status['clock']}")
    for name, present in status["namespaces"].items():
        print(f"  namespace {name:12} {'present' if present else 'absent'}")
    for name, info in status["processes"].items():
        print(f"  {name:9} pid {info['pid']:>7} {'running' if info['alive'] else 'stopped'}")
    for name, info in status.get("daemons", {}).items():
        state = f"pid {info['pid']:>7} running" if info["alive"] else info.get("state") or "restarting"
        print(f"    {name:9} {state}, restarts {info['restarts']}, unclean exits {info['unclean_exits']}, "
              f"events maybe lost {info['events_maybe_lost']}")
    up = all(status["namespaces"].values()) and all(p["alive"] for p in status["processes"].values())
    return 0 if up else 1


def _clock(args: argparse.Namespace) -> int:
    from datetime import datetime

    try:
        instant = datetime.fromisoformat(args.instant)
    except ValueError:
        print(f"schoolgate lab: {args.instant!r} is not an ISO 8601 time", file=sys.stderr)
        return 2
    if instant.tzinfo is None:
        print("schoolgate lab: give the time with an offset, e.g. +00:00", file=sys.stderr)
        return 2
    _lab(args).set_clock(instant)
    print(f"lab clock set to {instant.isoformat()}")
    return 0
