"""The pure policy core: compile the school's written policy once, then decide per request.

    from schoolgate.policy import decide, load_policy
    policy = load_policy("policy.toml")            # reads files (schoolgate.policy.loader)
    policy = policy.with_overlay(exceptions=..., bans=..., blocks=...)   # from the database
    decision = decide(policy, client, target, now)

Everything except `loader` is free of I/O and clocks: the instant is always passed in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schoolgate.policy.engine import CompiledPolicy, Overlay, decide
from schoolgate.policy.explain import decision_to_dict, explain_text
from schoolgate.policy.types import (
    Ban,
    Client,
    Decision,
    ExceptionScope,
    Ownership,
    PolicyException,
    Role,
    SiteBlock,
    Target,
    Verdict,
)

if TYPE_CHECKING:
    from pathlib import Path


def load_policy(path: str | Path) -> CompiledPolicy:
    """Read, check and compile a policy file (see schoolgate.policy.loader)."""
    from schoolgate.policy.loader import load_policy as _load

    return _load(path)


__all__ = [
    "Ban",
    "Client",
    "CompiledPolicy",
    "Decision",
    "ExceptionScope",
    "Overlay",
    "Ownership",
    "PolicyException",
    "Role",
    "SiteBlock",
    "Target",
    "Verdict",
    "decide",
    "decision_to_dict",
    "explain_text",
    "load_policy",
]
