"""The database schema: one typed SQLAlchemy model per thing a school keeps.

Every row carries `site` (the school's short id) so that a multi-academy trust can later
point several appliances at one central database. Times are stored as UTC.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from schoolgate.store.coltypes import UTCDateTime, UTCMicroseconds, utcnow

# Named constraints: migrations can then drop or alter them by name on every backend
# (SQLite's batch mode and PostgreSQL both need the name).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


SITE = String(64)
# Events outgrow 32-bit ids in a trust's central PostgreSQL database; SQLite needs plain
# INTEGER for its rowid primary key (and its integers are 64-bit anyway).
BIG_ID = BigInteger().with_variant(Integer, "sqlite")


class Site(Base):
    """A school. A trust's central database holds one row per school."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(SITE, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Person(Base):
    """A pupil, member of staff or guest known to the school (from the MIS or a CSV import)."""

    __tablename__ = "people"
    __table_args__ = (UniqueConstraint("site", "external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE, index=True)
    external_id: Mapped[str] = mapped_column(String(100))  # MIS id or username; Client.person_id
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))  # schoolgate.policy.types.Role value
    year_group: Mapped[int | None] = mapped_column(Integer)
    groups: Mapped[str] = mapped_column(String(500), default="")  # comma-separated, e.g. "6B,choir"
    email: Mapped[str | None] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # While `role` is "authorised": the person's own role, which withdrawing the authorisation
    # gives back (a pupil stays a pupil). None for rows authorised before it was kept.
    role_before_authorised: Mapped[str | None] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    devices: Mapped[list[Device]] = relationship(back_populates="person")


class Device(Base):
    """The device register: which device is whose, and whether it trusts the school CA."""

    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("site", "device_id"),
        Index("ix_devices_site_mac", "site", "mac"),
        Index("ix_devices_site_ip", "site", "ip"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE, index=True)
    device_id: Mapped[str] = mapped_column(String(100))  # asset tag or hostname; Client.device_id
    name: Mapped[str] = mapped_column(String(200))
    mac: Mapped[str | None] = mapped_column(String(17))  # lower-case, colon separated
    ip: Mapped[str | None] = mapped_column(String(45))  # a fixed address, if it has one
    kind: Mapped[str] = mapped_column(String(40), default="")  # laptop, ipad, chromebook, desktop
    role: Mapped[str | None] = mapped_column(String(20))  # overrides the owner's role (e.g. a class set)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id", ondelete="SET NULL"))
    trusts_school_ca: Mapped[bool] = mapped_column(Boolean, default=False)
    # "school_owned" or "personal" (schoolgate.policy.Ownership); None: not recorded. Rules can
    # depend on it (seed 001 §4: no personal accounts on school-owned mobile devices).
    ownership: Mapped[str | None] = mapped_column(String(20))
    notes: Mapped[str] = mapped_column(Text, default="")
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    person: Mapped[Person | None] = relationship(back_populates="devices")


def _where_not_null(column: str) -> dict[str, Any]:
    """The keyword arguments that make an index partial, over the rows where `column` is set."""
    condition = text(f"{column} IS NOT NULL")
    return {"sqlite_where": condition, "postgresql_where": condition}


class AccessEvent(Base):
    """One access attempt, with the fields the DfE filtering and monitoring standards ask for.

    Allowed traffic is logged per client and domain per minute (`count` adds up repeats);
    blocked and flagged attempts are logged in full.
    """

    __tablename__ = "events"
    __table_args__ = (
        # Also serves a search by verdict (walked newest first, filtered): a (site, verdict, ts)
        # index cost the event writer 1-1.4 us of its 13-22 per blocked query and spared only a
        # rare search and the yearly review's blocked-by-category sum (1.6x on a million rows).
        Index("ix_events_site_ts", "site", "ts"),
        # Full: "device_id IS NULL AND client_ip = ?" (an unknown device's attempts) uses it too.
        Index("ix_events_site_device_ts", "site", "device_id", "ts"),
        # Partial: most events name no person (a shared iPad, a pupil's own phone) and no
        # service, and every insert into an index costs the event writer, whose CPU per
        # blocked query is a budget on the Pi. Every reader asks for one person or service by
        # equality, which implies IS NOT NULL, so SQLite's and PostgreSQL's planners use these.
        Index("ix_events_site_person_ts", "site", "person_id", "ts", **_where_not_null("person_id")),
        Index("ix_events_site_service_ts", "site", "service", "ts", **_where_not_null("service")),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    # SQLite: an INTEGER of microseconds (UTCMicroseconds); readers see aware datetimes either way.
    ts: Mapped[datetime] = mapped_column(UTCMicroseconds)
    source: Mapped[str] = mapped_column(String(10))  # dns, proxy, console
    client_ip: Mapped[str] = mapped_column(String(45))
    mac: Mapped[str | None] = mapped_column(String(17))
    device_id: Mapped[str | None] = mapped_column(String(100))
    device_name: Mapped[str | None] = mapped_column(String(200))
    person_id: Mapped[str | None] = mapped_column(String(100))
    person_name: Mapped[str | None] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    host: Mapped[str] = mapped_column(String(255))
    # The DNS types asked, in the order asked ("A,AAAA,HTTPS" when a burst's asks for one name
    # are folded into one row: store.events.repeats).
    qtype: Mapped[str | None] = mapped_column(String(40))
    url: Mapped[str | None] = mapped_column(Text)
    search_term: Mapped[str | None] = mapped_column(Text)
    verdict: Mapped[str] = mapped_column(String(12))
    rule_id: Mapped[str] = mapped_column(String(100))
    clause: Mapped[str] = mapped_column(String(300), default="")
    service: Mapped[str | None] = mapped_column(String(60))
    category: Mapped[str | None] = mapped_column(String(60))
    flags: Mapped[str] = mapped_column(String(200), default="")  # comma-separated, e.g. "circumvention"
    count: Mapped[int] = mapped_column(Integer, default=1)
    # Which source tied the address to the device or person recorded: frame, neighbour, dhcp,
    # radius or register (schoolgate.identity.evidence); NULL when only the address is known.
    identity_source: Mapped[str | None] = mapped_column(String(20))
    # Given by the writer at the source (see store.events): an event shipped twice, after a
    # lost acknowledgement or from a trust appliance's spool, is stored once. NULL for rows
    # written by other means (NULLs never clash with each other).
    uid: Mapped[str | None] = mapped_column(String(40), unique=True)


class PolicyExceptionRow(Base):
    """A time-limited allowance (schoolgate.policy.types.PolicyException), usually from an approval."""

    __tablename__ = "exceptions"
    __table_args__ = (Index("ix_exceptions_site_expires", "site", "expires"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    scope: Mapped[str] = mapped_column(String(10))  # person, device, role, group
    subject: Mapped[str] = mapped_column(String(100))
    domain: Mapped[str | None] = mapped_column(String(255))
    url_prefix: Mapped[str | None] = mapped_column(Text)
    starts: Mapped[datetime] = mapped_column(UTCDateTime)
    expires: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")
    request_id: Mapped[int | None] = mapped_column(ForeignKey("access_requests.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the signer was told it opens, in words (a URL prefix opens the whole site on devices
    # the proxy cannot see into): the record is never narrower than what is enforced.
    enforced_scope: Mapped[str] = mapped_column(Text, default="")
    # Set when a teacher opened it for the lesson (schoolgate.services.lesson_unlocks).
    lesson_unlock_id: Mapped[int | None] = mapped_column(ForeignKey("lesson_unlocks.id", ondelete="SET NULL"))


class BanRow(Base):
    """Seed 001 §9: a device (by register id and MAC) and the person where known, moved to the
    supervised role until a date, or until the ban is lifted (`until` empty)."""

    __tablename__ = "bans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE, index=True)
    device_id: Mapped[str | None] = mapped_column(String(100))
    person_id: Mapped[str | None] = mapped_column(String(100))
    mac: Mapped[str | None] = mapped_column(String(17))
    starts: Mapped[datetime] = mapped_column(UTCDateTime)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime)  # None: until lifted
    reason: Mapped[str] = mapped_column(Text, default="")
    supervisor: Mapped[str] = mapped_column(String(200), default="", server_default="")  # who supervises
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class SiteBlockRow(Base):
    """A domain or URL a technician blocked, e.g. as the action on a content report."""

    __tablename__ = "site_blocks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE, index=True)
    domain: Mapped[str | None] = mapped_column(String(255))
    url_prefix: Mapped[str | None] = mapped_column(Text)
    roles: Mapped[str] = mapped_column(String(200), default="")  # comma-separated; empty: every role
    reason: Mapped[str] = mapped_column(Text, default="")
    report_id: Mapped[int | None] = mapped_column(ForeignKey("content_reports.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the technician was told it closes (a URL prefix closes the whole site on devices the
    # proxy cannot see into).
    enforced_scope: Mapped[str] = mapped_column(Text, default="")


class AccessRequest(Base):
    """Seed 001 appendix A: blocked content access request form, through triage to a decision."""

    __tablename__ = "access_requests"
    __table_args__ = (Index("ix_requests_site_status", "site", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    # submitted -> forwarded (triaged) -> approved | declined; or withdrawn, merged
    status: Mapped[str] = mapped_column(String(20), default="submitted")
    # Appendix A, the requester's part
    requester: Mapped[str] = mapped_column(String(200))
    staff_name: Mapped[str] = mapped_column(String(200), default="")
    request_date: Mapped[date] = mapped_column(Date)
    url: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    site_content: Mapped[str] = mapped_column(Text, default="")
    reasons: Mapped[str] = mapped_column(Text, default="")
    risks_and_controls: Mapped[str] = mapped_column(Text, default="")
    # Where the request came from (prefilled from the block page)
    device_id: Mapped[str | None] = mapped_column(String(100))
    client_ip: Mapped[str | None] = mapped_column(String(45))
    person_id: Mapped[str | None] = mapped_column(String(100))
    blocked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rule_id: Mapped[str | None] = mapped_column(String(100))
    submitted_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Technician triage
    triaged_by: Mapped[str | None] = mapped_column(String(200))
    triaged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    technician_notes: Mapped[str] = mapped_column(Text, default="")
    # "approve" or "decline": the technician forwards every request; one judged unfit goes to
    # the headteacher with that recommendation (seed 001 §9: the headteacher decides).
    technician_recommendation: Mapped[str | None] = mapped_column(String(10))
    # What the proposal would open, in words, as the headteacher is shown it before signing.
    enforced_scope: Mapped[str] = mapped_column(Text, default="")
    # The DSL's part when the access would open a site to pupils: safeguarding risks and
    # controls, recorded before the headteacher decides.
    needs_dsl: Mapped[bool] = mapped_column(Boolean, default=False)
    safeguarding_notes: Mapped[str] = mapped_column(Text, default="")
    dsl_reviewed_by: Mapped[str | None] = mapped_column(String(200))
    dsl_reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the DSL and the headteacher were e-mailed that it waits for them.
    dsl_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    headteacher_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    proposed_target: Mapped[str | None] = mapped_column(String(10))  # url or domain
    proposed_value: Mapped[str | None] = mapped_column(Text)  # the URL prefix or domain
    proposed_scope: Mapped[str | None] = mapped_column(String(10))  # person, device, group, role
    proposed_subject: Mapped[str | None] = mapped_column(String(100))
    proposed_starts: Mapped[datetime | None] = mapped_column(UTCDateTime)
    proposed_expires: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Headteacher decision (appendix A: authoriser, approved?, reasons, staff name, date, signature)
    authoriser: Mapped[str | None] = mapped_column(String(200))
    approved: Mapped[bool | None] = mapped_column(Boolean)
    decision_reasons: Mapped[str] = mapped_column(Text, default="")
    decided_by_name: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signature: Mapped[str | None] = mapped_column(String(200))  # re-authentication record
    exception_id: Mapped[int | None] = mapped_column(Integer)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("access_requests.id"))
    duplicate_count: Mapped[int] = mapped_column(Integer, default=0)
    # SHA-256 of the token the block-page requester gets to look up the outcome (no account)
    status_token_hash: Mapped[str | None] = mapped_column(String(64))


class ContentReport(Base):
    """Seed 001 appendix B: inappropriate content report form, and the technician's action."""

    __tablename__ = "content_reports"
    __table_args__ = (Index("ix_reports_site_status", "site", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    status: Mapped[str] = mapped_column(String(20), default="open")  # open, actioned, closed
    submitter_name: Mapped[str] = mapped_column(String(200))
    submitted_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # Filed from a school device without an account: the device found from the connection's
    # address (never from the form), the address, and the hash of the reporter's status token.
    device_id: Mapped[str | None] = mapped_column(String(100))
    client_ip: Mapped[str | None] = mapped_column(String(45))
    person_id: Mapped[str | None] = mapped_column(String(100))
    status_token_hash: Mapped[str | None] = mapped_column(String(64))
    technicians_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accessed_by: Mapped[str] = mapped_column(String(200), default="")  # if known
    report_date: Mapped[date] = mapped_column(Date)
    urls: Mapped[str] = mapped_column(Text)  # one per line
    nature: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # To be completed by the ICT technician
    action_taken: Mapped[str] = mapped_column(Text, default="")
    actioned_by_name: Mapped[str | None] = mapped_column(String(200))
    actioned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signature: Mapped[str | None] = mapped_column(String(200))


class Alert(Base):
    """A case for the DSL: raised by an alert rule from the events, folded while open."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_site_status", "site", "status"),
        Index("ix_alerts_fold", "site", "kind", "device_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    kind: Mapped[str] = mapped_column(String(40))  # circumvention, repeated_blocks, safeguarding_term, ...
    rule_id: Mapped[str] = mapped_column(String(100), default="")
    category: Mapped[str | None] = mapped_column(String(60))  # e.g. self-harm, extremism
    severity: Mapped[str] = mapped_column(String(10))  # low, medium, high, critical
    status: Mapped[str] = mapped_column(String(12), default="new")  # new, in_review, resolved
    title: Mapped[str] = mapped_column(String(300))
    summary: Mapped[str] = mapped_column(Text, default="")
    # What the device did, where, when and how often (services.alert_evidence), as JSON
    evidence: Mapped[str] = mapped_column(Text, default="", server_default="")
    device_id: Mapped[str | None] = mapped_column(String(100))
    person_id: Mapped[str | None] = mapped_column(String(100))
    client_ip: Mapped[str | None] = mapped_column(String(45))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    trigger_count: Mapped[int] = mapped_column(Integer, default=1)
    last_event_id: Mapped[int | None] = mapped_column(BIG_ID)
    assessment: Mapped[str | None] = mapped_column(String(20))  # true_positive, false_positive
    outcome: Mapped[str] = mapped_column(Text, default="")
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    history: Mapped[list[AlertHistory]] = relationship(
        back_populates="alert", order_by="AlertHistory.id", cascade="all, delete-orphan"
    )


class AlertHistory(Base):
    """A note, a status change or a re-trigger on an alert case."""

    __tablename__ = "alert_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(40))  # note, status, assessment, retrigger, ban
    detail: Mapped[str] = mapped_column(Text, default="")

    alert: Mapped[Alert] = relationship(back_populates="history")


class AuditEntry(Base):
    """Append-only, hash-chained record of every change to policy, people and approvals."""

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("site", "seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE, index=True)
    seq: Mapped[int] = mapped_column(Integer)  # position in the site's chain, from 1, no gaps
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60))  # e.g. exception.create, request.approve
    object_type: Mapped[str] = mapped_column(String(60))
    object_id: Mapped[str] = mapped_column(String(100))
    detail: Mapped[str] = mapped_column(Text, default="{}")  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class PolicyVersion(Base):
    """One version of a site's policy file, as the appliance first loaded it: the policy history.

    Written by the scheduler alone (one per appliance), when it loads a policy whose fingerprint
    differs from the site's latest row; an audit entry says the same, hash-chained."""

    __tablename__ = "policy_versions"
    __table_args__ = (Index("ix_policy_versions_site_loaded_at", "site", "loaded_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    fingerprint: Mapped[str] = mapped_column(String(64))  # CompiledPolicy.fingerprint (the file's text)
    loaded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    path: Mapped[str] = mapped_column(String(500))
    installed_by: Mapped[str] = mapped_column(String(200))  # who, as far as the appliance can tell
    file_owner: Mapped[str] = mapped_column(String(100), default="")
    file_modified: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[str] = mapped_column(Text, default="")  # the changes in sentences
    changes: Mapped[str] = mapped_column(Text, default="{}")  # JSON: schoolgate.policy.history.Changes
    snapshot: Mapped[str] = mapped_column(Text, default="{}")  # JSON: what the next version is compared with


class ConsoleUser(Base):
    """Someone who signs in to the console."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str | None] = mapped_column(SITE, index=True)  # None: a trust-wide account
    username: Mapped[str] = mapped_column(String(100), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    totp_secret: Mapped[str | None] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    last_login: Mapped[datetime | None] = mapped_column(UTCDateTime)
    receives_digest: Mapped[bool] = mapped_column(Boolean, default=False)
    # The account holder's entry in the people register (Person.external_id): a teacher's
    # classes are its groups, and a concern about this person is never sent to this account.
    person_external_id: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    roles: Mapped[list[UserRole]] = relationship(
        back_populates="user", cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def role_names(self) -> frozenset[str]:
        return frozenset(r.role for r in self.roles)


class UserRole(Base):
    """technician, dsl, headteacher, admin, trust_admin; a person may hold several."""

    __tablename__ = "user_roles"
    __table_args__ = (UniqueConstraint("user_id", "role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(20))

    user: Mapped[ConsoleUser] = relationship(back_populates="roles")


class ConsoleSession(Base):
    """A signed-in browser. Its cookie carries a random token whose SHA-256 is kept here, so
    signing out, a password or role change, or an admin ends the session on the server: a copy
    of the cookie is worth nothing afterwards."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    client_ip: Mapped[str | None] = mapped_column(String(45))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the longest a sign-in lasts, however busy
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_reason: Mapped[str] = mapped_column(String(60), default="")


class AccountReset(Base):
    """A first admin's request to reset the password or second factor of a headteacher's
    account: it is done only when a second, different admin confirms it (separation of duties)."""

    __tablename__ = "account_resets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(10))  # password, totp
    requested_by: Mapped[str] = mapped_column(String(100))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_by: Mapped[str | None] = mapped_column(String(100))
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Generation(Base):
    """Change counters the daemons poll, so a new exception or ban applies within seconds."""

    __tablename__ = "generations"

    site: Mapped[str] = mapped_column(SITE, primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)  # e.g. "policy_overlay"
    # Some counters are cursors over event ids ("events up to id N are done"): as wide as them.
    value: Mapped[int] = mapped_column(BIG_ID, default=0)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DaemonStatus(Base):
    """Heartbeat and counters of each running daemon (events written, dropped, queries...)."""

    __tablename__ = "daemon_status"

    site: Mapped[str] = mapped_column(SITE, primary_key=True)
    name: Mapped[str] = mapped_column(String(40), primary_key=True)  # dns, proxy, scheduler, ...
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stats: Mapped[str] = mapped_column(Text, default="{}")  # JSON


class EventHourly(Base):
    """Event counts per UTC hour, verdict, role and service: what the dashboard charts read.

    Kept up to date from `events` by the scheduler (schoolgate.services.rollups), so charts
    over weeks read a few thousand rows instead of hundreds of thousands of events.
    """

    __tablename__ = "event_hourly"
    __table_args__ = (UniqueConstraint("site", "hour", "verdict", "role", "service"),)

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    hour: Mapped[datetime] = mapped_column(UTCDateTime)  # start of the UTC hour
    verdict: Mapped[str] = mapped_column(String(12))
    role: Mapped[str] = mapped_column(String(20))
    service: Mapped[str] = mapped_column(String(60), default="")  # "" when no catalogue service matched
    count: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)


class EventDaily(Base):
    """Event counts per school day (the policy's [school] timezone) for the top lists: per device,
    and per service or host.

    `dimension` is "device" (key: device id, or the address of an unregistered device),
    "target" (key: the catalogue service, or the host when no service matched), "service"
    (key: the catalogue service, "" for none) or "role" (key: the role): the last two feed
    the day-by-day charts.
    """

    __tablename__ = "event_daily"
    __table_args__ = (UniqueConstraint("site", "dimension", "verdict", "day", "key"),)

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    dimension: Mapped[str] = mapped_column(String(10))
    verdict: Mapped[str] = mapped_column(String(12))
    day: Mapped[date] = mapped_column(Date)  # the school's local date (the policy's [school] timezone)
    key: Mapped[str] = mapped_column(String(255))
    label: Mapped[str] = mapped_column(String(300), default="")  # e.g. "iPad 5 (Amira K)"
    count: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), default=0)


class CheckRecord(Base):
    """The filtering check log the DfE standard asks a school to keep: when, who, what was
    tested, the result and the action. One row per self-test run, per manual check a
    technician records, and per fix made after a failed check (`fixes_id` points at it)."""

    __tablename__ = "checks"
    __table_args__ = (Index("ix_checks_site_at", "site", "at"), Index("ix_checks_site_kind_at", "site", "kind", "at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    kind: Mapped[str] = mapped_column(String(10))  # selftest, manual, fix
    at: Mapped[datetime] = mapped_column(UTCDateTime)  # when the check was made
    actor: Mapped[str] = mapped_column(String(200))  # username, or system:selftest
    actor_name: Mapped[str] = mapped_column(String(200))  # as printed in the log
    trigger: Mapped[str] = mapped_column(String(40), default="")  # self-tests: morning, policy_change, on_request...
    device_type: Mapped[str] = mapped_column(String(100), default="")  # e.g. "Class iPad"
    location: Mapped[str] = mapped_column(String(200), default="")  # e.g. "Year 5 classroom"
    profile: Mapped[str] = mapped_column(String(200), default="")  # the role or network tested, e.g. "pupil"
    tried: Mapped[str] = mapped_column(Text, default="")  # what was tested
    result: Mapped[str] = mapped_column(String(10))  # pass, fail
    action: Mapped[str] = mapped_column(Text, default="")  # what was done, or must be done
    failures: Mapped[int] = mapped_column(Integer, default=0)
    filtering_down: Mapped[bool] = mapped_column(Boolean, default=False)  # self-test: filtering itself failed
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON: a self-test's individual results
    fixes_id: Mapped[int | None] = mapped_column(ForeignKey("checks.id", ondelete="SET NULL"))
    notified: Mapped[str] = mapped_column(String(200), default="")  # who was e-mailed about a failure
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class LessonUnlock(Base):
    """A teacher opened a site for their class until the end of the lesson: its exceptions
    (scope group, one per domain of the site; PolicyExceptionRow.lesson_unlock_id) are what
    DNS and the proxy enforce; this row is the log the headteacher and the DSL read, and what
    the per-day cap counts."""

    __tablename__ = "lesson_unlocks"
    __table_args__ = (Index("ix_lesson_unlocks_site_starts", "site", "starts"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str] = mapped_column(String(100))
    teacher: Mapped[str] = mapped_column(String(200))  # the display name, as the log shows it
    group: Mapped[str] = mapped_column(String(60))  # the class
    host: Mapped[str] = mapped_column(String(255))
    url: Mapped[str] = mapped_column(Text, default="")  # the page the teacher gave
    reason: Mapped[str] = mapped_column(Text, default="")
    starts: Mapped[datetime] = mapped_column(UTCDateTime)
    ends: Mapped[datetime] = mapped_column(UTCDateTime)  # the window edge that ends the lesson
    ends_with: Mapped[str] = mapped_column(String(200), default="")  # e.g. "morning break starts"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_early_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_by: Mapped[str | None] = mapped_column(String(100))


class SocialMediaSite(Base):
    """Seed 001 appendix C: social media site creation approval, from the request to the
    headteacher's approval that makes the named administrators authorised until it expires."""

    __tablename__ = "social_media_sites"
    __table_args__ = (Index("ix_social_media_sites_site_status", "site", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    # submitted -> endorsed (marketing officer) -> approved | declined; approved -> expired | withdrawn
    status: Mapped[str] = mapped_column(String(20), default="submitted")
    platform: Mapped[str] = mapped_column(String(100))  # e.g. "Facebook page"
    # Team details
    team: Mapped[str] = mapped_column(String(200), default="")
    department: Mapped[str] = mapped_column(String(200), default="")
    moderator: Mapped[str] = mapped_column(String(200))
    # Purpose of using social media
    purpose: Mapped[str] = mapped_column(Text)  # why, and the content of the site
    aims: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)
    audience: Mapped[str] = mapped_column(Text, default="{}")  # JSON: the form's boxes and details
    contributors: Mapped[str] = mapped_column(Text, default="{}")  # JSON, as audience
    # Administration of the site
    administrators: Mapped[str] = mapped_column(Text)  # the names as the form gives them
    vetting: Mapped[str] = mapped_column(Text)  # who vets external contributors (name, job role)
    host: Mapped[str] = mapped_column(String(200))  # who will host the site
    go_live: Mapped[date | None] = mapped_column(Date)
    advertising: Mapped[str] = mapped_column(Text, default="")
    consent: Mapped[str] = mapped_column(Text, default="")
    security: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(100))  # username
    requested_by_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Approval: the marketing officer, then the headteacher (name, signature, date)
    marketing_name: Mapped[str | None] = mapped_column(String(200))
    marketing_signature: Mapped[str | None] = mapped_column(String(200))
    marketing_signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    head_name: Mapped[str | None] = mapped_column(String(200))
    head_signature: Mapped[str | None] = mapped_column(String(200))
    head_signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_reasons: Mapped[str] = mapped_column(Text, default="")
    expires: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the administrators' authorisation ends
    review_date: Mapped[date | None] = mapped_column(Date)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    admins: Mapped[list[SocialMediaAdmin]] = relationship(
        back_populates="record", order_by="SocialMediaAdmin.id", cascade="all, delete-orphan"
    )


class SocialMediaAdmin(Base):
    """A named administrator of an appendix C site: someone in the people register."""

    __tablename__ = "social_media_admins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("social_media_sites.id", ondelete="CASCADE"), index=True)
    person_external_id: Mapped[str] = mapped_column(String(100))
    person_name: Mapped[str] = mapped_column(String(200))
    granted: Mapped[bool] = mapped_column(Boolean, default=False)  # this approval made them authorised
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    record: Mapped[SocialMediaSite] = relationship(back_populates="admins")


class DhcpLeaseRow(Base):
    """A lease from the school's own DHCP server: which MAC held an address, from when to when.

    Filled from the server's lease file (schoolgate.identity.leasestore). One row per binding:
    renewals of the same MAC on the same address extend it; another MAC on the address ends it.
    """

    __tablename__ = "dhcp_leases"
    __table_args__ = (
        Index("ix_dhcp_leases_site_ip_starts", "site", "ip", "starts"),
        Index("ix_dhcp_leases_site_mac", "site", "mac"),
        Index("ix_dhcp_leases_site_ends", "site", "ends"),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    ip: Mapped[str] = mapped_column(String(45))
    mac: Mapped[str] = mapped_column(String(17))
    hostname: Mapped[str | None] = mapped_column(String(255))
    starts: Mapped[datetime] = mapped_column(UTCDateTime)  # granted (or first seen, if the file does not say)
    renewed: Mapped[datetime] = mapped_column(UTCDateTime)  # the last time the server confirmed it
    ends: Mapped[datetime | None] = mapped_column(UTCDateTime)  # NULL: never (a reservation)
    source: Mapped[str] = mapped_column(String(10))  # windows, isc, kea, dnsmasq
    origin: Mapped[str] = mapped_column(String(300), default="")  # the file it was read from
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class RadiusSession(Base):
    """A Wi-Fi session from the controller's RADIUS accounting: who signed in, on which device
    (Calling-Station-Id) and address (Framed-IP-Address), from Start to Stop."""

    __tablename__ = "radius_sessions"
    __table_args__ = (
        UniqueConstraint("site", "nas", "session_id"),
        Index("ix_radius_sessions_site_ip", "site", "ip"),
        Index("ix_radius_sessions_site_mac", "site", "mac"),
        Index("ix_radius_sessions_site_stopped", "site", "stopped_at"),
    )

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    nas: Mapped[str] = mapped_column(String(100))  # NAS-Identifier, NAS-IP-Address or the sender
    session_id: Mapped[str] = mapped_column(String(100))  # Acct-Session-Id
    username: Mapped[str] = mapped_column(String(200))
    mac: Mapped[str | None] = mapped_column(String(17))
    ip: Mapped[str | None] = mapped_column(String(45))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the last Start or Interim-Update
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stop_cause: Mapped[str] = mapped_column(String(40), default="")


class DirectoryImport(Base):
    """A directory file (Google Workspace, Entra ID / SDS, MIS via Wonde) previewed, then applied.

    The file is kept as it was previewed, so what is applied is exactly what was shown.
    """

    __tablename__ = "directory_imports"
    __table_args__ = (Index("ix_directory_imports_site_created", "site", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    status: Mapped[str] = mapped_column(String(12), default="preview")  # preview, applied, discarded
    filename: Mapped[str] = mapped_column(String(255), default="")
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(20))
    encoding: Mapped[str] = mapped_column(String(20), default="")
    content: Mapped[str] = mapped_column(Text)
    options: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    summary: Mapped[str] = mapped_column(Text, default="{}")  # JSON counts
    changes: Mapped[str] = mapped_column(Text, default="[]")  # JSON
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    applied_by: Mapped[str | None] = mapped_column(String(200))
    applied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LanDevice(Base):
    """A device seen on the school's network, and whether schoolgate is filtering it.

    One row per device: by MAC address where the gateway saw one, else by address. The gateway
    fills in what the kernel saw (neighbour table, forwarded connections, VPN ports) and the
    scheduler what schoolgate saw (its last DNS question through the appliance, circumvention
    attempts); `status` is the coverage watchdog's verdict, `notified_at` when the technician
    was told about it (once per episode).
    """

    __tablename__ = "lan_devices"
    __table_args__ = (UniqueConstraint("site", "key"), Index("ix_lan_devices_site_ip", "site", "ip"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(SITE)
    key: Mapped[str] = mapped_column(String(60))  # "mac:02:41:..." or "ip:10.41.20.7"
    ip: Mapped[str] = mapped_column(String(45))  # the address it used last
    mac: Mapped[str | None] = mapped_column(String(17))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    neighbour_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # in the kernel's neighbour table
    forwarded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # the gateway forwarded a new connection
    first_forwarded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    forwarded_connections: Mapped[int] = mapped_column(Integer, default=0)
    dns_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # its last DNS question through schoolgate
    vpn_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # traffic to a known VPN port
    vpn_detail: Mapped[str] = mapped_column(String(200), default="")  # e.g. "udp/1194 x3"
    circumvention_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # DoH, DoT, QUIC, other resolvers
    circumvention_detail: Mapped[str] = mapped_column(String(200), default="")
    ca_trusted: Mapped[bool | None] = mapped_column(Boolean)  # what the proxy learnt: None: not seen
    status: Mapped[str] = mapped_column(String(20), default="unknown")  # filtered, not_filtered, idle, unknown
    reason: Mapped[str] = mapped_column(String(300), default="")
    status_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
