"""`[dns] illegal_content_upstream`: every query goes through the resolver carrying the IWF and
CTIRU lists (never round it), and each change of it is in the audit log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from authority import Authority
from conftest import DATA, Daemon, ask
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from schoolgate.store.models import AuditEntry


def _configure(daemon: Daemon, provider: str, upstreams: list[str]) -> None:
    config = daemon.workdir / "schoolgate.toml"
    text = (DATA / "schoolgate.toml").read_text(encoding="utf-8")
    lines = [f'illegal_content_provider = "{provider}"', f"illegal_content_upstream = {json.dumps(upstreams)}"]
    # The keys belong in [dns]: put them right after its header.
    text = text.replace("[dns]\n", "[dns]\n" + "\n".join(lines) + "\n", 1)
    config.write_text(text, encoding="utf-8")


def _audit(daemon: Daemon) -> list[dict[str, object]]:
    engine = create_engine(daemon.db_url)
    try:
        with Session(engine) as session:
            entries = session.scalars(
                select(AuditEntry).where(AuditEntry.action == "dns.illegal_content_upstream").order_by(AuditEntry.seq)
            ).all()
            return [json.loads(e.detail) for e in entries]
    finally:
        engine.dispose()


def test_every_query_goes_through_the_illegal_content_resolver_and_changes_are_audited(
    fresh_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    ordinary = Authority().start()
    filtered = Authority().start()
    other = Authority().start()
    try:
        daemon = fresh_daemon([ordinary.address])
        _configure(daemon, "Example ISP filtered DNS (IWF member)", [filtered.address])
        daemon.start()
        reply = ask(daemon.port, "www.example.test")
        assert reply.answer, reply
        assert filtered.queries[("www.example.test", "A")] == 1
        assert sum(ordinary.queries.values()) == 0  # --upstream is not a way round it
        assert daemon.stop() == 0

        daemon.start()  # the same setting again: nothing new to record
        assert daemon.stop() == 0
        _configure(daemon, "Trust member resolver", [other.address])
        daemon.start()
        ask(daemon.port, "www.example.test")
        assert other.queries[("www.example.test", "A")] == 1
        assert daemon.stop() == 0
    finally:
        for server in (ordinary, filtered, other):
            server.close()
    recorded = _audit(daemon)
    assert [r["provider"] for r in recorded] == ["Example ISP filtered DNS (IWF member)", "Trust member resolver"]
    assert recorded[0]["previous"] is None
    assert recorded[1]["previous"] == {"provider": "Example ISP filtered DNS (IWF member)",
                                       "upstreams": [filtered.address]}
