"""The device and people registers: lists with search, one-at-a-time edits, CSV import and export."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from schoolgate.console import web
from schoolgate.console.csvout import csv_response, wants_csv
from schoolgate.services import register as svc
from schoolgate.services.errors import InvalidInput, NotFound, ServiceError
from schoolgate.services.permissions import Permission

bp = Blueprint("registers", __name__)

DEVICE_FIELDS = ("device_id", "name", "mac", "ip", "kind", "role", "owner", "ownership", "notes")
PERSON_FIELDS = ("external_id", "name", "role", "year_group", "groups", "email")


def _device_form(form: Any) -> svc.DeviceForm:
    values = {k: form.get(k, "") for k in DEVICE_FIELDS}
    return svc.DeviceForm(
        device_id=values["device_id"], name=values["name"], mac=values["mac"] or None, ip=values["ip"] or None,
        kind=values["kind"], role=values["role"] or None, owner=values["owner"] or None,
        trusts_school_ca=form.get("trusts_school_ca") == "1", notes=values["notes"],
        ownership=values["ownership"] or None,
    )


def _person_form(form: Any) -> svc.PersonForm:
    values = {k: form.get(k, "") for k in PERSON_FIELDS}
    return svc.PersonForm(
        external_id=values["external_id"], name=values["name"], role=values["role"],
        year_group=svc.parse_year_group(values["year_group"]), groups=values["groups"],
        email=values["email"] or None, active=form.get("active") == "1",
    )


def _read_upload() -> str:
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise InvalidInput("Choose a CSV file to import.", field="file")
    data = upload.read(svc.MAX_IMPORT_BYTES + 1)
    if len(data) > svc.MAX_IMPORT_BYTES:
        raise InvalidInput(f"The file is larger than {svc.MAX_IMPORT_BYTES // (1024 * 1024)} MB.", field="file")
    for encoding in ("utf-8-sig", "cp1252"):  # a spreadsheet saved on Windows is often cp1252
        try:
            text: str = data.decode(encoding)
            return text
        except UnicodeDecodeError:
            continue
    raise InvalidInput("The file is not text (save it from the spreadsheet as CSV).", field="file")


# -- what tells the two registers apart ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    """One register's services and wording; the add, edit and authorise pages are shared."""

    name: str  # "device" / "person": the endpoints are registers.<name>_new, _edit, _authorise
    listing: str  # the endpoint of the register's list
    read_form: Callable[[Any], Any]
    values_of: Callable[[Any], dict[str, Any]]  # an entry as the form's values
    blank: dict[str, str]  # the values of an empty form
    get: Callable[..., Any]
    create: Callable[..., Any]
    update: Callable[..., Any]
    set_authorised: Callable[..., Any]
    added: Callable[[Any], str]
    saved: str

    @property
    def pk(self) -> str:
        return f"{self.name}_pk"

    def url(self, page: str, entry_pk: int) -> str:
        """The URL of one entry's page: "edit" or "authorise"."""
        values: dict[str, Any] = {self.pk: entry_pk}
        return url_for(f"registers.{self.name}_{page}", **values)


def _device_values(device: Any) -> dict[str, Any]:
    values = {
        k: getattr(device, k) or "" for k in ("device_id", "name", "mac", "ip", "kind", "role", "ownership", "notes")
    }
    values["owner"] = device.person.external_id if device.person else ""
    values["trusts_school_ca"] = "1" if device.trusts_school_ca else ""
    return values


def _person_values(person: Any) -> dict[str, Any]:
    values = {k: getattr(person, k) if getattr(person, k) is not None else "" for k in PERSON_FIELDS}
    values["active"] = "1" if person.active else ""
    return values


DEVICES = _Kind(
    name="device", listing="registers.devices", read_form=_device_form, values_of=_device_values, blank={},
    get=svc.get_device, create=svc.create_device, update=svc.update_device,
    set_authorised=svc.set_device_authorised, added=lambda device: f"Device {device.device_id} added.",
    saved="Device saved.",
)
PEOPLE = _Kind(
    name="person", listing="registers.people", read_form=_person_form, values_of=_person_values,
    blank={"active": "1", "role": "pupil"}, get=svc.get_person, create=svc.create_person,
    update=svc.update_person, set_authorised=svc.set_person_authorised, added=lambda person: f"{person.name} added.",
    saved="Saved.",
)


def _entry_page(kind: _Kind, entry: Any, values: dict[str, Any], errors: dict[str, str], message: str | None,
                *, status: int = 200) -> Any:
    return render_template(
        f"registers/{kind.name}_form.html", entry=entry, values=values, errors=errors, message=message,
        roles=svc.PERSON_ROLES,
        action=kind.url("edit", entry.id) if entry else url_for(f"registers.{kind.name}_new"),
        authorise_action=kind.url("authorise", entry.id) if entry else None,
    ), status


def _new(kind: _Kind) -> Any:
    if request.method == "GET":
        return _entry_page(kind, None, dict(kind.blank), {}, None)
    try:
        entry = kind.create(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(),
                            form=kind.read_form(request.form))
    except ServiceError as err:
        web.db().rollback()
        return _entry_page(kind, None, dict(request.form), web.field_errors(err), err.message,
                           status=web.error_status(err))
    web.db().commit()
    flash(kind.added(entry))
    return redirect(url_for(kind.listing))


def _edit(kind: _Kind, entry_pk: int) -> Any:
    try:
        entry = kind.get(web.db(), web.site_scope(), entry_pk)
    except ServiceError:
        abort(404)
    if request.method == "GET":
        return _entry_page(kind, entry, kind.values_of(entry), {}, None)
    try:
        kind.update(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), **{kind.pk: entry.id},
                    form=kind.read_form(request.form))
    except ServiceError as err:
        web.db().rollback()
        return _entry_page(kind, entry, dict(request.form), web.field_errors(err), err.message,
                           status=web.error_status(err))
    web.db().commit()
    flash(kind.saved)
    return redirect(url_for(kind.listing))


def _authorise(kind: _Kind, entry_pk: int) -> Any:
    grant = request.form.get("authorised") == "1"
    back = kind.url("edit", entry_pk)
    try:
        entry = kind.set_authorised(
            web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), **{kind.pk: entry_pk},
            authorised=grant, reason=request.form.get("reason", ""),
        )
    except NotFound:
        abort(404)
    except ServiceError as err:
        web.db().rollback()
        flash(err.message)
        return redirect(back)
    web.db().commit()
    flash(f"{entry.name} is {'now authorised' if grant else 'no longer authorised'}.")
    return redirect(back)


# -- devices -------------------------------------------------------------------------------------


@bp.route("/devices")
@web.requires(Permission.VIEW_REGISTERS)
def devices() -> Any:
    search = request.args.get("q", "")[:200]
    args = {"q": search} if search else {}
    if wants_csv():
        page = svc.list_devices(web.db(), web.site_scope(), search=search, limit=svc.MAX_IMPORT_ROWS * 5)
        return csv_response("devices.csv", [*svc.DEVICE_COLUMNS, "last_seen"], (
            [d.device_id, d.name, d.mac, d.ip, d.kind, d.role, d.person.external_id if d.person else "",
             d.ownership or "", "yes" if d.trusts_school_ca else "no", d.notes, d.last_seen] for d in page.items))
    page = svc.list_devices(web.db(), web.site_scope(), search=search, offset=web.int_arg("offset", 0))
    return render_template("registers/devices.html", page=page, search=search, args=args)


@bp.route("/devices/new", methods=["GET", "POST"])
@web.requires(Permission.EDIT_REGISTERS)
def device_new() -> Any:
    return _new(DEVICES)


@bp.route("/devices/<int:device_pk>", methods=["GET", "POST"])
@web.requires(Permission.VIEW_REGISTERS, POST=Permission.EDIT_REGISTERS)
def device_edit(device_pk: int) -> Any:
    return _edit(DEVICES, device_pk)


@bp.route("/devices/<int:device_pk>/authorise", methods=["POST"])
@web.requires(Permission.AUTHORISE_ACCESS)
def device_authorise(device_pk: int) -> Any:
    return _authorise(DEVICES, device_pk)


@bp.route("/devices/import", methods=["GET", "POST"])
@web.requires(Permission.EDIT_REGISTERS)
def device_import() -> Any:
    return _import("devices", svc.DEVICE_COLUMNS, svc.import_devices_csv)


# -- people --------------------------------------------------------------------------------------


@bp.route("/people")
@web.requires(Permission.VIEW_REGISTERS)
def people() -> Any:
    search = request.args.get("q", "")[:200]
    role = request.args.get("role", "")
    role = role if role in svc.PERSON_ROLES else ""
    args = {**({"q": search} if search else {}), **({"role": role} if role else {})}
    if wants_csv():
        page = svc.list_people(web.db(), web.site_scope(), search=search, role=role or None,
                               limit=svc.MAX_IMPORT_ROWS * 5)
        return csv_response("people.csv", svc.PEOPLE_COLUMNS, (
            [p.external_id, p.name, p.role, p.year_group, p.groups, p.email, "yes" if p.active else "no"]
            for p in page.items))
    page = svc.list_people(web.db(), web.site_scope(), search=search, role=role or None,
                           offset=web.int_arg("offset", 0))
    return render_template("registers/people.html", page=page, search=search, role=role, roles=svc.PERSON_ROLES,
                           args=args)


@bp.route("/people/new", methods=["GET", "POST"])
@web.requires(Permission.EDIT_REGISTERS)
def person_new() -> Any:
    return _new(PEOPLE)


@bp.route("/people/<int:person_pk>", methods=["GET", "POST"])
@web.requires(Permission.VIEW_REGISTERS, POST=Permission.EDIT_REGISTERS)
def person_edit(person_pk: int) -> Any:
    return _edit(PEOPLE, person_pk)


@bp.route("/people/<int:person_pk>/authorise", methods=["POST"])
@web.requires(Permission.AUTHORISE_ACCESS)
def person_authorise(person_pk: int) -> Any:
    return _authorise(PEOPLE, person_pk)


@bp.route("/people/import", methods=["GET", "POST"])
@web.requires(Permission.EDIT_REGISTERS)
def person_import() -> Any:
    return _import("people", svc.PEOPLE_COLUMNS, svc.import_people_csv)


def _import(kind: str, columns: tuple[str, ...], run: Any) -> Any:
    if request.method == "GET":
        return render_template("registers/import.html", kind=kind, columns=columns, report=None, message=None)
    try:
        text = _read_upload()
        report = run(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), text=text)
    except ServiceError as err:
        web.db().rollback()
        return render_template("registers/import.html", kind=kind, columns=columns, report=None,
                               message=err.message), web.error_status(err)
    web.db().commit()
    return render_template("registers/import.html", kind=kind, columns=columns, report=report, message=None)


# -- the school's directory: preview, then apply ---------------------------------------------------


@bp.route("/people/directory", methods=["GET", "POST"])
@web.requires(Permission.EDIT_REGISTERS)
def directory() -> Any:
    """Upload a directory export (Google Workspace, Entra ID / SDS, an MIS export): see what it
    would change first. The past imports below are the audit trail of the register's sources."""
    from schoolgate.services import directory as dirsvc

    message = None
    status = 200
    if request.method == "POST":
        upload = request.files.get("file")
        role = request.form.get("role", "")
        try:
            if upload is None or not upload.filename:
                raise InvalidInput("Choose the exported CSV file.", field="file")
            row = dirsvc.preview(
                web.db(), site=web.site_id(), now=web.now(), actor=web.actor(),
                data=upload.read(dirsvc.MAX_BYTES + 1), filename=upload.filename,
                role=role if role in ("pupil", "staff", "guest") else None,
                mark_leavers=request.form.get("mark_leavers") == "1",
            )
        except ServiceError as err:
            web.db().rollback()
            message, status = err.message, web.error_status(err)
        else:
            web.db().commit()
            return redirect(url_for("registers.directory_preview", import_id=row.id))
    imports = dirsvc.list_imports(web.db(), web.site_id())
    return render_template("registers/directory.html", imports=imports, message=message,
                           summaries={i.id: _summary(i) for i in imports}), status


def _summary(row: Any) -> dict[str, Any]:
    import json

    loaded: dict[str, Any] = json.loads(row.summary)
    return loaded


@bp.route("/people/directory/<int:import_id>")
@web.requires(Permission.EDIT_REGISTERS)
def directory_preview(import_id: int) -> Any:
    from schoolgate.services import directory as dirsvc

    try:
        row = dirsvc.get_import(web.db(), web.site_id(), import_id)
    except NotFound:
        abort(404)
    changes = dirsvc.changes_of(row)
    return render_template("registers/directory_preview.html", row=row, summary=_summary(row),
                           changes=changes[:1000], hidden=max(0, len(changes) - 1000))


@bp.route("/people/directory/<int:import_id>/apply", methods=["POST"])
@web.requires(Permission.EDIT_REGISTERS)
def directory_apply(import_id: int) -> Any:
    return _directory_decide(import_id, "apply")


@bp.route("/people/directory/<int:import_id>/discard", methods=["POST"])
@web.requires(Permission.EDIT_REGISTERS)
def directory_discard(import_id: int) -> Any:
    return _directory_decide(import_id, "discard")


def _directory_decide(import_id: int, action: str) -> Any:
    from schoolgate.services import directory as dirsvc

    try:
        if action == "apply":
            done = dirsvc.apply(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), import_id=import_id)
        else:
            dirsvc.discard(web.db(), site=web.site_id(), now=web.now(), actor=web.actor(), import_id=import_id)
    except NotFound:
        abort(404)
    except ServiceError as err:
        web.db().rollback()
        flash(err.message)
        return redirect(url_for("registers.directory_preview", import_id=import_id))
    web.db().commit()
    if action == "apply":
        flash(f"Applied: {done['add']} added, {done['update']} updated, {done['leave']} marked as left.")
    else:
        flash("Discarded: nothing was changed.")
    return redirect(url_for("registers.directory"))
