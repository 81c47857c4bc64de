"""The DSL's case page shows its evidence; activity shows what was refused quietly, per device."""

from __future__ import annotations

from datetime import timedelta

from console_testkit import SITE, Console, add_event, seed

from schoolgate.services.alert_rules import AlertEngine
from schoolgate.store.models import Alert


def test_a_case_page_shows_what_happened_when_and_how_often(console: Console) -> None:
    ids = seed(console)  # three visits to psiphon.ca, a minute apart
    page = console.login("dsl").get(f"/alerts/{ids['alert']}").get_data(as_text=True)
    assert "What happened" in page and 'id="alert-evidence"' in page
    assert "Tried to open a VPN, proxy or encrypted-DNS site" in page and "psiphon.ca" in page
    assert "3 attempts" in page
    with console.session() as session:
        case = session.get(Alert, ids["alert"])
        assert case is not None and case.severity == "high" and case.trigger_count == 3
        assert case.summary.splitlines()[0].startswith("3 attempts to get round the filter")


def test_quiet_refusals_are_counted_per_device_and_never_alerts(console: Console) -> None:
    now = console.clock.now()
    quic = {"source": "gateway", "verdict": "refused", "rule_id": "gateway.refuse.quic", "flags": "quic",
            "category": None, "service": None, "url": "udp://203.0.113.10:443", "host": "203.0.113.10"}
    with console.session() as session:
        for minute in range(4):
            add_event(session, ts=now - timedelta(minutes=minute + 1), role="staff", device_id="KW-STAFF-21",
                      device_name="Staff laptop 21", person_name="Cara <b>Teacher</b>", **quic)
        # Two asks of one resolver folded into one row (its count), as the event writer does a burst's.
        for n, (address, asks) in enumerate((("192.0.2.53", 2), ("198.51.100.53", 1))):
            add_event(session, ts=now - timedelta(minutes=n + 1), count=asks, device_id=None, device_name=None,
                      person_id=None,
                      person_name=None, client_ip="10.41.30.77", mac="02:00:00:00:30:77",
                      **{**quic, "verdict": "redirect", "rule_id": "gateway.redirect.dns", "flags": "foreign_resolver",
                         "url": f"udp://{address}:53", "host": address})
        AlertEngine().scan(session, SITE, None, now)
        assert session.query(Alert).count() == 0
        session.commit()
    tech = console.login("technician")
    page = tech.get("/activity/devices").get_data(as_text=True)
    assert 'id="device-signals"' in page
    assert "Staff laptop 21 (Cara &lt;b&gt;Teacher&lt;/b&gt;)" in page and "<b>Teacher" not in page
    assert "HTTP/3 (QUIC) refused; the browser used HTTPS instead" in page
    assert "10.41.30.77" in page and "not registered" in page
    rows = tech.get("/activity/devices?format=csv").get_data(as_text=True).splitlines()
    assert rows[0] == "site,device,registered,label,kind,attempts,destinations,first_seen,last_seen"
    counts = {(r.split(",")[1], r.split(",")[4]): (r.split(",")[5], r.split(",")[6]) for r in rows[1:]}
    assert counts == {("KW-STAFF-21", "quic"): ("4", "1"), ("10.41.30.77", "foreign_dns"): ("3", "2")}
    # and in the activity search, each is shown for what it is
    event = tech.get("/activity?verdict=refused").get_data(as_text=True)
    assert "203.0.113.10" in event


def test_the_dsl_bans_an_unregistered_phone_from_its_case(console: Console) -> None:
    from console_testkit import post_form

    from schoolgate.store.models import BanRow

    now = console.clock.now()
    phone = {"device_id": None, "device_name": None, "person_id": None, "person_name": None,
             "client_ip": "10.41.20.88", "mac": "02:00:00:00:20:88", "host": "nordvpn.com", "url": None,
             "service": "vpn", "category": "circumvention", "rule_id": "no-circumvention", "flags": "circumvention"}
    with console.session() as session:
        add_event(session, ts=now - timedelta(minutes=2), **phone)
        AlertEngine().scan(session, SITE, None, now)
        session.commit()
        case_id = session.query(Alert).one().id
    dsl = console.login("dsl")
    url = f"/alerts/{case_id}"
    page = dsl.get(url).get_data(as_text=True)
    # The form offers the phone's MAC, a reason that names no one, and the policy's supervisor.
    assert 'value="02:00:00:00:20:88"' in page and f"(case {case_id})" in page
    form = {"device_id": "02:00:00:00:20:88", "until": "", "supervisor": "Mrs Khan"}
    titled = post_form(dsl, url, f"{url}/ban", {**form, "ban_reason": "Circumvention attempt from 10.41.20.88"})
    assert titled.status_code == 400 and "audit log" in titled.get_data(as_text=True)
    done = post_form(dsl, url, f"{url}/ban", {**form, "ban_reason": f"Seed 001 §9 (case {case_id})"})
    assert done.status_code == 302
    with console.session() as session:
        ban = session.query(BanRow).filter(BanRow.mac == "02:00:00:00:20:88").one()
        assert (ban.device_id, ban.until, ban.supervisor, ban.alert_id) == (None, None, "Mrs Khan", case_id)
    shown = dsl.get(url).get_data(as_text=True)
    assert 'id="alert-ban"' in shown and "until lifted" in shown and "Mrs Khan" in shown
    listed = dsl.get("/alerts/bans").get_data(as_text=True)
    assert "02:00:00:00:20:88" in listed and "not registered" in listed and "until lifted" in listed


def test_an_events_page_says_what_its_count_folds(console: Console) -> None:
    """A blocked row may hold a burst's asks for one name (A, AAAA and HTTPS within a second);
    an allowed row a minute's requests. The page says which, and the types asked."""
    now = console.clock.now()
    with console.session() as session:
        blocked = add_event(session, ts=now - timedelta(minutes=2), source="dns", verdict="block", count=3,
                            qtype="A,AAAA,HTTPS", url=None)
        allowed = add_event(session, ts=now - timedelta(minutes=3), source="dns", verdict="allow", count=7,
                            qtype="A", url=None, flags="", rule_id="default")
        session.commit()
        ids = (blocked.id, allowed.id)
    tech = console.login("technician")
    page = tech.get(f"/activity/{ids[0]}").get_data(as_text=True)
    assert "(3 attempts within a second)" in page and "dns (A,AAAA,HTTPS)" in page
    page = tech.get(f"/activity/{ids[1]}").get_data(as_text=True)
    assert "(7 attempts that minute)" in page
