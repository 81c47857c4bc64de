"""Prometheus /metrics and the SIEM's JSON export: scraped with the token, parsed with
prometheus_client's own parser, refused without it or from outside the school's network."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from console_testkit import SITE, Console, add_event, build_console
from prometheus_client.parser import text_string_to_metric_families

from schoolgate.services import checklog
from schoolgate.store.models import DaemonStatus

TOKEN = "s3cret-scraper-token-0123456789"


@pytest.fixture
def scraped(tmp_path: Path, console_template: object) -> Console:
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    extra = f'\n[metrics]\ntoken_file = "{token_file}"\n\n[network]\nlan_cidrs = ["10.41.0.0/16"]\n'
    console = build_console(tmp_path, console_template, extra)  # type: ignore[arg-type]
    wall = datetime.now(UTC)
    with console.session() as session:
        beat = wall - timedelta(seconds=2)
        session.add(DaemonStatus(site=SITE, name="dns", pid=10, started_at=wall, heartbeat_at=beat,
                                 stats=json.dumps({"dns": {"queries": 120, "dropped": 1, "cache_hits": 80,
                                                           "stale_served": 0},
                                                   "events": {"submitted": 50, "written": 46, "overflow": 3,
                                                              "late": 0, "failed": 1, "spool_full": 0}})))
        session.add(DaemonStatus(site=SITE, name="proxy", pid=11, started_at=wall,
                                 heartbeat_at=wall - timedelta(minutes=10),
                                 stats=json.dumps({"counters": {"killed": 7, "connections_seen": 9}})))
        # net watch alive in its process and reporting that it cannot bind its NFLOG group
        session.add(DaemonStatus(site=SITE, name="gateway", pid=12, started_at=wall, heartbeat_at=beat,
                                 stats=json.dumps({"error": "PermissionError: NFLOG group 7", "retry_in_s": 5})))
        checklog.record_selftest(session, site=SITE, outcome=checklog.SelftestOutcome(
            at=console.clock.now(), trigger="morning", passed=True, failures=0, filtering_down=False,
            duration_ms=900, tried="everything", action="", profiles="pupil", detail={}))
        add_event(session, host='evil"\nhost.example', ts=console.clock.now() - timedelta(minutes=1))
        add_event(session, verdict="allow", rule_id="default", host="www.bbc.co.uk", url=None, service=None,
                  category=None, ts=console.clock.now() - timedelta(minutes=1))
        session.commit()
    return console


def families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matches = [v for have, v in found[name] if all(have.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, (name, labels, found.get(name))
    return matches[0]


def test_a_scraper_with_the_token_gets_metrics_prometheus_can_parse(scraped: Console) -> None:
    response = scraped.client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = families(response.get_data(as_text=True))
    assert value(found, "schoolgate_dns_queries_total", daemon="dns") == 120
    assert value(found, "schoolgate_events_lost_total", daemon="dns", reason="overflow") == 3
    assert value(found, "schoolgate_events_lost_total", daemon="dns", reason="failed") == 1
    assert value(found, "schoolgate_daemon_up", daemon="dns") == 1
    assert value(found, "schoolgate_daemon_up", daemon="proxy") == 0  # ten minutes without a heartbeat
    assert value(found, "schoolgate_daemon_up", daemon="gateway") == 0  # fresh, but failing
    assert value(found, "schoolgate_proxy_connections_total", outcome="killed") == 7
    assert value(found, "schoolgate_selftest_passed") == 1
    assert value(found, "schoolgate_list_entries", list="curriculum") > 0
    # The lists as `schoolgate lists status` reports them: the subscription never fetched is missing.
    assert value(found, "schoolgate_list_state", list="curriculum", state="ok") == 1
    assert value(found, "schoolgate_list_state", list="ut1", state="missing") == 1
    assert value(found, "schoolgate_list_state", list="ut1", state="ok") == 0
    assert value(found, "schoolgate_coverage_devices", status="not_filtered") == 0
    assert "schoolgate_alert_cases" in {f.name for f in text_string_to_metric_families(response.get_data(as_text=True))}


def test_without_the_token_or_the_permission_nothing_is_shown(scraped: Console) -> None:
    client = scraped.client()
    assert client.get("/metrics").status_code == 302  # to sign in
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 302
    assert scraped.login("dsl").get("/metrics").status_code == 403
    assert scraped.login("technician").get("/metrics").status_code == 200
    # From outside the school's network, even with the token: as if there were no such page.
    outside = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                         environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert outside.status_code == 404
    inside = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"},
                        environ_base={"REMOTE_ADDR": "10.41.10.5"})
    assert inside.status_code == 200


def test_the_siem_pulls_blocked_events_and_the_audit_log_as_json(scraped: Console) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    client = scraped.client()
    page = client.get("/export/events?after=0", headers=auth).get_json()
    (event,) = page["items"]
    assert event["host"] == 'evil"\nhost.example' and event["verdict"] == "block" and event["type"] == "event"
    assert page["next"] == event["id"]
    assert client.get(f"/export/events?after={page['next']}", headers=auth).get_json()["items"] == []
    everything = client.get("/export/events?after=0&all=1", headers=auth).get_json()["items"]
    assert [e["verdict"] for e in everything] == ["block", "allow"]
    assert client.get("/export/events?after=x", headers=auth).status_code == 400
    audit = client.get("/export/audit?after=0", headers=auth).get_json()
    assert audit["items"] == [] or audit["items"][0]["type"] == "audit"


def test_a_list_not_confirmed_for_days_is_stale_with_its_age(scraped: Console) -> None:
    from schoolgate.lists.state import ListState, state_dir_of

    confirmed = (scraped.clock.now() - timedelta(days=4)).isoformat()
    ListState(state_dir_of(scraped.config)).write_manifest({"lists": {"ut1": {
        "version": "ut1-1.sgl", "installed_at": confirmed, "verified_at": confirmed, "entries": {"gambling": 40}}}})
    response = scraped.client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    found = families(response.get_data(as_text=True))
    assert value(found, "schoolgate_list_state", list="ut1", state="stale") == 1
    assert value(found, "schoolgate_list_age_seconds", list="ut1") == pytest.approx(4 * 86400, abs=5)


def test_a_childs_safeguarding_search_is_withheld_from_the_siems_json(scraped: Console) -> None:
    """The SIEM is read by IT staff, not the DSL: the pulled page withholds the term and its URL."""
    with scraped.session() as session:
        add_event(session, verdict="allow", rule_id="default", host="www.google.com", service=None, category=None,
                  url="https://www.google.com/search?q=how+do+i+kill+myself", search_term="how do i kill myself",
                  ts=scraped.clock.now() - timedelta(seconds=30))
        session.commit()
    items = scraped.client().get("/export/events?after=0&all=1",
                                 headers={"Authorization": f"Bearer {TOKEN}"}).get_json()["items"]
    (search,) = [e for e in items if e["host"] == "www.google.com"]
    assert search["withheld"] is True and "kill" not in json.dumps(items)
    assert all(e["withheld"] is False for e in items if e is not search)
