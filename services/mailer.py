"""Sending mail over SMTP (smtplib), with STARTTLS and authentication as configured."""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Protocol

from schoolgate.config import MailConfig


class MailError(Exception):
    """The message could not be handed to the mail server."""


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None:
        """Hand the message over for delivery; raise MailError on failure."""


def build_message(
    *, sender: str, recipients: Sequence[str], subject: str, text: str, html: str | None = None
) -> EmailMessage:
    """A plain-text message with an optional HTML alternative."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject.replace("\r", " ").replace("\n", " ")
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "schoolgate.lan")
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


class SmtpMailer:
    """Delivers through the school's (or the trust's) SMTP server."""

    def __init__(self, config: MailConfig, *, timeout: float = 30.0) -> None:
        if not config.host:
            raise MailError("no mail server is configured ([mail] host in schoolgate.toml)")
        self.config = config
        self.timeout = timeout
        self._password: str | None = None
        if config.username:
            if not config.password_file:
                raise MailError("[mail] username is set but password_file is not")
            try:
                self._password = Path(config.password_file).read_text(encoding="utf-8").strip()
            except OSError as err:
                raise MailError(f"cannot read the mail password file: {err.strerror}") from err

    def send(self, message: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.config.host, self.config.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if self.config.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.config.username and self._password is not None:
                    if not self.config.starttls:
                        # smtplib would send AUTH PLAIN/LOGIN over the bare connection: the
                        # password readable by anyone on the way to the mail server.
                        raise MailError(
                            "[mail] username is set but starttls is not: the password would be sent "
                            "unencrypted, so nothing was sent (set starttls = true)"
                        )
                    smtp.login(self.config.username, self._password)
                refused = smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as err:
            raise MailError(f"sending to {self.config.host}:{self.config.port} failed: {err}") from err
        if refused:
            raise MailError(f"the mail server refused: {', '.join(sorted(refused))}")
