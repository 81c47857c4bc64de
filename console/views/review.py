"""The annual review pack, from the console: choose the year, get the PDF for the governors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, abort, render_template, request

from schoolgate.console import web
from schoolgate.services.permissions import Permission

bp = Blueprint("review", __name__, url_prefix="/review")


def _years(now: datetime) -> list[str]:
    """This school year and the three before it, newest first."""
    local = now.astimezone(web.zone())
    first = local.year if local.month >= 9 else local.year - 1
    return [f"{y}-{(y + 1) % 100:02d}" for y in range(first, first - 4, -1)]


@bp.route("", methods=["GET", "POST"])
@web.requires(Permission.REVIEW_PACK)
def index() -> Any:
    years = _years(web.now())
    if request.method == "GET":
        return render_template("review/index.html", years=years, error=None)
    from schoolgate.review.facts import ReviewError, Year, gather
    from schoolgate.review.pdf import PdfError, html_to_pdf
    from schoolgate.review.render import render_html
    from schoolgate.services.common import audit

    names = request.form.get("names") == "1"
    if names and not web.can(Permission.REVIEW_PACK_NAMES):
        abort(403)
    try:
        year = Year.parse(request.form.get("year", ""), web.zone())
        facts = gather(web.state().config, web.db(), web.policy(), year, web.now(), include_names=names)
    except ReviewError as err:
        return render_template("review/index.html", years=years, error=str(err)), 400
    web.db().rollback()  # nothing written yet: end the reading transaction before the slow print
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="schoolgate-pack-") as folder:
        out = Path(folder) / "review.pdf"
        try:
            size = html_to_pdf(render_html(facts), out)
        except PdfError as err:
            return render_template("review/index.html", years=years, error=str(err)), 503
        data = out.read_bytes()
    audit(web.db(), site=web.site_id(), actor=web.actor(), action="review_pack.generate", object_type="review",
          object_id=year.label, detail={"names": names, "bytes": size}, now=web.now())
    web.db().commit()
    filename = f"filtering-review-{web.site_id()}-{year.label}{'-named' if names else ''}.pdf"
    return Response(data, mimetype="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
