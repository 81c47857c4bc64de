"""Small pieces every service module shares: pages of results, text and URL checks, audit."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import false
from sqlalchemy.orm import Session

from schoolgate.services.actor import Actor
from schoolgate.services.errors import InvalidInput

T = TypeVar("T")

#: Name of the generation counter the DNS and proxy daemons poll for exceptions, bans, blocks.
OVERLAY_GENERATION = "policy_overlay"  # == schoolgate.store.overlay.POLICY_OVERLAY


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, with the total so the view can draw pagination."""

    items: Sequence[T]
    total: int
    limit: int
    offset: int

    @property
    def has_next(self) -> bool:
        return self.offset + len(self.items) < self.total


def clean_text(value: str | None, *, field: str, max_len: int, required: bool = False) -> str:
    """Trim a form value, refuse control characters and over-long text."""
    text = (value or "").strip()
    if required and not text:
        raise InvalidInput(f"Please fill in {field.replace('_', ' ')}.", field=field)
    if len(text) > max_len:
        # Said, never cut: a decision or a safeguarding note must not lose its end unnoticed.
        raise InvalidInput(
            f"{field.replace('_', ' ').capitalize()} is too long: {len(text):,} characters, at most {max_len:,}. "
            "Shorten it and send it again; nothing was saved.",
            field=field,
        )
    if any(ord(ch) < 32 and ch not in "\n\r\t" for ch in text):
        raise InvalidInput(f"{field.replace('_', ' ').capitalize()} contains control characters.", field=field)
    return text


#: The schools a read may cover: one site id, or several (a trust admin's whole-trust view).
SiteScope = str | tuple[str, ...]


def on_site(column: Any, site: SiteScope) -> Any:
    """The WHERE condition that keeps a query to `site` (one school or several)."""
    if isinstance(site, str):
        return column == site
    return column.in_(sorted(site)) if site else false()


def in_scope(row_site: str | None, site: SiteScope) -> bool:
    """Whether a row fetched by id belongs to `site` (or to one of several)."""
    if row_site is None:
        return False
    return row_site == site if isinstance(site, str) else row_site in site


def normalise_host(value: str, *, field: str = "domain") -> str:
    """A hostname as the policy matches it: lower case, IDNA, no trailing dot, no port."""
    text = value.strip().lower().rstrip(".")
    if text.startswith("*."):
        text = text[2:]
    if not text or len(text) > 253:
        raise InvalidInput("Please give a domain name such as example.org.", field=field)
    try:
        ascii_host = text.encode("idna").decode("ascii")
    except UnicodeError as err:
        raise InvalidInput(f"{value!r} is not a valid domain name.", field=field) from err
    labels = ascii_host.split(".")
    if len(labels) < 2 or any(not label or len(label) > 63 for label in labels):
        raise InvalidInput(f"{value!r} is not a valid domain name.", field=field)
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
    if any(set(label) - allowed or label.startswith("-") or label.endswith("-") for label in labels):
        raise InvalidInput(f"{value!r} is not a valid domain name.", field=field)
    return ascii_host


def parse_url(value: str, *, field: str = "url") -> tuple[str, str]:
    """Check a full http(s) URL; return (normalised URL, host). A bare host gets https://."""
    text = value.strip()
    if not text:
        raise InvalidInput("Please give the full address (URL) of the site.", field=field)
    if len(text) > 4000:
        raise InvalidInput("The address is too long (at most 4000 characters).", field=field)
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        hostname = parts.hostname
    except ValueError as err:
        raise InvalidInput("That address could not be read; please copy it again.", field=field) from err
    if parts.scheme not in ("http", "https") or not hostname:
        raise InvalidInput("The address must start with http:// or https://.", field=field)
    if any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise InvalidInput("The address must not contain spaces or control characters.", field=field)
    host = normalise_host(hostname, field=field)
    return text, host


def audit(
    session: Session,
    *,
    site: str,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: object,
    detail: dict[str, Any],
    now: datetime,
) -> None:
    """Append to the hash-chained audit log (schoolgate.store.audit)."""
    from schoolgate.store import audit as store_audit

    store_audit.record(
        session,
        site=site,
        actor=actor.name,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        detail=json.loads(json.dumps(detail, default=str)),
        at=now,
    )


def read_mark(session: Session, site: str, name: str, *, lock: bool = False) -> int:
    """A progress mark kept in `generations` (e.g. the last event id a job processed).

    `lock`: hold the row until the caller commits, so two runs at once (PostgreSQL; SQLite
    serialises writers anyway) cannot both process the same events."""
    from sqlalchemy import select

    from schoolgate.store.models import Generation

    query = select(Generation.value).where(Generation.site == site, Generation.name == name)
    value = session.scalar(query.with_for_update() if lock else query)
    return int(value or 0)


def write_mark(session: Session, site: str, name: str, value: int, now: datetime) -> None:
    from schoolgate.store.models import Generation

    row = session.get(Generation, (site, name))
    if row is None:
        session.add(Generation(site=site, name=name, value=value, changed_at=now))
    else:
        row.value = value
        row.changed_at = now


def advance_mark(session: Session, site: str, name: str, now: datetime) -> None:
    """Count one more run of something (the digest, the expiry sweep) and note when."""
    from schoolgate.store.models import Generation

    row = session.get(Generation, (site, name))
    write_mark(session, site, name, (row.value if row is not None else 0) + 1, now)


def bump_overlay(session: Session, *, site: str, now: datetime) -> int:
    """Tell DNS and proxy that exceptions, bans or site blocks changed; returns the new value."""
    from schoolgate.store import overlay

    del now  # the counter's changed_at is the wall clock: daemons compare it with their own
    return overlay.bump_generation(session, site, overlay.POLICY_OVERLAY)


def new_status_token() -> tuple[str, str]:
    """A one-time code for someone without an account to look up what happened to what they
    filed (a request, a report): (the code shown once, the hash stored)."""
    token = secrets.token_urlsafe(16)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(stored_hash: str | None, token: str) -> bool:
    return stored_hash is not None and hmac.compare_digest(stored_hash, token_hash(token.strip()))
