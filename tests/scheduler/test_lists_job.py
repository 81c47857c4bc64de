"""The daily list round: the real `schoolgate lists update` in a child process against a
loopback server, the hooks after a new version, and the technician's e-mail about a stale
list: sent once per stale spell, to a real SMTP server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.config import AppConfig, ListsConfig
from schoolgate.lists.state import ListState, state_dir_of
from schoolgate.scheduler import jobs
from schoolgate.scheduler.runner import SchedulerService
from schoolgate.services.mailer import SmtpMailer
from schoolgate.store.models import ConsoleUser, UserRole

NOW = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)
LIST = b"casino-one.example\ncasino-two.example\n"


class FixedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@pytest.fixture
def list_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(LIST)))
            self.send_header("ETag", '"one"')
            self.end_headers()
            self.wfile.write(LIST)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/gambling.txt"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def config(make_config: Callable[..., AppConfig], policy_file: Path, list_server: str, tmp_path: Path,
           mail_server: tuple[object, int], db_path: Path) -> AppConfig:
    text = policy_file.read_text(encoding="utf-8")
    policy_file.write_text(
        text + f'\n[lists.betting]\nurl = "{list_server}"\nformat = "plain"\ncategory = "gambling"\n',
        encoding="utf-8",
    )
    built = replace(make_config(mail_server[1]), lists=ListsConfig(stale_days=3, update_timeout_s=120))
    # The child process reads the configuration from its file.
    built.source.write_text(
        f'policy = "{policy_file}"\ndata_dir = "{tmp_path}"\n[site]\nid = "testschool"\nname = "Test Primary"\n'
        f'[database]\nurl = "sqlite:///{db_path}"\n',
        encoding="utf-8",
    )
    return built


@pytest.fixture
def technician(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.add(ConsoleUser(site="testschool", username="tech", display_name="Tech", email="tech@school.example",
                                password_hash="x", roles=[UserRole(role="technician")]))
        session.add(ConsoleUser(site="testschool", username="dsl", display_name="DSL", email="dsl@school.example",
                                password_hash="x", roles=[UserRole(role="dsl")]))
        session.commit()


def test_the_daily_round_installs_and_runs_the_hooks(config: AppConfig, factory: sessionmaker[Session]) -> None:
    service = SchedulerService(config, factory, FixedClock(NOW))
    seen: list[jobs.ListsOutcome] = []
    service.after_lists_installed.append(seen.append)
    outcome = service.run_lists()  # the real command, in a child process
    assert outcome.error is None
    assert [(r["list"], r["result"]) for r in outcome.results] == [("betting", "installed")]
    assert seen == [outcome]
    manifest = ListState(state_dir_of(config)).manifest()
    assert manifest["lists"]["betting"]["entries"] == {"gambling": 2}
    # The next round asks again: the server sends the same ETag, the list is not modified.
    again = service.run_lists()
    assert [r["result"] for r in again.results] == ["not_modified"] and len(seen) == 1


def _age(config: AppConfig, verified: datetime) -> None:
    state = ListState(state_dir_of(config))
    manifest = state.manifest()
    manifest["lists"]["betting"]["verified_at"] = verified.isoformat()
    state.write_manifest(manifest)


def test_a_stale_list_is_mailed_to_the_technicians_once_per_spell(
    config: AppConfig, factory: sessionmaker[Session], mail_server: tuple[object, int], technician: None
) -> None:
    inbox = mail_server[0]
    mailer = SmtpMailer(config.mail)
    jobs.lists_job(config, factory, NOW, mailer=mailer)  # installs (real update, child process)

    def no_update(cfg: AppConfig, timeout: float) -> list[dict[str, object]]:
        return []  # the download keeps failing: nothing confirms the list current

    later = NOW + timedelta(days=4)
    _age(config, NOW)
    first = jobs.lists_job(config, factory, later, mailer=mailer, update=no_update)
    assert (first.stale, first.notified) == (["betting"], ["betting"])
    (recipients, message), = inbox.received  # type: ignore[attr-defined]
    assert recipients == ["tech@school.example"]  # the technicians, not the DSL
    assert "content lists out of date" in message["Subject"]
    assert "betting" in message.get_content() and "schoolgate lists update" in message.get_content()
    second = jobs.lists_job(config, factory, later + timedelta(days=1), mailer=mailer, update=no_update)
    assert (second.stale, second.notified) == (["betting"], [])  # once, not every run
    assert len(inbox.received) == 1  # type: ignore[attr-defined]
    # It recovers, then goes stale again: a new spell, a new e-mail.
    _age(config, later)
    third = jobs.lists_job(config, factory, later + timedelta(days=4), mailer=mailer, update=no_update)
    assert third.notified == ["betting"] and len(inbox.received) == 2  # type: ignore[attr-defined]


def test_a_failing_update_command_still_checks_staleness(config: AppConfig, factory: sessionmaker[Session]) -> None:
    def broken(cfg: AppConfig, timeout: float) -> list[dict[str, object]]:
        raise RuntimeError("the list update took longer than 120 s")

    outcome = jobs.lists_job(config, factory, NOW, update=broken)
    assert outcome.error is not None and "longer than" in outcome.error
    assert outcome.stale == []  # never installed: missing, which doctor and the dashboard report
