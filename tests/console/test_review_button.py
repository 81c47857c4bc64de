"""The console's review button: the year's pack as a PDF download; names only for the DSL and head."""

from __future__ import annotations

import pytest
from console_testkit import Console, post_form, seed

from schoolgate.store.models import AuditEntry


@pytest.mark.browser
@pytest.mark.slow
def test_the_headteacher_downloads_the_pack_and_it_is_audited(console: Console) -> None:
    seed(console)
    head = console.login("headteacher")
    assert "2026-27" in head.get("/review").get_data(as_text=True)
    response = post_form(head, "/review", "/review", {"year": "2026-27", "names": "1"})
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/pdf" and response.data.startswith(b"%PDF-")
    assert "filtering-review-kingswood-2026-27-named.pdf" in response.headers["Content-Disposition"]
    with console.session() as session:
        entry = session.query(AuditEntry).filter_by(action="review_pack.generate").one()
        assert (entry.actor, entry.object_id) == ("headteacher", "2026-27")


def test_names_need_the_dsl_or_the_head_and_a_bad_year_is_explained(console: Console) -> None:
    tech = console.login("technician")
    assert post_form(tech, "/review", "/review", {"year": "2026-27", "names": "1"}).status_code == 403
    bad = post_form(tech, "/review", "/review", {"year": "last year"})
    assert bad.status_code == 400 and "YYYY-YY" in bad.get_data(as_text=True)
