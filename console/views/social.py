"""Seed 001 appendix C in the console: the social media site creation approval form, the
marketing officer's endorsement and the headteacher's signed approval (which makes the named
administrators authorised until it expires; schoolgate.services.social_media_sites)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from schoolgate.console import web
from schoolgate.console.forms import parse_local
from schoolgate.console.reauth import ReauthFailed, sign
from schoolgate.services import social_media_sites as svc
from schoolgate.services.actor import Signature
from schoolgate.services.errors import InvalidInput, ServiceError
from schoolgate.services.permissions import Permission
from schoolgate.store.models import Person, SocialMediaSite

bp = Blueprint("social", __name__, url_prefix="/social")

TEXT_FIELDS = ("platform", "team", "department", "moderator", "purpose", "aims", "content", "vetting", "host",
               "go_live", "advertising", "consent", "security")


@bp.route("")
@web.requires(Permission.VIEW_SOCIAL_MEDIA_SITES)
def index() -> Any:
    page = svc.list_sites(web.db(), web.site_scope(), offset=web.int_arg("offset", 0))
    today = web.now().astimezone(web.policy().school.zone).date()
    return render_template("social/index.html", page=page, reference=svc.reference_for, args={},
                           review=set(r.id for r in svc.due_for_review(page.items, today)))


def _staff() -> list[Person]:
    """The people who may administer a school site: active, and not pupils (at most 500)."""
    from schoolgate.services.register import own_role

    people = web.db().scalars(
        select(Person).where(Person.site == web.site_id(), Person.active.is_(True)).order_by(Person.name).limit(2000)
    ).all()
    return [p for p in people if own_role(p) != "pupil"][:500]


def _reach(prefix: str) -> svc.Reach:
    form = request.form
    return svc.Reach(
        groups=frozenset(g for g in form.getlist(f"{prefix}_groups") if g),
        pupil_ages=form.get(f"{prefix}_pupil_ages", ""),
        schools=form.get(f"{prefix}_schools", ""),
        other=form.get(f"{prefix}_other", ""),
    )


def _form_page(values: dict[str, Any], *, errors: dict[str, str] | None = None, message: str | None = None,
               status: int = 200) -> Any:
    return render_template("social/new.html", values=values, staff=_staff(), groups=svc.GROUPS,
                           errors=errors or {}, message=message, minimum=svc.MIN_ADMINISTRATORS), status


@bp.route("/new", methods=["GET", "POST"])
@web.requires(Permission.RAISE_SOCIAL_MEDIA_SITE)
def new() -> Any:
    user = web.current_user()
    assert user is not None
    if request.method == "GET":
        return _form_page({"moderator": user.display_name, "administrators": [], "audience": svc.Reach(),
                           "contributors": svc.Reach()})
    values: dict[str, Any] = {k: request.form.get(k, "") for k in TEXT_FIELDS}
    values["administrators"] = [a[:100] for a in request.form.getlist("administrators")][:50]
    values["audience"], values["contributors"] = _reach("audience"), _reach("contributors")
    try:
        go_live = parse_local(values["go_live"], field="go_live").date() if values["go_live"].strip() else None
        record = svc.submit(
            web.db(), site=web.site_id(), now=web.now(), actor=web.actor(),
            form=svc.SiteForm(
                platform=values["platform"], team=values["team"], department=values["department"],
                moderator=values["moderator"], purpose=values["purpose"], aims=values["aims"],
                content=values["content"], audience=values["audience"], contributors=values["contributors"],
                administrators=values["administrators"], vetting=values["vetting"], host=values["host"],
                go_live=go_live, advertising=values["advertising"], consent=values["consent"],
                security=values["security"],
            ),
        )
    except ServiceError as err:
        web.db().rollback()
        return _form_page(values, errors=web.field_errors(err), message=err.message, status=web.error_status(err))
    web.db().commit()
    flash(f"{svc.reference_for(record.id)} is sent to the marketing officer, then the headteacher.")
    return redirect(url_for("social.show", record_id=record.id))


def _load(record_id: int) -> SocialMediaSite:
    try:
        return svc.get(web.db(), web.site_scope(), record_id)
    except ServiceError:
        abort(404)


def _show(record: SocialMediaSite, *, errors: dict[str, str] | None = None, message: str | None = None,
          values: dict[str, str] | None = None, status: int = 200) -> Any:
    user = web.current_user()
    assert user is not None
    return render_template(
        "social/show.html", record=record, reference=svc.reference_for(record.id), reach=svc.reach_of(record),
        errors=errors or {}, message=message, status_words=STATUS_WORDS,
        values={"signer_name": user.display_name, **(values or {})},
    ), status


STATUS_WORDS = {
    svc.SUBMITTED: "waiting for the marketing officer",
    svc.ENDORSED: "waiting for the headteacher",
    svc.APPROVED: "approved: the administrators are authorised",
    svc.DECLINED: "declined",
    svc.EXPIRED: "expired: the administrators' authorisation has ended",
    svc.ENDED: "ended by the headteacher",
}


@bp.route("/<int:record_id>")
@web.requires(Permission.VIEW_SOCIAL_MEDIA_SITES)
def show(record_id: int) -> Any:
    return _show(_load(record_id))


def _exists(record_id: int) -> int:
    """404 unless the record is this school's: read in a short transaction of its own, so that none
    is open while the password is checked."""
    with web.read_session() as reading:
        try:
            return svc.get(reading, web.site_scope(), record_id).id
        except ServiceError:
            abort(404)


def _signed(record_id: int, values: dict[str, str], step: Callable[[Signature], Any], done: str) -> Any:
    """Sign with the password (and code), then run `step`; a refusal redraws the page."""
    try:
        step(sign(values.get("signer_name", ""), request.form.get("password", ""), request.form.get("code", "")))
    except ReauthFailed as err:
        if err.signed_out:
            flash(err.message)
            return redirect(url_for("auth.login"))
        return _show(_load(record_id), errors={"password": err.message}, message=err.message, values=values,
                     status=429 if "Try again after" in err.message else 400)
    except ServiceError as err:
        web.db().rollback()
        return _show(_load(record_id), errors=web.field_errors(err), message=err.message, values=values,
                     status=web.error_status(err))
    web.db().commit()
    flash(f"{svc.reference_for(record_id)} {done}")
    return redirect(url_for("social.show", record_id=record_id))


@bp.route("/<int:record_id>/endorse", methods=["POST"])
@web.requires(Permission.ENDORSE_SOCIAL_MEDIA_SITE)
def endorse(record_id: int) -> Any:
    record_id = _exists(record_id)
    values = {"signer_name": request.form.get("signer_name", "")}

    def step(signature: Signature) -> None:
        svc.endorse(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), record_id=record_id,
                    signature=signature)

    return _signed(record_id, values, step, "is endorsed; it goes to the headteacher.")


@bp.route("/<int:record_id>/decide", methods=["POST"])
@web.requires(Permission.APPROVE_SOCIAL_MEDIA_SITE)
def decide(record_id: int) -> Any:
    record_id = _exists(record_id)
    form = request.form
    choice = form.get("decision", "")
    values = {k: form.get(k, "") for k in ("signer_name", "reasons", "expires", "review_date")}
    if choice not in ("approve", "decline"):
        return _show(_load(record_id), message="Choose Approve or Decline.", values=values, status=400)
    try:
        expires = parse_local(values["expires"], field="expires", end_of_day=True) if values["expires"] else None
        review = parse_local(values["review_date"], field="review_date").date() if values["review_date"] else None
        if choice == "approve" and (expires is None or review is None):
            raise InvalidInput("Give the expiry and the review date.",
                               field="expires" if expires is None else "review_date")
    except ServiceError as err:  # before the signature: a mistake in the form uses up no code
        return _show(_load(record_id), errors=web.field_errors(err), message=err.message, values=values, status=400)

    def step(signature: Signature) -> None:
        svc.decide(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), record_id=record_id,
                   approval=svc.Approval(approve=choice == "approve", signature=signature, reasons=values["reasons"],
                                         expires=expires, review_date=review))

    return _signed(record_id, values, step, "is approved." if choice == "approve" else "is declined.")


@bp.route("/<int:record_id>/end", methods=["POST"])
@web.requires(Permission.APPROVE_SOCIAL_MEDIA_SITE)
def end(record_id: int) -> Any:
    record = _load(record_id)
    try:
        svc.end(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), record_id=record.id,
                reason=request.form.get("reason", ""))
    except ServiceError as err:
        web.db().rollback()
        return _show(_load(record_id), errors=web.field_errors(err), message=err.message,
                     status=web.error_status(err))
    web.db().commit()
    flash(f"{svc.reference_for(record.id)} has ended; its administrators are back to their own roles.")
    return redirect(url_for("social.show", record_id=record.id))
