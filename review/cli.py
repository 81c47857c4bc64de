"""`schoolgate review-pack --config C --year 2026-27 --out review.pdf`: the annual review for governors."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser(
        "review-pack",
        help="the annual filtering and monitoring review pack (PDF) for governors",
        description="Writes the year's review: the policy in plain words, category decisions, changes and "
        "approvals, requests and reports, alert counts, the check log, coverage, retention and what the "
        "appliance does not see. Counts only; --names includes pupils' and staff names.",
    )
    parser.add_argument("--config", required=True, help="the appliance configuration (schoolgate.toml)")
    parser.add_argument("--year", required=True, help="the school year, e.g. 2026-27 (1 September to 31 August)")
    parser.add_argument("--out", required=True, help="where to write the PDF")
    parser.add_argument("--names", action="store_true", help="name pupils and staff (a safeguarding record)")
    parser.add_argument("--html", action="store_true", help="write HTML instead of PDF (no Chromium needed)")
    parser.set_defaults(func=_review_pack)


def _review_pack(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from schoolgate.clock import clock_from_env
    from schoolgate.config import load_config_or_report
    from schoolgate.policy import load_policy
    from schoolgate.review.facts import ReviewError, Year, gather
    from schoolgate.review.pdf import PdfError, html_to_pdf
    from schoolgate.review.render import render_html
    from schoolgate.services.actor import Actor
    from schoolgate.services.common import audit
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.tomlpos import ConfigError

    config = load_config_or_report(args.config, "schoolgate review-pack")
    if config is None:
        return 2
    try:
        policy = load_policy(config.policy)
        year = Year.parse(args.year, policy.school.zone)
    except (ReviewError, ConfigError) as err:
        print(f"schoolgate review-pack: {err}", file=sys.stderr)
        return 2
    started = time.monotonic()
    now = clock_from_env().now()
    engine = make_engine(config.database_url)
    try:
        sessions = session_factory(engine, readonly=True)
        with sessions() as session:
            facts = gather(config, session, policy, year, now, include_names=args.names)
        html = render_html(facts)
        out = Path(args.out)
        if args.html:
            out.write_text(html, encoding="utf-8")
            size = out.stat().st_size
        else:
            size = html_to_pdf(html, out)
        with session_factory(engine)() as session:
            audit(session, site=config.site.id, actor=Actor("system:command-line", "command line"),
                  action="review_pack.generate", object_type="review", object_id=year.label,
                  detail={"names": args.names, "bytes": size}, now=now)
            session.commit()
    except PdfError as err:
        print(f"schoolgate review-pack: {err}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"wrote {out} ({size} bytes) in {time.monotonic() - started:.1f} s")
    return 0
