"""`schoolgate lists import|update|status` on an appliance configuration, with the audit log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.cli import main
from schoolgate.services.common import read_mark
from schoolgate.services.list_changes import LISTS_CHANGED
from schoolgate.store.models import AuditEntry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def appliance(tmp_path: Path, db_path: Path) -> Path:
    """schoolgate.toml beside a copy of the example policy (and its local lists)."""
    shutil.copy(REPO / "deploy" / "policy.example.toml", tmp_path / "policy.toml")
    shutil.copytree(REPO / "deploy" / "lists", tmp_path / "lists")
    config = tmp_path / "schoolgate.toml"
    config.write_text(
        f'policy = "policy.toml"\ndata_dir = "data"\n[site]\nid = "kingswood"\nname = "Kingswood"\n'
        f'[database]\nurl = "sqlite:///{db_path}"\n',
        encoding="utf-8",
    )
    return config


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_before_anything_is_installed(capsys: pytest.CaptureFixture[str], appliance: Path) -> None:
    code, out, _ = run(capsys, "lists", "status", "--config", str(appliance))
    assert code == 0
    assert "ut1: no version installed yet (https://dsi.ut-capitole.fr/blacklists/download/blacklists.tar.gz)" in out
    assert "circumvention: local file lists/circumvention.txt" in out
    code, out, _ = run(capsys, "lists", "status", "--config", str(appliance), "--json")
    statuses = {s["id"]: s for s in json.loads(out)}
    assert statuses["ut1"]["state"] == "missing" and statuses["circumvention"]["state"] == "ok"


def test_import_status_and_the_audit_log(
    capsys: pytest.CaptureFixture[str], appliance: Path, ut1_tarball: Path, sessions: sessionmaker[Session]
) -> None:
    code, out, err = run(capsys, "lists", "import", "--config", str(appliance), "--id", "ut1", str(ut1_tarball))
    assert code == 0, err
    assert out.startswith("ut1: installed: installed ut1-")
    code, out, _ = run(capsys, "lists", "status", "--config", str(appliance))
    assert "ut1: ut1-" in out and "confirmed current 0.0 days ago" in out
    assert "URL prefixes: enforced only where the proxy sees the path" in out
    assert "not used (not mapped in the policy): child, sect, sexual_education" in out
    assert (appliance.parent / "data" / "lists" / "manifest.json").is_file()
    with sessions() as session:
        entries = session.scalars(select(AuditEntry).where(AuditEntry.action == "lists.version_installed")).all()
        assert [(e.actor, e.object_id) for e in entries] == [("system:lists", "ut1")]
        assert read_mark(session, "kingswood", LISTS_CHANGED) == 1


@pytest.mark.parametrize(("args", "fragment"), [
    (["--id", "nosuch", "x"], "the policy has no list 'nosuch'"),
    (["--id", "circumvention", "x"], "reads its file"),
])
def test_import_mistakes(capsys: pytest.CaptureFixture[str], appliance: Path, args: list[str], fragment: str) -> None:
    code, _, err = run(capsys, "lists", "import", "--config", str(appliance), *args)
    assert code == 2 and fragment in err


def test_a_refused_import_fails_and_says_why(capsys: pytest.CaptureFixture[str], appliance: Path,
                                             tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = run(capsys, "lists", "import", "--config", str(appliance), "--id", "ut1", str(empty))
    assert code == 1 and "ut1: failed: import of" in out and "no version is installed yet" in out


def test_update_of_an_unknown_list(capsys: pytest.CaptureFixture[str], appliance: Path) -> None:
    code, _, err = run(capsys, "lists", "update", "--config", str(appliance), "--id", "nosuch")
    assert code == 2 and "subscriptions: ut1" in err
