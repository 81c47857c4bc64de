"""`schoolgate proxy` (the daemon and its counters) and `schoolgate ca` (the school CA).

    schoolgate proxy --config schoolgate.toml            run the proxy until SIGTERM
    schoolgate proxy stats --config schoolgate.toml      print the running proxy's counters
    schoolgate proxy events --config F --events-fd N     the workers' event-writing process
                                                         (`schoolgate run` starts it)
    schoolgate ca init --config F [--owner USER] [--force]
    schoolgate ca export --config F --out DIR           schoolgate-ca.pem and schoolgate-ca.crt (DER)
    schoolgate ca show --config F                        subject, SHA-256 fingerprint, expiry
    schoolgate ca issue --config F --host NAME [--ip ADDR] [--out DIR]   a server certificate

Heavy imports (mitmproxy, cryptography) happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from schoolgate.config import load_config_or_report


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    proxy = sub.add_parser(
        "proxy",
        help="run the transparent filtering proxy (or print its counters)",
        description="Run the transparent filtering proxy; `stats` prints the running proxy's counters.",
    )
    proxy.add_argument("action", nargs="?", choices=("run", "stats", "events"), default="run")
    proxy.add_argument("--config", required=True, help="the appliance configuration (schoolgate.toml)")
    proxy.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    proxy.add_argument("--workers", type=int, default=None, help="workers sharing the port (default: proxy.workers)")
    proxy.add_argument("--worker", type=int, default=1, help="which of them this is (1..workers)")
    proxy.add_argument(
        "--events-fd", type=int, default=None,
        help="the inherited event channel (given by `schoolgate run`): a worker sends its events on it, "
        "`events` reads and writes them; without it the proxy writes its own events",
    )
    proxy.set_defaults(func=_proxy)

    ca = sub.add_parser("ca", help="create, export and inspect the school's certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", metavar="ACTION", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="the appliance configuration (the CA lives in proxy.ca_dir)")
        p.add_argument("--ca-dir", help="the CA directory (overrides the configuration)")

    init = ca_sub.add_parser("init", help="create the school CA")
    common(init)
    init.add_argument("--owner", help="user that owns the key (the proxy's user); needs root")
    init.add_argument("--name", help="the school's name in the certificate (default: site.name)")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=_ca_init)

    export = ca_sub.add_parser("export", help="write the CA certificate for installing on devices")
    common(export)
    export.add_argument("--out", default=".", help="folder for schoolgate-ca.pem and schoolgate-ca.crt")
    export.set_defaults(func=_ca_export)

    show = ca_sub.add_parser("show", help="print the CA's subject, fingerprint and expiry")
    common(show)
    show.set_defaults(func=_ca_show)

    issue = ca_sub.add_parser("issue", help="issue a TLS server certificate signed by the school CA")
    common(issue)
    issue.add_argument("--host", action="append", default=[], help="a DNS name (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="an IP address (repeatable)")
    issue.add_argument("--out", help="folder for the certificate and key (default: <ca-dir>/issued)")
    issue.add_argument("--name", help="file name stem (default: the first host)")
    issue.set_defaults(func=_ca_issue)


def _proxy(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    if args.action == "stats":
        return _stats(config)
    import asyncio
    import logging

    from schoolgate.ca import CAError
    from schoolgate.proxy import daemon
    from schoolgate.tomlpos import ConfigError

    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from schoolgate.proxy.events import events_socket, run_event_writer

    workers = args.workers if args.workers is not None else config.proxy.workers
    if workers < 1 or not 1 <= args.worker <= workers:
        print(f"schoolgate proxy: --worker {args.worker} of --workers {workers}: need 1 <= worker <= workers",
              file=sys.stderr)
        return 2
    if args.action == "events" and args.events_fd is None:
        print("schoolgate proxy events: needs --events-fd (schoolgate run gives it)", file=sys.stderr)
        return 2
    try:
        channel = events_socket(args.events_fd) if args.events_fd is not None else None
        if args.action == "events":
            assert channel is not None
            return run_event_writer(config, channel)
        # On a SpliceSelector: the spliced sockets' readiness comes from the loop's one wait.
        from schoolgate.proxy.relay import new_event_loop

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(daemon.run(config, worker=args.worker, workers=workers, events=channel))
    except (CAError, ConfigError, ValueError) as err:
        print(f"schoolgate proxy: {err}", file=sys.stderr)
        return 2


def _stats(config: Any) -> int:
    from schoolgate.proxy.daemon import stats_path_of

    workers = max(1, config.proxy.workers)
    found: dict[str, Any] = {}
    for worker in range(1, workers + 1):
        path = stats_path_of(config, worker, workers)
        try:
            found[str(worker)] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            print(f"schoolgate proxy stats: {path} not found (is the proxy running?)", file=sys.stderr)
            return 1
        except ValueError as err:
            print(f"schoolgate proxy stats: {path}: {err}", file=sys.stderr)
            return 1
    # One worker: its stats as they were; several: each worker's, by number.
    print(json.dumps(found["1"] if workers == 1 else found, indent=2, sort_keys=True))
    return 0


def _ca_dir(args: argparse.Namespace) -> tuple[Path | None, Any]:
    config = None
    if args.config:
        config = load_config_or_report(args.config)
        if config is None:
            return None, None
    if args.ca_dir:
        return Path(args.ca_dir), config
    if config is None:
        print("schoolgate ca: give --config or --ca-dir", file=sys.stderr)
        return None, None
    from schoolgate.proxy.daemon import ca_dir_of

    return ca_dir_of(config), config


def _print_info(info: Any) -> None:
    print(f"subject:     {info.subject}")
    print(f"sha256:      {info.sha256_fingerprint}")
    print(f"valid from:  {info.not_before:%Y-%m-%d %H:%M} UTC")
    print(f"expires:     {info.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"file:        {info.path}")


def _ca_init(args: argparse.Namespace) -> int:
    from schoolgate.ca import CAError, init_ca

    ca_dir, config = _ca_dir(args)
    if ca_dir is None:
        return 2
    name = args.name or (config.site.name if config is not None else "School")
    try:
        info = init_ca(ca_dir, school_name=name, owner=args.owner, force=args.force)
    except (CAError, PermissionError) as err:
        print(f"schoolgate ca init: {err}", file=sys.stderr)
        return 1
    _print_info(info)
    return 0


def _ca_export(args: argparse.Namespace) -> int:
    from schoolgate.ca import CAError, export_ca

    ca_dir, _ = _ca_dir(args)
    if ca_dir is None:
        return 2
    try:
        pem, der = export_ca(ca_dir, args.out)
    except CAError as err:
        print(f"schoolgate ca export: {err}", file=sys.stderr)
        return 1
    print(pem)
    print(der)
    return 0


def _ca_show(args: argparse.Namespace) -> int:
    from schoolgate.ca import CAError, show_ca

    ca_dir, _ = _ca_dir(args)
    if ca_dir is None:
        return 2
    try:
        _print_info(show_ca(ca_dir))
    except CAError as err:
        print(f"schoolgate ca show: {err}", file=sys.stderr)
        return 1
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    from schoolgate.ca import CAError, issue_server_cert

    ca_dir, _ = _ca_dir(args)
    if ca_dir is None:
        return 2
    try:
        cert, key = issue_server_cert(ca_dir, args.host, args.ip, out_dir=args.out, name=args.name)
    except CAError as err:
        print(f"schoolgate ca issue: {err}", file=sys.stderr)
        return 1
    print(cert)
    print(key)
    return 0
