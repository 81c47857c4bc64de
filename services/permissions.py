"""Who may do what: the one permission table of the console and the services.

A console route declares the permission it needs (schoolgate.console.web.requires), a template
shows a button only if the signed-in person holds the permission behind it (`can(P.X)`), and a
service refuses an `Actor` that lacks it (`actor.require(Permission.X, doing=...)`). All three read
`GRANTS` below, so they cannot disagree; tests/console/test_access.py walks the console's URL
map and checks every route against this table for every role, and tests/services/test_permissions.py
does the same for the services' entry points.

Adding a role (say `teacher`, who may open a site for their class until the end of the lesson):
1. add it to `ConsoleRole`;
2. describe it in `ROLES` (what it is for, whether it needs a second factor, whether granting it is
   guarded by the headteacher);
3. add it to the rows of `GRANTS` for each power it has, adding a `Permission` for a new power;
4. run tests/console/test_access.py: it creates an account for every role in `ROLES` and checks
   every route, so a page the new role may (or may not) reach is covered without a new test.
A power that a school's policy can give (rather than the table) goes in `POLICY_GRANTS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class ConsoleRole(StrEnum):
    TECHNICIAN = "technician"
    DSL = "dsl"
    HEADTEACHER = "headteacher"
    ADMIN = "admin"
    # A multi-academy trust's account (ConsoleUser.site None): reads every school's records.
    TRUST_ADMIN = "trust_admin"
    TEACHER = "teacher"
    MARKETING = "marketing"


class Permission(StrEnum):
    VIEW_DASHBOARD = "view_dashboard"
    RAISE_REQUEST = "raise_request"
    VIEW_REQUESTS = "view_requests"
    TRIAGE_REQUEST = "triage_request"
    DECIDE_REQUEST = "decide_request"
    WITHDRAW_REQUEST = "withdraw_request"
    RAISE_REPORT = "raise_report"
    VIEW_REPORTS = "view_reports"
    ACTION_REPORT = "action_report"
    VIEW_ALERTS = "view_alerts"
    MANAGE_ALERTS = "manage_alerts"
    BAN_DEVICE = "ban_device"
    VIEW_ACTIVITY = "view_activity"
    READ_SAFEGUARDING_DETAIL = "read_safeguarding_detail"
    VIEW_REGISTERS = "view_registers"
    EDIT_REGISTERS = "edit_registers"
    AUTHORISE_ACCESS = "authorise_access"
    VIEW_POLICY = "view_policy"
    EDIT_POLICY = "edit_policy"
    REVOKE_EXCEPTION = "revoke_exception"
    VIEW_AUDIT = "view_audit"
    VIEW_USERS = "view_users"
    MANAGE_USERS = "manage_users"
    GRANT_GUARDED_ROLES = "grant_guarded_roles"
    SWITCH_SCHOOL = "switch_school"
    VIEW_CHECKS = "view_checks"
    RECORD_CHECK = "record_check"
    RUN_SELFTEST = "run_selftest"
    VIEW_COVERAGE = "view_coverage"
    REVIEW_PACK = "review_pack"
    REVIEW_PACK_NAMES = "review_pack_names"
    VIEW_METRICS = "view_metrics"
    REVIEW_REQUEST_SAFEGUARDING = "review_request_safeguarding"
    OPEN_FOR_LESSON = "open_for_lesson"
    VIEW_LESSON_UNLOCKS = "view_lesson_unlocks"
    END_LESSON_UNLOCK = "end_lesson_unlock"
    VIEW_SOCIAL_MEDIA_SITES = "view_social_media_sites"
    RAISE_SOCIAL_MEDIA_SITE = "raise_social_media_site"
    ENDORSE_SOCIAL_MEDIA_SITE = "endorse_social_media_site"
    APPROVE_SOCIAL_MEDIA_SITE = "approve_social_media_site"


@dataclass(frozen=True, slots=True)
class RoleSpec:
    """What a role is, for the accounts page and the account rules."""

    role: ConsoleRole
    title: str  # "ICT technician"
    summary: str  # one line for the accounts page: what the role does
    second_factor: bool  # accounts holding it must sign in with a TOTP code too
    # Granting or removing it, and resetting the password or second factor of an account that
    # holds it, is for the headteacher (re-authenticated), never an admin alone: these roles
    # approve what children may reach and read safeguarding cases.
    guarded: bool = False
    trust_wide: bool = False  # held by trust-wide accounts (no school) and by nothing else


T, D, H, A, TA = (
    ConsoleRole.TECHNICIAN,
    ConsoleRole.DSL,
    ConsoleRole.HEADTEACHER,
    ConsoleRole.ADMIN,
    ConsoleRole.TRUST_ADMIN,
)
TE, M = ConsoleRole.TEACHER, ConsoleRole.MARKETING

ROLES: Mapping[ConsoleRole, RoleSpec] = {
    spec.role: spec
    for spec in (
        RoleSpec(T, "ICT technician", "triage requests, action reports, edit registers and blocks",
                 second_factor=False),
        RoleSpec(D, "Designated safeguarding lead", "alerts, cases and bans; safeguarding detail in activity",
                 second_factor=True, guarded=True),
        RoleSpec(H, "Headteacher", "approve or decline requests, authorise access, alerts; guards the DSL and "
                 "headteacher roles", second_factor=True, guarded=True),
        RoleSpec(A, "Admin", "manage console accounts", second_factor=True),
        RoleSpec(TA, "Trust admin", "read every school's records (trust-wide accounts only)", second_factor=True,
                 trust_wide=True),
        # One power, bounded by the lesson, the class, a daily cap and the categories a teacher may
        # open, and seen by the headteacher and the DSL: a password is enough for a teacher with no
        # console training (a second factor can still be set up on the account).
        RoleSpec(TE, "Teacher", "open a site for their class until the end of the lesson", second_factor=False),
        RoleSpec(M, "Marketing officer", "ask for and endorse the school's social media sites (appendix C)",
                 second_factor=False),
    )
}

# The trust admin oversees: it reads the schools' work but changes nothing in a school, and
# does not read safeguarding cases (those stay with each school's DSL and headteacher).
GRANTS: Mapping[Permission, frozenset[ConsoleRole]] = {
    Permission.VIEW_DASHBOARD: frozenset({T, D, H, A, TA}),
    Permission.RAISE_REQUEST: frozenset({T, D, H, A}),
    # The DSL reads them to add the safeguarding risks of those that would open sites to pupils.
    Permission.VIEW_REQUESTS: frozenset({T, D, H, A, TA}),
    Permission.TRIAGE_REQUEST: frozenset({T}),
    # Seed 001 §9: requests "will be approved by the headteacher".
    Permission.DECIDE_REQUEST: frozenset({H}),
    # Closing a request without a decision (the requester no longer needs it): the headteacher
    # only, since a technician cannot close a request without the headteacher's decision (seed
    # 001 §9); one the technician judges unfit goes to the headteacher with that recommendation.
    Permission.WITHDRAW_REQUEST: frozenset({H}),
    Permission.REVIEW_REQUEST_SAFEGUARDING: frozenset({D}),
    Permission.RAISE_REPORT: frozenset({T, D, H, A}),
    Permission.VIEW_REPORTS: frozenset({T, D, H, TA}),
    Permission.ACTION_REPORT: frozenset({T}),
    # Safeguarding cases name children: the DSL and the headteacher only.
    Permission.VIEW_ALERTS: frozenset({D, H}),
    Permission.MANAGE_ALERTS: frozenset({D, H}),
    Permission.BAN_DEVICE: frozenset({D, H}),
    Permission.VIEW_ACTIVITY: frozenset({T, D, H, TA}),
    # Search terms that match the safeguarding list, in activity: the DSL; the headteacher too
    # where the school's policy says so (POLICY_GRANTS).
    Permission.READ_SAFEGUARDING_DETAIL: frozenset({D}),
    Permission.VIEW_REGISTERS: frozenset({T, D, H, A, TA}),
    Permission.EDIT_REGISTERS: frozenset({T, A}),
    # Seed 001 §3: the headteacher authorises who may use the school's social media accounts.
    Permission.AUTHORISE_ACCESS: frozenset({H}),
    Permission.VIEW_POLICY: frozenset({T, D, H, A, TA}),
    Permission.EDIT_POLICY: frozenset({T, A}),
    # Ending an approved exception early: the technician, or the headteacher who approved it.
    Permission.REVOKE_EXCEPTION: frozenset({T, H}),
    Permission.VIEW_AUDIT: frozenset({D, H, A, TA}),
    Permission.VIEW_USERS: frozenset({A, H}),
    Permission.MANAGE_USERS: frozenset({A}),
    # Giving or taking the guarded roles (DSL, headteacher) and resetting their accounts.
    Permission.GRANT_GUARDED_ROLES: frozenset({H}),
    Permission.SWITCH_SCHOOL: frozenset({TA}),
    # The filtering check log (DfE: checks made by IT with the DSL and senior leaders).
    Permission.VIEW_CHECKS: frozenset({T, D, H, A, TA}),
    Permission.RECORD_CHECK: frozenset({T, D, H}),
    Permission.RUN_SELFTEST: frozenset({T, D, H}),
    Permission.VIEW_COVERAGE: frozenset({T, D, H, A, TA}),
    # The annual review pack for governors: counts only; pupils' names only for the DSL and head.
    Permission.REVIEW_PACK: frozenset({T, D, H, A, TA}),
    Permission.REVIEW_PACK_NAMES: frozenset({D, H}),
    # Prometheus metrics and the SIEM export, for the technicians who run them.
    Permission.VIEW_METRICS: frozenset({T, A}),
    # A teacher opens a site for their class until the end of the lesson; the log is for the
    # headteacher and the DSL (and the technician, who sees every exception anyway), who can end
    # an unlock early.
    Permission.OPEN_FOR_LESSON: frozenset({TE}),
    Permission.VIEW_LESSON_UNLOCKS: frozenset({T, D, H, TA}),
    Permission.END_LESSON_UNLOCK: frozenset({T, D, H}),
    # Seed 001 §3 and appendix C: the marketing officer asks and endorses, the headteacher approves.
    Permission.VIEW_SOCIAL_MEDIA_SITES: frozenset({T, D, H, A, TA, M}),
    Permission.RAISE_SOCIAL_MEDIA_SITE: frozenset({H, M}),
    Permission.ENDORSE_SOCIAL_MEDIA_SITE: frozenset({M}),
    Permission.APPROVE_SOCIAL_MEDIA_SITE: frozenset({H}),
}

#: Powers a school's policy may give beyond the table, and to whom it may give them:
#: `[school] safeguarding_readers = ["dsl", "headteacher"]` gives the headteacher
#: READ_SAFEGUARDING_DETAIL. Nothing outside this map can be widened by a policy file.
POLICY_GRANTS: Mapping[Permission, frozenset[ConsoleRole]] = {
    Permission.READ_SAFEGUARDING_DETAIL: frozenset({H}),
}

GUARDED_ROLES = frozenset(spec.role for spec in ROLES.values() if spec.guarded)
SECOND_FACTOR_ROLES = frozenset(spec.role for spec in ROLES.values() if spec.second_factor)


def _check_table() -> None:
    """The table covers every permission and names only declared roles (checked at import)."""
    missing = set(Permission) - set(GRANTS)
    undeclared = {r for holders in (*GRANTS.values(), *POLICY_GRANTS.values()) for r in holders} - set(ROLES)
    if missing or undeclared or set(ConsoleRole) != set(ROLES):
        raise RuntimeError(f"permission table incomplete: {sorted(missing)} {sorted(undeclared)}")


_check_table()


def permissions_of(
    roles: Iterable[str], policy_grants: Mapping[Permission, frozenset[str]] | None = None
) -> frozenset[Permission]:
    """Every permission held by someone with `roles`, plus what the school's policy adds.

    `policy_grants` may only widen what POLICY_GRANTS allows; anything else in it is ignored."""
    held = frozenset(str(r) for r in roles)
    granted = {permission for permission, holders in GRANTS.items() if holders & held}
    for permission, extra in (policy_grants or {}).items():
        allowed = POLICY_GRANTS.get(permission, frozenset())
        if held & extra & allowed:
            granted.add(permission)
    return frozenset(granted)


def holds(roles: Iterable[str], permission: Permission) -> bool:
    return permission in permissions_of(roles)


def holders_text(permission: Permission) -> str:
    """Who holds `permission`, in words for a refusal: "the ICT technician or the headteacher"."""
    names = [_in_sentence(ROLES[role].title) for role in ConsoleRole if role in GRANTS[permission]]
    return " or ".join(f"the {name}" for name in names)


def _in_sentence(title: str) -> str:
    first = title.partition(" ")[0]
    return title if first.isupper() else title[0].lower() + title[1:]


def parse_roles(names: Iterable[str]) -> frozenset[ConsoleRole]:
    """Validate role names given on the command line or in a form."""
    roles: set[ConsoleRole] = set()
    for name in names:
        try:
            roles.add(ConsoleRole(name.strip().lower()))
        except ValueError:
            known = ", ".join(r.value for r in ConsoleRole)
            raise ValueError(f"unknown role {name!r} (known: {known})") from None
    return frozenset(roles)
