"""Keeping the policy true over time: term dates that run out, a written policy due for review.

A policy file is right on the day it is written and goes stale on its own: the term dates end
in July, and the school's written policy has a review date (the DfE standard asks schools to
review filtering at least yearly). Past the last term date every weekday counts as a holiday,
so the school-hours rules quietly stop applying; past the review date the file may no longer be
what the governors approved. Both are said ahead of time, in the same words by `doctor`, the
console's dashboard and the scheduler's e-mail to the technicians.

Pure: `today` (the school's local date) is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING

from schoolgate.timewords import day_words

if TYPE_CHECKING:
    from schoolgate.policy.engine import CompiledPolicy

# A technician needs time to get next year's dates from the local authority or trust.
CALENDAR_NOTICE_DAYS = 30

CALENDAR = "calendar"
REVIEW = "review"
NO_DOCUMENT = "document"


@dataclass(frozen=True, slots=True)
class UpkeepWarning:
    kind: str  # CALENDAR, REVIEW or NO_DOCUMENT
    due: date | None  # the last term day, or the review date
    message: str  # plain words for the technician, saying what to do

    @property
    def key(self) -> str:
        """Stable while the same date is concerned: the technician is e-mailed once per key,
        and a new calendar or review date is a new key."""
        return f"{self.kind}:{self.due.isoformat() if self.due else '-'}"


def calendar_end(policy: CompiledPolicy) -> date | None:
    """The last day the policy's term dates cover."""
    ends = [term.end for term in policy.calendar.terms]
    return max(ends) if ends else None


def upkeep_warnings(policy: CompiledPolicy, today: date) -> tuple[UpkeepWarning, ...]:
    """What needs the school's attention about the policy file on `today`, most urgent first."""
    out: list[UpkeepWarning] = []
    end = calendar_end(policy)
    if end is not None and today >= end - timedelta(days=CALENDAR_NOTICE_DAYS):
        when = day_words(end)
        if today > end:
            text = (
                f"The term dates in the policy ended on {when}: every weekday now counts as a holiday, so the "
                "school-hours rules are not applied. Add the new school year's terms, INSET days and closures "
                "to [calendar] in the policy file."
            )
        else:
            days = (end - today).days
            left = "today" if days == 0 else f"in {days} day{'s' if days != 1 else ''}"
            text = (
                f"The term dates in the policy run out on {when} ({left}). Add the next school year's terms, "
                "INSET days and closures to [calendar] in the policy file before then."
            )
        out.append(UpkeepWarning(CALENDAR, end, text))
    document = policy.document
    if document is None:
        out.append(
            UpkeepWarning(
                NO_DOCUMENT,
                None,
                "The policy file does not say which written policy it encodes or when that is due for review: "
                "add a [document] section with title and review_by.",
            )
        )
    elif today > document.review_by:
        said = f" ({document.review})" if document.review else ""
        out.append(
            UpkeepWarning(
                REVIEW,
                document.review_by,
                f"The school's {document.title} was due for review by {day_words(document.review_by)}"
                f"{said}. Once the school has reviewed it, bring the policy file into line with the new version "
                "and set [document] review_by to the next review date.",
            )
        )
    return tuple(out)
