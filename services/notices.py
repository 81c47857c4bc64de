"""Changes someone must hear about, from the audit log: the dashboard shows them and
schoolgate.services.notifications e-mails them.

A change that someone must hear about is written to the audit log in the same transaction as the
change itself, so nothing is lost if the mail server is down. The notifications job sends the
entries past a mark (the id of the last entry told) to the holders of the permission each kind
is for, moving the mark as each message goes; the dashboard shows the last fortnight's to the
same people.

`NOTICES` says which audit actions are told to whom; add an entry to tell someone of another.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from schoolgate.services.common import on_site, read_mark, write_mark
from schoolgate.services.permissions import Permission
from schoolgate.store.models import AuditEntry

#: The `generations` row holding the id of the last audit entry told about by e-mail.
MARK = "notices_told"
#: How long the dashboard keeps showing a notice.
SHOWN_FOR = timedelta(days=14)
MAX_PER_RUN = 200
#: The audit action written when a console account's e-mail address changes.
ADDRESS_CHANGED = "user.email_changed"


def _lapsed(entry: AuditEntry, detail: Mapping[str, object]) -> str:
    macs = detail.get("mac") or [None, None]
    ips = detail.get("ip") or [None, None]
    moves = []
    if isinstance(macs, list) and len(macs) == 2 and macs[0] != macs[1]:
        moves.append(f"MAC address {macs[0] or 'none'} -> {macs[1] or 'none'}")
    if isinstance(ips, list) and len(ips) == 2 and ips[0] != ips[1]:
        moves.append(f"fixed address {ips[0] or 'none'} -> {ips[1] or 'none'}")
    role = detail.get("role_now") or "its owner's role"
    return (
        f"{entry.actor} changed device {detail.get('device_id')} ({'; '.join(moves) or 'moved'}). "
        f"Your authorisation of that device has lapsed: it now has {role}. "
        "If it should still be authorised, authorise it again from its page in the device register."
    )


_CREDENTIAL_WORDS = {"password": "password", "totp": "second factor (authenticator app)"}
_SHORT_WORDS = {"password": "password", "totp": "second factor"}


def _headteacher_reset(kind: str, *, done: bool) -> Callable[[AuditEntry, Mapping[str, object]], str]:
    what = _CREDENTIAL_WORDS[kind]

    def words(entry: AuditEntry, detail: Mapping[str, object]) -> str:
        account = detail.get("username") or "a headteacher's account"
        if done:
            return (
                f"The {what} of the headteacher account {account} was reset by two admins: "
                f"{detail.get('requested_by')} asked and {detail.get('confirmed_by') or entry.actor} confirmed. "
                "Its sessions have ended. If this was not agreed with the headteacher, tell the chair of governors."
            )
        return (
            f"{entry.actor} asked to reset the {what} of the headteacher account {account}. A second admin can "
            "complete it within 24 hours; whoever then sets it can approve access requests as that headteacher. "
            "If this was not agreed with the headteacher, tell the chair of governors."
        )

    return words


def _address_changed(entry: AuditEntry, detail: Mapping[str, object]) -> str:
    account = detail.get("username") or "your"
    before, after = detail.get("email_before") or "none", detail.get("email") or "none"
    return (
        f"{entry.actor} changed the e-mail address of the schoolgate console account {account} "
        f"from {before} to {after}. What the console sends that account (requests waiting for it, "
        "cases, the digest) now goes to the new address. If you did not expect this, tell the "
        "headteacher and the school's ICT technician at once."
    )


def _both_addresses(detail: Mapping[str, object]) -> tuple[str, ...]:
    """The old address hears of the change (someone may have taken its mail), and the new one."""
    return tuple(str(a) for a in (detail.get("email_before"), detail.get("email")) if isinstance(a, str) and a)


def _account_page(entry: AuditEntry) -> str:
    return f"/users/{int(entry.object_id)}" if entry.object_id.isdigit() else "/users"


@dataclass(frozen=True, slots=True)
class NoticeKind:
    """Who is told about one kind of audit entry, and in what words."""

    permission: Permission  # the holders of this permission see it on their dashboard and are told
    subject: str
    words: Callable[[AuditEntry, Mapping[str, object]], str]
    path: Callable[[AuditEntry], str]  # the console page it is about
    # When set, the e-mail goes to these addresses from the entry instead of the holders.
    addressed_to: Callable[[Mapping[str, object]], tuple[str, ...]] | None = None


NOTICES: Mapping[str, NoticeKind] = {
    # services.register: someone other than the headteacher moved a device she had authorised.
    "device.authorisation_lapsed": NoticeKind(
        Permission.AUTHORISE_ACCESS, "A device's authorisation has lapsed", _lapsed,
        lambda entry: f"/devices/{int(entry.object_id)}" if entry.object_id.isdigit() else "/devices",
    ),
    # console/views/admin.py: two admins reset a headteacher's account (console/duties.py); the
    # headteachers hear of the first admin's request and of the reset, by e-mail and on the
    # dashboard, so a reset no headteacher agreed to does not pass unseen.
    **{
        f"user.reset_{kind}{suffix}": NoticeKind(
            Permission.GRANT_GUARDED_ROLES,
            f"A headteacher's {_SHORT_WORDS[kind]} {'was reset' if done else 'reset was asked for'}",
            _headteacher_reset(kind, done=done), _account_page,
        )
        for kind in _CREDENTIAL_WORDS
        for suffix, done in (("_requested", False), ("_confirmed", True))
    },
    # console/views/admin.py: an account's address changed. Its old address is told, so that an
    # address changed to read someone's cases does not pass unseen; the admins see it too.
    ADDRESS_CHANGED: NoticeKind(
        Permission.MANAGE_USERS, "A console account's e-mail address was changed", _address_changed,
        _account_page, addressed_to=_both_addresses,
    ),
}


@dataclass(frozen=True, slots=True)
class AuditNotice:
    entry_id: int
    site: str
    at: datetime
    kind: str
    subject: str
    text: str
    path: str
    permission: Permission
    addresses: tuple[str, ...] = ()  # told instead of the permission's holders, when given

    def mark(self, session: Session, now: datetime) -> None:
        """Record that this notice (and every earlier one) has been told."""
        if read_mark(session, self.site, MARK) < self.entry_id:
            write_mark(session, self.site, MARK, self.entry_id, now)


def _notice(entry: AuditEntry) -> AuditNotice:
    kind = NOTICES[entry.action]
    try:
        detail = json.loads(entry.detail)
    except ValueError:
        detail = None
    fields = detail if isinstance(detail, dict) else {}
    addresses = kind.addressed_to(fields) if kind.addressed_to is not None else ()
    return AuditNotice(entry.id, entry.site, entry.at, entry.action, kind.subject, kind.words(entry, fields),
                       kind.path(entry), kind.permission, addresses)


def recent(session: Session, site: str, now: datetime, permissions: frozenset[Permission]) -> list[AuditNotice]:
    """The notices of the last SHOWN_FOR for someone holding `permissions`, newest first."""
    actions = [action for action, kind in NOTICES.items() if kind.permission in permissions]
    if not actions:
        return []
    rows = session.scalars(
        select(AuditEntry)
        .where(on_site(AuditEntry.site, site), AuditEntry.action.in_(actions), AuditEntry.at >= now - SHOWN_FOR)
        .order_by(AuditEntry.id.desc())
        .limit(50)
    )
    return [_notice(row) for row in rows]


def untold(session: Session, site: str) -> list[AuditNotice]:
    """The notices past the mark, oldest first (at most MAX_PER_RUN)."""
    after = read_mark(session, site, MARK)
    rows = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.site == site, AuditEntry.id > after, AuditEntry.action.in_(list(NOTICES)))
        .order_by(AuditEntry.id)
        .limit(MAX_PER_RUN)
    )
    return [_notice(row) for row in rows]
