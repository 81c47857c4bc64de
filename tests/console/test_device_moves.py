"""A technician cannot move a headteacher-authorised device without the authorisation lapsing,
and the headteacher is told (the services' cases are in tests/services/test_register.py)."""

from __future__ import annotations

from console_testkit import Console, post_form, seed

from schoolgate.store.models import Device


def test_moving_an_authorised_device_lapses_it_and_the_headteacher_sees_why(console: Console) -> None:
    ids = seed(console)
    url = f"/devices/{ids['device']}"
    head = console.login("headteacher")
    authorised = post_form(head, url, f"{url}/authorise", {"authorised": "1", "reason": "Runs the PTA page"})
    assert authorised.status_code == 302
    tech = console.login("technician")
    moved = post_form(tech, url, url, {"device_id": "KW-IPAD-12", "name": "Class iPad 12", "mac": "02:00:00:00:99:99",
                                       "ip": "10.41.20.15", "role": "authorised", "owner": "P1042"})
    assert moved.status_code == 302
    with console.session() as session:
        device = session.get(Device, ids["device"])
        assert device is not None and device.mac == "02:00:00:00:99:99" and device.role is None
    notice = head.get("/dashboard").get_data(as_text=True)
    assert 'id="notices"' in notice and "02:00:00:00:20:15 -&gt; 02:00:00:00:99:99" in notice
    assert 'id="notices"' not in tech.get("/dashboard").get_data(as_text=True)
