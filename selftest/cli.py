"""`schoolgate selftest --config C [--json]`: prove that the running appliance filters as the policy says."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "selftest",
        help="check that the running appliance filters as the policy says, from each role's network",
        description="Asks the running appliance, from its own address in each network of the policy, for "
        "a test name of every category and more, compares each answer with the policy, checks the daemons, "
        "lists, upstream DNS and clock, records the run in the check log and e-mails the technician (and, "
        "when filtering itself is down, the DSL and the headteacher) if anything failed. Exit status 0: "
        "passed, 1: something failed, 2: the configuration is wrong.",
    )
    parser.add_argument("--config", required=True, help="the appliance configuration (schoolgate.toml)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-record", action="store_true", help="do not add the run to the check log")
    parser.add_argument("--no-mail", action="store_true", help="do not e-mail anyone about a failure")
    parser.add_argument("--trigger", default="command line", help=argparse.SUPPRESS)
    parser.set_defaults(func=_selftest)


def _selftest(args: argparse.Namespace) -> int:
    import logging

    from schoolgate.clock import clock_from_env
    from schoolgate.config import load_config_or_report
    from schoolgate.scheduler.jobs import default_mailer
    from schoolgate.selftest.run import run_selftest
    from schoolgate.services.mailer import MailError
    from schoolgate.store.db import make_engine, session_factory

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = load_config_or_report(args.config, "schoolgate selftest")
    if config is None:
        return 2
    try:
        mailer = None if args.no_mail else default_mailer(config)
    except MailError as err:
        print(f"schoolgate selftest: {err} (continuing without e-mail)", file=sys.stderr)
        mailer = None
    engine = make_engine(config.database_url)
    clock = clock_from_env()
    try:
        report = run_selftest(config, session_factory(engine), clock.now(), trigger=args.trigger,
                              clock_source=clock, mailer=mailer, record=not args.no_record)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for result in report.results:
            print(result.line())
        verdict = "PASSED" if report.passed else ("FAILED: FILTERING IS NOT WORKING" if report.filtering_down
                                                   else "FAILED")
        print(f"self-test {verdict}: {len(report.results)} checks, {len(report.failures)} failed, "
              f"{report.duration_ms} ms" + (f"; check log entry {report.check_id}" if report.check_id else ""))
        if report.notified:
            print(f"e-mailed: {', '.join(report.notified)}")
    return 0 if report.passed else 1
