"""A teacher opens a site for their class until the end of the lesson; the headteacher, the DSL
and the technician see every unlock and can end one early (schoolgate.services.lesson_unlocks)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from schoolgate.console import web
from schoolgate.services import lesson_unlocks as svc
from schoolgate.services.errors import ServiceError
from schoolgate.services.permissions import Permission

bp = Blueprint("lessons", __name__)


def _settings() -> svc.UnlockSettings:
    return svc.UnlockSettings.from_config(web.state().config.teachers)


def _open_page(values: dict[str, str] | None = None, *, errors: dict[str, str] | None = None,
               message: str | None = None, status: int = 200) -> Any:
    user = web.current_user()
    assert user is not None
    now = web.now()
    policy = web.policy()
    try:
        ending: svc.LessonEnd | None = svc.lesson_end(policy, now)
        not_now = None
    except ServiceError as err:
        ending, not_now = None, err.message
    classes = svc.teacher_classes(web.db(), web.site_id(), user)
    settings = _settings()
    used = svc.unlocks_today(web.db(), web.site_id(), user, now=now, policy=policy)
    mine = svc.list_unlocks(web.db(), web.site_id(), user_id=user.id, limit=20)
    return render_template(
        "lessons/open.html", classes=classes, class_options=[(c, c) for c in classes], ending=ending,
        not_now=not_now, values=values or {}, errors=errors or {}, message=message,
        left=max(0, settings.per_day - used), per_day=settings.per_day, mine=mine.items, now=now, live=svc.is_live,
    ), status


@bp.route("/lesson", methods=["GET", "POST"])
@web.requires(Permission.OPEN_FOR_LESSON)
def open_site() -> Any:
    if request.method == "GET":
        return _open_page({"url": request.args.get("url", "")[:2000]})
    user = web.current_user()
    assert user is not None
    values = {k: request.form.get(k, "") for k in ("group", "url", "reason")}
    try:
        now = web.now()
        # As DNS and the proxy see it now: a site another exception already opens needs no unlock,
        # and a technician's block after a report is not a teacher's to lift.
        policy = web.policy_ref().with_overlay(web.db(), web.site_id(), now)
        unlock = svc.open_for_lesson(
            web.db(), site=web.site_id(), now=now, actor=web.actor(), user=user, policy=policy,
            settings=_settings(), group=values["group"], url=values["url"], reason=values["reason"],
        )
    except ServiceError as err:
        web.db().rollback()
        return _open_page(values, errors=web.field_errors(err), message=err.message, status=web.error_status(err))
    web.db().commit()
    from schoolgate.console.app import local_time

    flash(f"{unlock.host} is open for {unlock.group} until {local_time(unlock.ends)} ({unlock.ends_with}).")
    return redirect(url_for("lessons.open_site"))


def _end(unlock_id: int, back: str) -> Any:
    try:
        unlock = svc.end_early(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), unlock_id=unlock_id)
    except ServiceError as err:
        web.db().rollback()
        if web.error_status(err) == 404:
            abort(404)
        flash(err.message)
        return redirect(url_for(back))
    web.db().commit()
    flash(f"{unlock.host} is closed again for {unlock.group}.")
    return redirect(url_for(back))


@bp.route("/lesson/<int:unlock_id>/end", methods=["POST"])
@web.requires(Permission.OPEN_FOR_LESSON)
def end_own(unlock_id: int) -> Any:
    return _end(unlock_id, "lessons.open_site")


@bp.route("/lessons")
@web.requires(Permission.VIEW_LESSON_UNLOCKS)
def log() -> Any:
    page = svc.list_unlocks(web.db(), web.site_scope(), offset=web.int_arg("offset", 0))
    return render_template("lessons/log.html", page=page, now=web.now(), live=svc.is_live, args={})


@bp.route("/lessons/<int:unlock_id>/end", methods=["POST"])
@web.requires(Permission.END_LESSON_UNLOCK)
def end_any(unlock_id: int) -> Any:
    return _end(unlock_id, "lessons.log")
