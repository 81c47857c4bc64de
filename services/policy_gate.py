"""Asks the compiled policy whether a site is hard-blocked before anyone may request it.

Illegal and circumvention categories are `locked`: no exception or approval overrides them,
so the request form refuses them up front rather than letting a headteacher approve an
exception that DNS and the proxy would ignore anyway.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from schoolgate.policy.types import Client, Decision, Role, Target
from schoolgate.services.errors import LockedTarget

if TYPE_CHECKING:
    from schoolgate.policy import CompiledPolicy as Policy

# The roles a request can be on behalf of; a lock holds for every role, but a site that is
# locked only for some roles is still refused when any of them would be.
_PROBE_ROLES = (Role.PUPIL, Role.STAFF, Role.AUTHORISED)


def locked_decision(
    policy: Policy, host: str, url: str | None, now: datetime, client: Client | None = None
) -> Decision | None:
    """The first decision that locks `host` (or `url`) for `client` or a probe client; else None."""
    from schoolgate.policy import decide

    target = Target(host=host, url=url)
    clients = [client] if client is not None else []
    clients += [Client(ip="0.0.0.0", role=role) for role in _PROBE_ROLES]
    for probe in clients:
        decision = decide(policy, probe, target, now)
        if decision.locked:
            return decision
    return None


def refuse_if_locked(policy: Policy, host: str, url: str | None, now: datetime, client: Client | None = None) -> None:
    """Raise LockedTarget with a plain explanation when the site can never be unblocked."""
    decision = locked_decision(policy, host, url, now, client)
    if decision is None:
        return
    what = decision.service_name or decision.category or "this kind of site"
    clause = f" ({decision.clause})" if decision.clause else ""
    raise LockedTarget(
        f"{host} cannot be requested: {what} is blocked for everyone by the school's policy"
        f"{clause} and no approval can override it.",
        field="url",
    )
