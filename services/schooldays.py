"""Whether a date is a school day, by the school's own calendar in the policy."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from schoolgate.policy import CompiledPolicy


def is_school_day(policy: CompiledPolicy | None, day: date) -> bool:
    """A term day that is not a weekend or closure (INSET) day.

    Without a policy (it failed to load) every weekday counts: a DSL would rather receive a
    digest in the holidays than miss one in term.
    """
    if policy is None or not policy.calendar.terms:  # no term dates written down yet
        return day.weekday() < 5
    return policy.calendar.is_school_day(day)
