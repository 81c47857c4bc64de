"""The review pack as one self-contained HTML document (styles inline, charts as SVG, nothing
fetched), for Chromium to print. Every value is escaped: names, hosts and notes were typed by
people or came from the network."""

from __future__ import annotations

import functools
from datetime import datetime, tzinfo
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from markupsafe import Markup

from schoolgate.console import charts
from schoolgate.review.facts import ReviewFacts


def _zone(context: Context) -> tzinfo:
    """The school's time zone (the policy's, through the year being reviewed)."""
    facts: ReviewFacts = context["facts"]
    return facts.year.zone


@pass_context
def _when(context: Context, moment: datetime | None) -> str:
    if moment is None:
        return ""
    local = moment.astimezone(_zone(context))
    return f"{local.day} {local:%b %Y %H:%M}"


@pass_context
def _day(context: Context, moment: Any) -> str:
    if moment is None:
        return ""
    if isinstance(moment, datetime):
        moment = moment.astimezone(_zone(context)).date()
    return f"{moment.day} {moment:%b %Y}"


@functools.cache
def environment() -> Environment:
    env = Environment(loader=PackageLoader("schoolgate.review", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html",)), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["day"] = _day
    return env


def charts_for(facts: ReviewFacts) -> dict[str, Markup]:
    made: dict[str, Markup] = {}
    if any(sum(v) for v in facts.blocked_by_month.values()):
        made["blocked"] = charts.stacked_columns(
            "Blocked attempts each month, by role", facts.month_labels,
            [charts.Series(role, values) for role, values in facts.blocked_by_month.items()], width=640, height=240)
    if facts.blocked_by_category:
        made["categories"] = charts.horizontal_bars("Blocked attempts by category", facts.blocked_by_category,
                                                    width=640)
    if any(facts.selftests_by_month["passed"]) or any(facts.selftests_by_month["failed"]):
        made["selftests"] = charts.stacked_columns(
            "Self-tests each month: passed and failed", facts.month_labels,
            [charts.Series("passed", facts.selftests_by_month["passed"]),
             charts.Series("failed", facts.selftests_by_month["failed"])], width=640, height=200)
    if facts.alerts_by_kind:
        made["alerts"] = charts.horizontal_bars(
            "Alert cases by kind", [(kind.replace("_", " "), total) for kind, _, total in facts.alerts_by_kind],
            width=640)
    return made


def render_html(facts: ReviewFacts) -> str:
    return environment().get_template("pack.html").render(facts=facts, charts=charts_for(facts))
