"""SmtpMailer against a real aiosmtpd server on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from schoolgate.config import MailConfig
from schoolgate.services.mailer import MailError, SmtpMailer, build_message


class _Inbox:
    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(envelope.content)
        return "250 OK"


def _accept_anyone(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    return AuthResult(success=True)


@pytest.fixture
def plain_auth_server() -> Iterator[tuple[_Inbox, int]]:
    """A server that (badly) offers AUTH without TLS: the client must not take it up."""
    inbox = _Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    controller = Controller(
        inbox, hostname="127.0.0.1", port=port, authenticator=_accept_anyone, auth_require_tls=False
    )
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _message() -> Any:
    return build_message(
        sender="schoolgate@school.example", recipients=["dsl@school.example"], subject="test", text="hello\n"
    )


@pytest.mark.parametrize(
    ("username", "delivered"),
    [
        ("", True),  # no account: nothing secret crosses the wire
        ("schoolgate", False),  # an account without STARTTLS: refused before AUTH
    ],
)
def test_the_password_never_crosses_the_network_unencrypted(
    plain_auth_server: tuple[_Inbox, int], tmp_path: Path, username: str, delivered: bool
) -> None:
    inbox, port = plain_auth_server
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret-mail-password\n", encoding="utf-8")
    mailer = SmtpMailer(
        MailConfig(host="127.0.0.1", port=port, starttls=False, username=username, password_file=str(secret)),
        timeout=10,
    )
    if delivered:
        mailer.send(_message())
        assert len(inbox.received) == 1
    else:
        with pytest.raises(MailError, match="starttls"):
            mailer.send(_message())
        assert inbox.received == []
