"""The trust admin's school switcher: one school, or the whole trust, for every list."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, request, session

from schoolgate.console import web
from schoolgate.services.permissions import Permission

bp = Blueprint("trust", __name__, url_prefix="/trust")


@bp.route("/site", methods=["POST"])
@web.requires(Permission.SWITCH_SCHOOL)
def choose_site() -> Any:
    user = web.current_user()
    if user is None or user.site is not None:
        abort(403)  # a school's account never switches, whatever its roles
    choice = request.form.get("site", "")
    if choice != web.WHOLE_TRUST and choice not in web.visible_sites():
        abort(404)
    session[web.SITE_CHOICE] = choice
    names = web.site_names()
    flash("Showing the whole trust." if choice == web.WHOLE_TRUST else f"Showing {names.get(choice, choice)}.")
    return redirect(web.safe_next(request.form.get("next")) or web.home_url())
