"""Blocks a technician adds by hand (a domain or URL prefix, for some roles or all)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schoolgate.policy.types import Role
from schoolgate.services.actor import Actor
from schoolgate.services.common import (
    Page,
    SiteScope,
    audit,
    bump_overlay,
    clean_text,
    in_scope,
    normalise_host,
    on_site,
    parse_url,
)
from schoolgate.services.errors import InvalidInput, InvalidTransition, NotFound
from schoolgate.services.permissions import Permission
from schoolgate.store.models import SiteBlockRow


@dataclass(frozen=True, slots=True)
class BlockSpec:
    """What to block: exactly one of `domain` or `url_prefix`; `roles` empty means every role."""

    domain: str | None = None
    url_prefix: str | None = None
    roles: frozenset[str] = frozenset()


def _validate(spec: BlockSpec) -> tuple[str | None, str | None, str]:
    if bool(spec.domain and spec.domain.strip()) == bool(spec.url_prefix and spec.url_prefix.strip()):
        raise InvalidInput("Give either a domain or a URL prefix to block.", field="domain")
    domain = normalise_host(spec.domain) if spec.domain and spec.domain.strip() else None
    url_prefix = parse_url(spec.url_prefix, field="url_prefix")[0] if spec.url_prefix else None
    roles: list[str] = []
    for name in sorted(spec.roles):
        try:
            roles.append(Role(name).value)
        except ValueError as err:
            known = ", ".join(r.value for r in Role)
            raise InvalidInput(f"Unknown role {name!r} (one of: {known}).", field="roles") from err
    return domain, url_prefix, ",".join(roles)


def add_site_block(
    session: Session,
    *,
    site: str,
    now: datetime,
    actor: Actor,
    spec: BlockSpec,
    reason: str,
    report_id: int | None = None,
) -> SiteBlockRow:
    """Block a domain or URL prefix; a policy change, audited, applied at the next poll."""
    actor.require(Permission.EDIT_POLICY, doing="block sites")
    domain, url_prefix, roles = _validate(spec)
    text = clean_text(reason, field="reason", max_len=2000, required=True)
    closes = block_statement(session, site, domain=domain, url_prefix=url_prefix, roles=roles)
    row = SiteBlockRow(
        site=site,
        domain=domain,
        url_prefix=url_prefix,
        roles=roles,
        reason=text,
        report_id=report_id,
        created_by=actor.name,
        created_at=now,
        enforced_scope=closes,
    )
    session.add(row)
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="site_block.create",
        object_type="site_block",
        object_id=row.id,
        detail={
            "domain": domain,
            "url_prefix": url_prefix,
            "roles": roles or "all",
            "reason": text,
            "report_id": report_id,
            "enforced_scope": closes,
        },
        now=now,
    )
    bump_overlay(session, site=site, now=now)
    return row


def block_statement(
    session: Session, site: str, *, domain: str | None, url_prefix: str | None, roles: str = ""
) -> str:
    """What a block closes, in words: a URL prefix closes the whole site on the devices the proxy
    cannot see into (schoolgate.services.approval_scope)."""
    from schoolgate.services.approval_scope import EnforcedScope, coverage_of_everyone

    if domain is not None:
        return EnforcedScope(target="domain", value=domain, host=domain, coverage=None).sentence(opening=False)
    assert url_prefix is not None
    _url, host = parse_url(url_prefix, field="url_prefix")
    wanted = frozenset(r for r in roles.split(",") if r)
    return EnforcedScope(target="url", value=url_prefix, host=host,
                         coverage=coverage_of_everyone(session, site, wanted)).sentence(opening=False)


def remove_site_block(
    session: Session, *, site: str, now: datetime, actor: Actor, block_id: int, reason: str
) -> SiteBlockRow:
    actor.require(Permission.EDIT_POLICY, doing="remove site blocks")
    row = session.get(SiteBlockRow, block_id)
    if row is None or not in_scope(row.site, site):
        raise NotFound(f"There is no site block {block_id}.")
    if row.removed_at is not None:
        raise InvalidTransition("That block has already been removed.")
    text = clean_text(reason, field="reason", max_len=2000, required=True)
    row.removed_at = now
    session.flush()
    audit(
        session,
        site=site,
        actor=actor,
        action="site_block.remove",
        object_type="site_block",
        object_id=row.id,
        detail={"domain": row.domain, "url_prefix": row.url_prefix, "reason": text},
        now=now,
    )
    bump_overlay(session, site=site, now=now)
    return row


def list_site_blocks(
    session: Session, site: SiteScope, *, include_removed: bool = False, limit: int = 100, offset: int = 0
) -> Page[SiteBlockRow]:
    conditions = [on_site(SiteBlockRow.site, site)]
    if not include_removed:
        conditions.append(SiteBlockRow.removed_at.is_(None))
    total = session.scalar(select(func.count()).select_from(SiteBlockRow).where(*conditions)) or 0
    rows = session.scalars(
        select(SiteBlockRow).where(*conditions).order_by(SiteBlockRow.id.desc()).limit(limit).offset(offset)
    ).all()
    return Page(items=rows, total=total, limit=limit, offset=offset)
