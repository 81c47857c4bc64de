"""`schoolgate scheduler`: the digest, alert scans and emails, expiries, retention, heartbeat."""

from __future__ import annotations

import argparse
import sys

JOBS = ("alerts", "coverage", "digest", "expiry", "export", "lists", "retention", "rollups", "selftest")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "scheduler",
        help="run the scheduler (daily digest, alerts, expiry, retention, self-tests)",
        description="Runs the scheduled jobs in the school's time (the policy's [school] timezone) until SIGTERM. "
        "With --run, runs one job now and exits.",
    )
    parser.add_argument("--config", required=True, help="the appliance configuration (schoolgate.toml)")
    parser.add_argument("--run", choices=JOBS, help="run one job now and exit (e.g. to resend today's digest)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from schoolgate.clock import clock_from_env
    from schoolgate.config import load_config_or_report
    from schoolgate.scheduler.runner import SchedulerService
    from schoolgate.services.mailer import MailError
    from schoolgate.store.db import make_engine, session_factory

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_config_or_report(args.config, "schoolgate scheduler")
    if config is None:
        return 2
    engine = make_engine(config.database_url)
    try:
        service = SchedulerService(config, session_factory(engine), clock_from_env())
    except (ValueError, OSError, MailError) as err:
        print(f"schoolgate scheduler: {err}", file=sys.stderr)
        return 2
    try:
        if args.run:
            result = getattr(service, f"run_{args.run}")()
            print(f"{args.run}: {result}")
            return 0
        service.run_forever()
        return 0
    finally:
        engine.dispose()
