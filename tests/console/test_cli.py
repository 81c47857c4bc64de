"""`schoolgate users ...` and `schoolgate console` as a school's technician runs them."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from console_testkit import write_config

SCHOOLGATE = [sys.executable, "-m", "schoolgate"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SCHOOLGATE, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)


def test_users_add_list_and_reset(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    added = run("users", "add", "jpatel", "--role", "headteacher", "--role", "dsl", "--name", "Mrs J Patel",
                "--config", config)
    assert added.returncode == 0, added.stderr
    assert "one-time password: " in added.stdout
    assert "two-factor sign-in will be set up" in added.stdout

    from_stdin = run("users", "add", "tjones", "--role", "technician", "--password-stdin", "--config", config,
                     stdin="a long enough password\n")
    assert from_stdin.returncode == 0 and "one-time password" not in from_stdin.stdout

    listing = run("users", "list", "--config", config)
    lines = sorted(listing.stdout.splitlines())
    assert lines[0].startswith("jpatel\tdsl,headteacher\tactive\tno-totp\tMrs J Patel")
    assert lines[1].startswith("tjones\ttechnician\tactive")

    assert run("users", "add", "jpatel", "--role", "admin", "--config", config).returncode == 1  # taken
    bad_role = run("users", "add", "someone", "--role", "caretaker", "--config", config)
    assert bad_role.returncode == 1 and "unknown role 'caretaker'" in bad_role.stderr
    short = run("users", "add", "short", "--role", "admin", "--password-stdin", "--config", config, stdin="abc\n")
    assert short.returncode == 1 and "at least 12 characters" in short.stderr

    reset = run("users", "reset-password", "tjones", "--config", config)
    assert reset.returncode == 0 and "one-time password: " in reset.stdout
    assert run("users", "reset-password", "nobody", "--config", config).returncode == 1

    from schoolgate.config import load_config
    from schoolgate.store import audit
    from schoolgate.store.db import make_engine, session_factory

    loaded = load_config(config)
    with session_factory(make_engine(loaded.database_url))() as session:
        result = audit.verify(session, loaded.site.id)
        assert result.ok and result.checked == 3, result.describe()  # two creations and a reset


def test_console_refuses_to_start_without_tls_unless_asked(tmp_path: Path) -> None:
    config = write_config(tmp_path, plain_http=False)
    result = run("console", "--config", str(config))
    assert result.returncode == 1
    assert "no TLS certificate for the console" in result.stderr and "--plain-http" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_console_serves_tls_with_a_certificate_from_the_school_ca(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, plain_http=False, listen=f"127.0.0.1:{port}")
    created = run("ca", "init", "--config", str(config))
    assert created.returncode == 0, created.stderr
    issued = run("console", "--issue-cert", "--config", str(config))
    assert issued.returncode == 0, issued.stderr
    assert run("db", "upgrade", "--config", str(config)).returncode == 0

    ca_cert = tmp_path / "data" / "ca" / "mitmproxy-ca-cert.pem"
    context = ssl.create_default_context(cafile=str(ca_cert))
    log = tmp_path / "console.log"
    with log.open("w") as out:
        server = subprocess.Popen([*SCHOOLGATE, "console", "--config", str(config)], stdout=out,
                                  stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"https://127.0.0.1:{port}/login", context=context,
                                                timeout=2) as response:
                        headers = response.headers
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(log.read_text()) from None
                    time.sleep(0.2)
            assert headers["Strict-Transport-Security"].startswith("max-age=")
            assert "Secure" in headers["Set-Cookie"]
            # One process serves, gunicorn's worker without its arbiter: no child process.
            assert _children(server.pid) == [], log.read_text()
            # TLS 1.2 offers forward-secret AEAD suites only: a client that speaks nothing but
            # CBC (or nothing newer than TLS 1.1) is refused, one offering AES-GCM gets in.
            for version, ciphers, accepted in [
                # (each offered with RSA and ECDSA keys alike, whichever the certificate has)
                (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
                                         "ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:"
                                         "AES128-SHA256:AES256-SHA", False),
                (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256", True),
                (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305", True),
                (ssl.TLSVersion.TLSv1_1, None, False),
                (ssl.TLSVersion.TLSv1_3, None, True),
            ]:
                probe = ssl.create_default_context(cafile=str(ca_cert))
                if version < ssl.TLSVersion.TLSv1_2:
                    probe.set_ciphers("ALL:@SECLEVEL=0")  # let this client speak TLS 1.1 at all
                probe.minimum_version = probe.maximum_version = version
                if ciphers:
                    probe.set_ciphers(ciphers)
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                            probe.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                        assert accepted, (version, ciphers, tls.cipher())
                except ssl.SSLError:
                    assert not accepted, (version, ciphers)
            # Plain HTTP to the TLS port gets nowhere.
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5).read()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=15)
    assert server.returncode == 0, log.read_text()  # SIGTERM: it finished its requests and stopped


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_a_teachers_account_is_linked_to_their_entry_in_the_people_register(tmp_path: Path) -> None:
    config = str(write_config(tmp_path))
    added = run("users", "add", "mgreen", "--role", "teacher", "--name", "Mr Green", "--person", "T1",
                "--config", config)
    assert added.returncode == 0, added.stderr
    assert "two-factor" not in added.stdout  # a teacher signs in with a password

    from sqlalchemy import select

    from schoolgate.config import load_config
    from schoolgate.store.db import make_engine, session_factory
    from schoolgate.store.models import ConsoleUser

    loaded = load_config(config)
    with session_factory(make_engine(loaded.database_url))() as session:
        user = session.scalars(select(ConsoleUser).where(ConsoleUser.username == "mgreen")).one()
        assert (user.person_external_id, user.role_names) == ("T1", frozenset({"teacher"}))
