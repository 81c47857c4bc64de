"""The check log in the console: a manual check from a phone in one form, a fix, the log and CSV."""

from __future__ import annotations

from console_testkit import Console, csrf_from, post_form
from sqlalchemy import select

from schoolgate.store.models import CheckRecord, Generation


def test_a_technician_records_a_failed_check_then_its_fix(console: Console) -> None:
    client = console.login("technician")
    page = client.get("/checks/new").get_data(as_text=True)
    # The form offers the policy's networks with their roles, and the common tests.
    assert "pupil (Pupil Wi-Fi and class iPads)" in page and "Am I filtered?" in page
    response = post_form(client, "/checks/new", "/checks/new", {
        "device_type": "Class iPad", "location": "Year 5 classroom", "profile": "pupil (Pupil Wi-Fi and class iPads)",
        "tried": "Tried a blocked social media site", "result": "fail", "action": "",
    })
    assert response.status_code == 400
    assert "needs the action taken" in response.get_data(as_text=True)
    response = post_form(client, "/checks/new", "/checks/new", {
        "device_type": "Class iPad", "location": "Year 5 classroom", "profile": "pupil (Pupil Wi-Fi and class iPads)",
        "tried": "Tried a blocked social media site", "result": "fail", "action": "iPad was on the guest SSID",
        "at": "",
    })
    assert response.status_code == 302
    with console.session() as session:
        row = session.scalars(select(CheckRecord).where(CheckRecord.location == "Year 5 classroom")).one()
        assert (row.result, row.actor, row.at) == ("fail", "technician", console.clock.now())
    shown = client.get(f"/checks/{row.id}").get_data(as_text=True)
    assert "iPad was on the guest SSID" in shown and "Record the fix" in shown
    response = post_form(client, f"/checks/{row.id}", f"/checks/{row.id}/fix",
                         {"action": "Moved the class iPads to the pupil SSID"})
    assert response.status_code == 302
    log = client.get("/checks?show=fixes").get_data(as_text=True)
    assert "Moved the class iPads to the pupil SSID" in log and f"check {row.id}" in log
    # The next check starts from the last place and device.
    assert 'value="Year 5 classroom"' in client.get("/checks/new").get_data(as_text=True)


def test_the_log_exports_as_csv_and_hostile_text_stays_text(console: Console) -> None:
    client = console.login("dsl")
    response = post_form(client, "/checks/new", "/checks/new", {
        "device_type": "<script>alert(1)</script>", "location": "=HYPERLINK(\"http://x\")", "profile": "staff",
        "tried": "Opened the 'Am I filtered?' page: every category test", "result": "pass",
    })
    assert response.status_code == 302
    page = client.get("/checks").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    csv = client.get("/checks?format=csv").get_data(as_text=True)
    assert "'=HYPERLINK" in csv  # the formula is neutralised
    assert csv.splitlines()[0].startswith("id,kind,when,who,device_type,location,profile,what_was_tested,result")


def test_asking_for_a_selftest_leaves_a_mark_for_the_scheduler(console: Console) -> None:
    client = console.login("technician")
    page = client.get("/checks").get_data(as_text=True)
    response = client.post("/checks/selftest", data={"csrf_token": csrf_from(page)})
    assert response.status_code == 302
    with console.session() as session:
        mark = session.get(Generation, ("kingswood", "selftest_requested"))
        assert mark is not None and mark.value == 1
