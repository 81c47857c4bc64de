"""What a policy version says, in a form that can be stored and compared with the next one.

When a changed policy file is loaded, the scheduler records the new version in the policy
history with a summary of what changed since the version before: rules added, removed, changed
or moved; categories; lists; the calendar; windows; networks; the written document; the
clauses of the console's parts. A headteacher or technician can read that summary and see that
the filter still does what the governors approved.

Pure: `snapshot` turns a compiled policy into plain JSON-ready values, `compare` two snapshots
into a `Changes`, and `Changes.lines()` into sentences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schoolgate.policy.engine import CompiledPolicy
    from schoolgate.policy.model import Rule

Snapshot = dict[str, Any]
SNAPSHOT_VERSION = 1


def _names(mask: int, by_bit: dict[int, str]) -> list[str]:
    return sorted(name for bit, name in by_bit.items() if mask >> bit & 1)


def _rule(policy: CompiledPolicy, rule: Rule) -> dict[str, Any]:
    categories = {c.bit: c.id for c in policy.categories}
    lists = {d.bit: d.id for d in policy.lists}
    return {
        "position": rule.position,
        "action": rule.action.value,
        "clause": rule.clause,
        "reason": rule.reason,
        "roles": sorted(role.value for role in rule.roles),
        "services": sorted(policy.services[index].id for index in rule.services),
        "categories": _names(rule.categories, categories),
        "lists": _names(rule.lists, lists),
        "when": sorted(rule.when_names),
        "unless": sorted(rule.unless_names),
        "year_groups": sorted(rule.year_groups) if rule.year_groups is not None else None,
        "devices": sorted(rule.devices) if rule.devices is not None else None,
        "locked": rule.locked,
        "safe_search": rule.safe_search_level if rule.action.value == "safe_search" else None,
    }


def snapshot(policy: CompiledPolicy) -> Snapshot:
    """The settings of one policy version that a person would want to see change."""
    calendar = policy.calendar
    document = policy.document
    return {
        "version": SNAPSHOT_VERSION,
        "fingerprint": policy.fingerprint,
        "school": {"id": policy.school.id, "name": policy.school.name, "timezone": policy.school.timezone},
        "document": (
            {"title": document.title, "approved": document.approved, "review_by": document.review_by.isoformat()}
            if document is not None
            else None
        ),
        "rules": {rule.id: _rule(policy, rule) for rule in policy.rules},
        "default": {"action": policy.default_rule.action.value, "clause": policy.default_rule.clause},
        "categories": {
            c.id: {"name": c.name, "locked": c.locked, "flags": sorted(c.flags)} for c in policy.categories
        },
        "services": {s.id: sorted((*s.domains, *s.hosts)) for s in policy.services},
        "lists": {
            d.id: {
                "source": d.file or (d.source.url if d.source is not None else ""),
                "format": d.format,
                "category": d.category,
                "entries": d.count,
            }
            for d in policy.lists
        },
        "calendar": {
            "terms": [[t.name, t.start.isoformat(), t.end.isoformat()] for t in calendar.terms],
            "closures": sorted(
                [day.isoformat(), reason, day in calendar.inset_days] for day, reason in calendar.closures.items()
            ),
        },
        "windows": {w.name: w.describe() for w in policy.windows},
        "networks": [
            {"name": n.name, "role": n.role.value, "cidrs": [str(net) for net in n.networks]} for n in policy.networks
        ],
        "dynamic": {
            "exception": policy.dynamic.exception,
            "site_block": policy.dynamic.site_block,
            "ban": policy.dynamic.ban,
            "circumvention": policy.dynamic.circumvention,
        },
    }


@dataclass
class Changes:
    """What changed between two versions, by part. An empty `Changes` means the settings are
    the same (the file changed only in its comments or layout)."""

    rules_added: list[str] = field(default_factory=list)
    rules_removed: list[str] = field(default_factory=list)
    rules_changed: dict[str, list[str]] = field(default_factory=dict)  # rule id -> the fields that changed
    rules_moved: list[str] = field(default_factory=list)  # same rule, another place in the order
    categories: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)
    lists: list[str] = field(default_factory=list)
    calendar: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # school, document, windows, networks, default, [dynamic]
    first: bool = False  # no earlier version was recorded

    def empty(self) -> bool:
        return not (
            self.first
            or self.rules_added
            or self.rules_removed
            or self.rules_changed
            or self.rules_moved
            or self.categories
            or self.services
            or self.lists
            or self.calendar
            or self.other
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "rules": {
                "added": self.rules_added,
                "removed": self.rules_removed,
                "changed": self.rules_changed,
                "moved": self.rules_moved,
            },
            "categories": self.categories,
            "services": self.services,
            "lists": self.lists,
            "calendar": self.calendar,
            "other": self.other,
        }

    def lines(self) -> list[str]:
        """The summary in sentences, most important first."""
        if self.first:
            return ["The first version recorded on this appliance."]
        out: list[str] = []
        if self.rules_added:
            out.append("Rules added: " + ", ".join(self.rules_added) + ".")
        if self.rules_removed:
            out.append("Rules removed: " + ", ".join(self.rules_removed) + ".")
        for rule_id, fields in self.rules_changed.items():
            out.append(f"Rule {rule_id} changed: {', '.join(fields)}.")
        if self.rules_moved:
            out.append("Rules in a new order (the first that matches decides): " + ", ".join(self.rules_moved) + ".")
        out += self.categories + self.lists + self.calendar + self.services + self.other
        return out or ["No setting changed (comments or layout only)."]

    def summary(self, limit: int = 6) -> str:
        lines = self.lines()
        more = len(lines) - limit
        return " ".join(lines[:limit]) + (f" And {more} more change{'s' if more != 1 else ''}." if more > 0 else "")


def _keyed(label: str, before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out: list[str] = []
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(key for key in set(before) & set(after) if before[key] != after[key])
    if added:
        out.append(f"{label} added: {', '.join(added)}.")
    if removed:
        out.append(f"{label} removed: {', '.join(removed)}.")
    if changed:
        out.append(f"{label} changed: {', '.join(changed)}.")
    return out


def _calendar(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if before["terms"] != after["terms"]:
        last_before = before["terms"][-1][2] if before["terms"] else "none"
        last_after = after["terms"][-1][2] if after["terms"] else "none"
        out.append(f"Term dates changed ({len(after['terms'])} terms, the last ending {last_after}; "
                   f"before: {len(before['terms'])}, ending {last_before}).")
    old = {tuple(c) for c in before["closures"]}
    new = {tuple(c) for c in after["closures"]}
    if old != new:
        added = sorted(c[0] for c in new - old)
        removed = sorted(c[0] for c in old - new)
        parts = [f"added {', '.join(added)}"] if added else []
        parts += [f"removed {', '.join(removed)}"] if removed else []
        out.append(f"Closure and INSET days changed: {'; '.join(parts)}.")
    return out


_OTHER = (
    ("school", "The school's settings"),
    ("document", "The written policy ([document])"),
    ("windows", "Time windows"),
    ("networks", "Networks"),
    ("default", "The default for sites no rule names"),
    ("dynamic", "The clauses the console's parts cite ([dynamic])"),
)


def compare(before: Snapshot | None, after: Snapshot) -> Changes:
    """What changed from `before` (None: no earlier version) to `after`."""
    if before is None:
        return Changes(first=True)
    if before.get("version") != SNAPSHOT_VERSION:
        return Changes(other=["The earlier version was recorded in another form: its changes cannot be listed."])
    changes = Changes()
    old_rules, new_rules = before["rules"], after["rules"]

    def in_order(rules: dict[str, Any], ids: list[str]) -> list[str]:
        # By position: a stored snapshot's keys are sorted by name, not in the file's order.
        return sorted(ids, key=lambda rule_id: rules[rule_id]["position"])

    changes.rules_added = in_order(new_rules, [r for r in new_rules if r not in old_rules])
    changes.rules_removed = in_order(old_rules, [r for r in old_rules if r not in new_rules])
    both = [r for r in new_rules if r in old_rules]
    kept, old_order = in_order(new_rules, both), in_order(old_rules, both)
    for rule_id in kept:
        old, new = old_rules[rule_id], new_rules[rule_id]
        fields = [key for key in new if key != "position" and new[key] != old.get(key)]
        if fields:
            changes.rules_changed[rule_id] = fields
    if old_order != kept:
        changes.rules_moved = [r for r, was in zip(kept, old_order, strict=True) if r != was]
    changes.categories = _keyed("Categories", before["categories"], after["categories"])
    changes.services = _keyed("Services", before["services"], after["services"])
    changes.lists = _keyed("Lists", before["lists"], after["lists"])
    changes.calendar = _calendar(before["calendar"], after["calendar"])
    changes.other = [f"{label} changed." for key, label in _OTHER if before.get(key) != after.get(key)]
    return changes
