"""The e-mails schoolgate sends, rendered from Jinja templates (services/templates/mail/).

Like the console's pages, every value a template echoes is escaped in the HTML part; the
plain-text part puts attacker-controlled text (hosts, URLs, device and person names) through
`one_line`, so it cannot forge lines of its own. A message is a pair of templates,
`NAME.txt` and `NAME.html`, rendered with the same context.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context

from schoolgate.timewords import short_instant_words


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str
    text: str
    html: str


def one_line(value: object, limit: int = 300) -> str:
    """Text on one line, at most `limit` characters: no forged lines in the plain-text part."""
    return " ".join(str(value).split())[:limit]


def local_time(when: datetime | None, zone: tzinfo) -> str:
    """A time in a mail, in the school's time zone (the policy's `[school] timezone`) and in
    words: "Mon 23 Nov 2026, 10:15 am" (schoolgate.timewords, as on the console's pages)."""
    if when is None:
        return ""
    return short_instant_words(when, zone)


@pass_context
def _local_filter(context: Context, when: datetime | None) -> str:
    return local_time(when, context["zone"])


def link(base_url: str, path: str) -> str:
    """A console link: the configured address and a path built from integer ids only."""
    return base_url.rstrip("/") + path


@functools.cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("schoolgate.services", "templates/mail"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        undefined=StrictUndefined,  # a misspelt name is an error in the tests, not a blank in a mail
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["one_line"] = one_line
    env.filters["local"] = _local_filter
    return env


def render(name: str, subject: str, *, zone: tzinfo, **context: Any) -> RenderedMail:
    """Render `name`.txt and `name`.html with `context` (and the subject); times (`| local`) in
    the school's time `zone`."""
    env = environment()
    values = {"subject": subject, "zone": zone, **context}
    return RenderedMail(
        subject=one_line(subject, 250),
        text=env.get_template(f"{name}.txt").render(values),
        html=env.get_template(f"{name}.html").render(values),
    )
