"""The console's roles and permissions: the one table in schoolgate.services.permissions.

Kept as an import path for console code written before the table moved to the services (which
check the same permissions); there is nothing here but the names.
"""

from __future__ import annotations

from schoolgate.services.permissions import (
    GRANTS,
    ROLES,
    SECOND_FACTOR_ROLES,
    ConsoleRole,
    Permission,
    holds,
    parse_roles,
)

#: Roles whose accounts must use a second factor (see RoleSpec.second_factor).
TOTP_REQUIRED = SECOND_FACTOR_ROLES

__all__ = ["GRANTS", "ROLES", "TOTP_REQUIRED", "ConsoleRole", "Permission", "holds", "parse_roles"]
