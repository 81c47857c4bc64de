"""The school's time zone, from its policy (`[school] timezone`): the one source of local time.

Lease files that write local times (Windows) are read in it. If the policy cannot be read the
UK's zone is used, and the caller is told why.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

DEFAULT_ZONE = "Europe/London"


def school_zone(config: Any) -> tuple[ZoneInfo, str | None]:
    """(zone, problem): the policy's time zone, or Europe/London with the reason it was not read."""
    from schoolgate.policy import load_policy
    from schoolgate.tomlpos import ConfigError

    try:
        name = load_policy(config.policy).school.timezone or DEFAULT_ZONE
    except (ConfigError, OSError) as err:
        return ZoneInfo(DEFAULT_ZONE), f"policy not read ({err}); local times are read as {DEFAULT_ZONE}"
    try:
        return ZoneInfo(name), None
    except (KeyError, ValueError):
        return ZoneInfo(DEFAULT_ZONE), f"unknown time zone {name!r}; local times are read as {DEFAULT_ZONE}"
