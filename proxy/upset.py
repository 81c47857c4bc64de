"""The pupil block page's "this upset me" button: a signed note of which block page it was on.

The button posts back to the block page's own origin (`UPSET_PATH` on the blocked site), which
the proxy answers because it is already answering that site for this device: a plain-HTTP site
on any device, an HTTPS site on a device that trusts the school CA. No other address, no other
certificate: wherever the page can be shown, the button works.

A DSL case is a claim about a child, so the post must prove that this device really was shown
that block page: the page carries a token, an HMAC over the device's address, the site, the
page's URL, the rule and the time, under a key only the proxy holds. A page elsewhere cannot
read the token (the block page is another origin), so it cannot forge a report for a pupil;
and a token is only good from the address it was issued to, for `TOKEN_LIFETIME`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

UPSET_PATH = "/.well-known/schoolgate/upset"
TOKEN_LIFETIME = timedelta(hours=1)
MAX_TOKEN_URL = 1000  # the URL the token carries (the event keeps it as the evidence)
MAX_TOKEN_BYTES = 4096
SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class UpsetNote:
    """What the signed token says: this address was shown the block page for this page."""

    client_ip: str
    host: str
    url: str | None
    rule_id: str
    shown_at: datetime  # aware, UTC


class UpsetSigner:
    """Issues and checks the tokens. Every proxy worker must use the same key (see `load_key`)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the upset-button key must be at least 16 bytes")
        self._key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, b"schoolgate-upset-v1\0" + payload, hashlib.sha256).digest()

    def issue(self, note: UpsetNote) -> str:
        body = json.dumps(
            {
                "ip": note.client_ip,
                "host": note.host,
                "url": (note.url or "")[:MAX_TOKEN_URL] or None,
                "rule": note.rule_id,
                "at": int(note.shown_at.timestamp()),
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode("utf-8")
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def check(self, token: str, *, client_ip: str, host: str, now: datetime) -> UpsetNote | None:
        """The note, if the token is genuine, was issued to `client_ip` for `host`, and is fresh."""
        if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 1:
            return None
        body_text, mac_text = token.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            return None
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            fields = json.loads(body)
            note = UpsetNote(
                client_ip=str(fields["ip"]),
                host=str(fields["host"]),
                url=str(fields["url"]) if fields.get("url") else None,
                rule_id=str(fields["rule"]),
                shown_at=datetime.fromtimestamp(int(fields["at"]), UTC),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if note.client_ip != client_ip or note.host != host:
            return None
        # A little slack for a page shown just before a clock step; none for old pages.
        if not (-timedelta(minutes=1) <= now - note.shown_at <= TOKEN_LIFETIME):
            return None
        return note


def load_key(path: Path) -> bytes:
    """The key in `path`, created (owner-only) on first use, so every proxy worker shares it."""
    existing = _read_key(path)
    if existing is not None:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(SECRET_BYTES)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
    try:
        if path.exists():
            os.replace(tmp, path)  # unreadable or too short: replaced
            return key
        os.link(tmp, path)  # first writer wins; a worker racing us reads the winner's key
    except FileExistsError:
        winner = _read_key(path)
        if winner is not None:
            return winner
        os.replace(tmp, path)
        return key
    finally:
        tmp.unlink(missing_ok=True)
    return key


def _read_key(path: Path) -> bytes | None:
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
    return key if len(key) >= SECRET_BYTES else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or any(ch not in _B64_CHARS for ch in text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
