"""Console roles and what each may do.

The roles are the ones a school names in its policy: the ICT technician, the designated
safeguarding lead (DSL), the headteacher, and an admin who manages accounts. A person may
hold several. Each permission lists the roles that hold it, so a route asks for a
permission, never for a role by name, and this table is the one place to read who may do what.
"""

from __future__ import annotations

from enum import StrEnum


class ConsoleRole(StrEnum):
    TECHNICIAN = "technician"
    DSL = "dsl"
    HEADTEACHER = "headteacher"
    ADMIN = "admin"
    # A multi-academy trust's account (ConsoleUser.site None): reads every school's records.
    TRUST_ADMIN = "trust_admin"


ALL_ROLES = frozenset(ConsoleRole)

# Roles whose accounts must use a second factor: they approve exceptions, read
# safeguarding cases or manage accounts.
TOTP_REQUIRED = frozenset({ConsoleRole.DSL, ConsoleRole.HEADTEACHER, ConsoleRole.ADMIN, ConsoleRole.TRUST_ADMIN})

T, D, H, A = ConsoleRole.TECHNICIAN, ConsoleRole.DSL, ConsoleRole.HEADTEACHER, ConsoleRole.ADMIN
# The trust admin oversees: it reads the schools' work but changes nothing in a school, and
# does not read safeguarding cases (those stay with each school's DSL and headteacher).
TA = ConsoleRole.TRUST_ADMIN


class Permission(StrEnum):
    VIEW_DASHBOARD = "view_dashboard"
    RAISE_REQUEST = "raise_request"
    VIEW_REQUESTS = "view_requests"
    TRIAGE_REQUEST = "triage_request"
    DECIDE_REQUEST = "decide_request"
    RAISE_REPORT = "raise_report"
    VIEW_REPORTS = "view_reports"
    ACTION_REPORT = "action_report"
    VIEW_ALERTS = "view_alerts"
    MANAGE_ALERTS = "manage_alerts"
    BAN_DEVICE = "ban_device"
    VIEW_ACTIVITY = "view_activity"
    VIEW_REGISTERS = "view_registers"
    EDIT_REGISTERS = "edit_registers"
    AUTHORISE_ACCESS = "authorise_access"
    VIEW_POLICY = "view_policy"
    EDIT_POLICY = "edit_policy"
    REVOKE_EXCEPTION = "revoke_exception"
    VIEW_AUDIT = "view_audit"
    MANAGE_USERS = "manage_users"
    VIEW_CHECKS = "view_checks"
    RECORD_CHECK = "record_check"
    RUN_SELFTEST = "run_selftest"
    VIEW_COVERAGE = "view_coverage"
    REVIEW_PACK = "review_pack"
    REVIEW_PACK_NAMES = "review_pack_names"
    VIEW_METRICS = "view_metrics"


GRANTS: dict[Permission, frozenset[ConsoleRole]] = {
    Permission.VIEW_DASHBOARD: frozenset({T, D, H, A, TA}),
    Permission.RAISE_REQUEST: frozenset({T, D, H, A}),
    Permission.VIEW_REQUESTS: frozenset({T, H, A, TA}),
    Permission.TRIAGE_REQUEST: frozenset({T}),
    Permission.DECIDE_REQUEST: frozenset({H}),
    Permission.RAISE_REPORT: frozenset({T, D, H, A}),
    Permission.VIEW_REPORTS: frozenset({T, D, H, TA}),
    Permission.ACTION_REPORT: frozenset({T}),
    # Safeguarding cases name children: the DSL and the headteacher only.
    Permission.VIEW_ALERTS: frozenset({D, H}),
    Permission.MANAGE_ALERTS: frozenset({D, H}),
    Permission.BAN_DEVICE: frozenset({D, H}),
    Permission.VIEW_ACTIVITY: frozenset({T, D, H, TA}),
    Permission.VIEW_REGISTERS: frozenset({T, D, H, A, TA}),
    Permission.EDIT_REGISTERS: frozenset({T, A}),
    # Seed 001 §3: the headteacher authorises who may use the school's social media accounts.
    Permission.AUTHORISE_ACCESS: frozenset({H}),
    Permission.VIEW_POLICY: frozenset({T, D, H, A, TA}),
    Permission.EDIT_POLICY: frozenset({T, A}),
    # Ending an approved exception early: the technician, or the headteacher who approved it.
    Permission.REVOKE_EXCEPTION: frozenset({T, H}),
    Permission.VIEW_AUDIT: frozenset({H, A, TA}),
    Permission.MANAGE_USERS: frozenset({A}),
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
}


def holds(roles: frozenset[str], permission: Permission) -> bool:
    return bool(GRANTS[permission] & roles)


def parse_roles(names: list[str]) -> frozenset[ConsoleRole]:
    """Validate role names given on the command line or in a form."""
    roles: set[ConsoleRole] = set()
    for name in names:
        try:
            roles.add(ConsoleRole(name.strip().lower()))
        except ValueError:
            known = ", ".join(r.value for r in ConsoleRole)
            raise ValueError(f"unknown role {name!r} (known: {known})") from None
    return frozenset(roles)
