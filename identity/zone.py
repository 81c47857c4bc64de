"""The school's time zone, from its policy (`[school] timezone`): the one source of local time.

Lease files that write local times (Windows) are read in it. There is no fallback zone: a guess
would shift every lease by the difference and name the wrong pupil for a device, so while the
policy cannot be read the caller is told why and reads no local times.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any


class ZoneUnknown(Exception):
    """The policy could not be read, so the school's time zone is not known."""


def school_zone(config: Any) -> tzinfo:
    """The policy's time zone (the compiler has already checked that the name is a real zone)."""
    from schoolgate.policy import load_policy
    from schoolgate.tomlpos import ConfigError

    try:
        zone: tzinfo = load_policy(config.policy).school.zone
        return zone
    except (ConfigError, OSError) as err:
        raise ZoneUnknown(f"the school's time zone is unknown until the policy can be read ({err})") from err
