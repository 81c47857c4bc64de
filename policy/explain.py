"""Decisions in words: for the console's "why was this blocked?", the block page and the CLI.

Shared so every place explains a decision the same way. Text here is built from the policy
file and from attacker-controlled host names; callers that render HTML must escape it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schoolgate.policy.engine import SUPPORT_RULE_ID, CompiledPolicy
from schoolgate.policy.types import Decision, Role, Verdict

ROLE_WORDS = {
    Role.PUPIL: "pupil",
    Role.STAFF: "staff",
    Role.AUTHORISED: "authorised staff",
    Role.GUEST: "guest",
    Role.SUPERVISED: "supervised device (ban)",
}

_VERDICT_WORDS = {
    Verdict.ALLOW: "Allowed",
    Verdict.BLOCK: "Blocked",
    Verdict.SAFE_SEARCH: "Allowed with safe search",
}


def decision_to_dict(decision: Decision, policy: CompiledPolicy | None = None) -> dict[str, Any]:
    """A JSON-ready view of a decision (times in ISO 8601 with offset)."""
    local_until: str | None = None
    if decision.valid_until is not None and policy is not None:
        local_until = decision.valid_until.astimezone(policy.school.zone).isoformat()
    return {
        "verdict": decision.verdict.value,
        "rule": decision.rule_id,
        "clause": decision.clause,
        "reason": decision.reason,
        "role": decision.role.value,
        "service": decision.service,
        "service_name": decision.service_name,
        "category": decision.category,
        "list": decision.list_id,
        "matched": decision.matched,
        "locked": decision.locked,
        "exception_id": decision.exception_id,
        "rewrite_to": decision.rewrite_to,
        "valid_until": decision.valid_until.isoformat() if decision.valid_until else None,
        "valid_until_local": local_until,
        "flags": sorted(decision.flags),
        "category_rationale": category_rationale(decision, policy) if policy is not None else None,
    }


def when_text(instant: datetime, policy: CompiledPolicy, now: datetime | None = None) -> str:
    """'at 15:15' on the same local day as `now`, else 'on Monday 2 November at 08:45'."""
    zone = policy.school.zone
    local = instant.astimezone(zone)
    clock = f"{local:%H:%M}"
    if now is not None and now.astimezone(zone).date() == local.date():
        return f"at {clock}"
    return f"on {local:%A} {local.day} {local:%B %Y} at {clock}"


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    return text if text.endswith((".", "!", "?")) else text + "."


def category_rationale(decision: Decision, policy: CompiledPolicy) -> str | None:
    """The published rationale of the category behind a block (or behind an always-open
    support site), e.g. "Gambling: Betting, casino, lottery and other sites ..."."""
    if decision.category is None or (decision.verdict is not Verdict.BLOCK and decision.rule_id != SUPPORT_RULE_ID):
        return None
    category = policy.category_by_id.get(decision.category)
    if category is None or not category.description.strip():
        return None
    return f"{category.name}: {_sentence(category.description)}"


def explain_text(decision: Decision, policy: CompiledPolicy, now: datetime | None = None) -> str:
    """One or two sentences a headteacher understands, e.g.

    "Blocked: pupils may not use social media at school (Social Media Policy §6, §9).
     Facebook. Changes at 15:15."
    """
    parts = [f"{_VERDICT_WORDS[decision.verdict]}: {decision.reason.strip().rstrip('.')} ({decision.clause})."]
    what = decision.service_name or decision.matched
    if what:
        parts.append(_sentence(what))
    rationale = category_rationale(decision, policy)
    if rationale:
        parts.append(rationale)
    if decision.verdict is Verdict.SAFE_SEARCH and decision.rewrite_to:
        parts.append(f"Results come from {decision.rewrite_to}.")
    if "banned" in decision.flags:
        parts.append(f"This device or person is under a ban and is treated as supervised ({policy.dynamic.ban}).")
    if "circumvention" in decision.flags:
        parts.append("This is a way round the school's filter; attempts are reported to the DSL.")
    if decision.exception_id is not None:
        parts.append(f"Exception {decision.exception_id}.")
    if decision.locked:
        parts.append("This block cannot be lifted by an exception.")
    if decision.valid_until is not None:
        parts.append(f"Changes {when_text(decision.valid_until, policy, now)}.")
    else:
        parts.append("No change is scheduled.")
    return " ".join(parts)
