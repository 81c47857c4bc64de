"""`schoolgate dns`: run the DNS resolver in the foreground."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "dns",
        help="run the filtering DNS resolver in the foreground",
        description="Run the filtering DNS resolver in the foreground (logs to stderr; stops on SIGTERM).",
    )
    parser.add_argument("--config", required=True, help="the appliance configuration (schoolgate.toml)")
    parser.add_argument(
        "--listen", action="append", default=[], metavar="ADDR:PORT",
        help="address to serve on, UDP and TCP (repeatable; default: dns.listen)",
    )
    parser.add_argument(
        "--upstream", action="append", default=[], metavar="ADDR:PORT",
        help="upstream resolver (repeatable; default: dns.upstreams)",
    )
    parser.add_argument("--workers", type=int, default=None, help="worker processes sharing the port")
    parser.add_argument("--clock-file", default=None, help="read the time from this file (tests and the lab)")
    parser.add_argument("--database", default=None, help="database URL (default: from the configuration)")
    parser.add_argument(
        "--events-fd", type=int, default=None,
        help="the inherited sending end of an event channel another process writes from (given by "
        "`schoolgate run`); without it the daemon forks an event writer of its own",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from schoolgate.config import load_config_or_report
    from schoolgate.dns.daemon import DnsOptions, run
    from schoolgate.dns.upstream import parse_address
    from schoolgate.tomlpos import ConfigError

    config = load_config_or_report(args.config, "schoolgate dns")
    if config is None:
        return 2
    options = DnsOptions(
        config=config,
        listen=list(args.listen),
        upstreams=list(args.upstream),
        workers=args.workers if args.workers is not None else config.dns.workers,
        clock_file=args.clock_file,
        database_url=args.database,
    )
    if args.events_fd is not None:
        from schoolgate.store.events.channel import inherited_end

        try:
            options.events_socket = inherited_end(args.events_fd, f"--events-fd {args.events_fd}")
        except ValueError as err:
            print(f"schoolgate dns: {err}", file=sys.stderr)
            return 2
    for address in [*options.listen_addresses, *options.upstream_addresses]:
        try:
            parse_address(address)
        except (ValueError, OSError):
            print(f"schoolgate dns: {address!r} is not an address, e.g. 127.0.0.1:53 or [::1]:53", file=sys.stderr)
            return 2
    if options.workers < 1:
        print("schoolgate dns: --workers must be at least 1", file=sys.stderr)
        return 2
    try:
        return run(options)
    except ConfigError as err:
        print(f"schoolgate dns: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"schoolgate dns: {err}", file=sys.stderr)
        return 1
