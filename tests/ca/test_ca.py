"""The school CA: files and modes, what mitmproxy loads from it, exports, issued certificates."""

from __future__ import annotations

import os
import pwd
import ssl
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from schoolgate.ca import (
    CA_CERT,
    CA_KEY_AND_CERT,
    DHPARAM,
    CAError,
    check_ca,
    export_ca,
    init_ca,
    issue_server_cert,
    show_ca,
)

SCHOOLGATE = str(Path(sys.executable).parent / "schoolgate")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_the_mitmproxy_layout_with_safe_modes(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    info = init_ca(ca_dir, school_name="Kingswood Primary School")
    assert mode(ca_dir / CA_KEY_AND_CERT) == 0o600
    assert mode(ca_dir / CA_CERT) == 0o644
    assert (ca_dir / DHPARAM).exists()
    assert mode(ca_dir) & 0o007 == 0  # no access for others
    cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=3650) <= lifetime <= timedelta(days=3652)
    assert "Kingswood Primary School" in info.subject
    assert info.sha256_fingerprint == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert check_ca(ca_dir).sha256_fingerprint == info.sha256_fingerprint


def test_init_refuses_to_replace_an_installed_ca(tmp_path: Path) -> None:
    first = init_ca(tmp_path, school_name="A School")
    with pytest.raises(CAError, match="--force"):
        init_ca(tmp_path, school_name="A School")
    second = init_ca(tmp_path, school_name="A School", force=True)
    assert second.sha256_fingerprint != first.sha256_fingerprint


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_init_gives_the_key_to_the_proxy_user(tmp_path: Path) -> None:
    user = pwd.getpwnam("nobody")
    init_ca(tmp_path / "ca", school_name="A School", owner="nobody")
    assert (tmp_path / "ca" / CA_KEY_AND_CERT).stat().st_uid == user.pw_uid
    with pytest.raises(CAError, match="no such user"):
        init_ca(tmp_path / "other", school_name="A School", owner="no-such-user-here")


def test_mitmproxy_loads_the_school_ca_instead_of_making_its_own(tmp_path: Path) -> None:
    from mitmproxy.certs import CertStore

    info = init_ca(tmp_path, school_name="A School")
    before = sorted(p.name for p in tmp_path.iterdir())
    store = CertStore.from_store(tmp_path, "mitmproxy", 2048)
    assert store.default_ca.fingerprint().hex(":").upper() == info.sha256_fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    entry = store.get_cert("www.facebook.com", [])
    leaf = x509.load_pem_x509_certificate(entry.cert.to_pem())
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate((tmp_path / CA_CERT).read_bytes()))


def test_check_refuses_a_missing_or_broken_ca(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="schoolgate ca init"):
        check_ca(tmp_path)
    (tmp_path / CA_KEY_AND_CERT).write_text("not a key")
    with pytest.raises(CAError, match="PEM"):
        check_ca(tmp_path)


def test_export_writes_pem_and_der_that_parse(tmp_path: Path) -> None:
    info = init_ca(tmp_path / "ca", school_name="A School")
    pem, der = export_ca(tmp_path / "ca", tmp_path / "out")
    from_pem = x509.load_pem_x509_certificate(pem.read_bytes())
    from_der = x509.load_der_x509_certificate(der.read_bytes())
    assert from_pem == from_der
    assert from_pem.fingerprint(hashes.SHA256()).hex(":").upper() == info.sha256_fingerprint
    assert der.suffix == ".crt"
    assert b"PRIVATE" not in pem.read_bytes()


def test_issued_server_certificate_verifies_against_the_ca(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir, school_name="A School")
    cert_path, key_path = issue_server_cert(ca_dir, ["schoolgate.lan", "console.schoolgate.lan"], ["10.20.0.1"])
    assert mode(key_path) == 0o600
    leaf = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ca_cert = x509.load_pem_x509_certificate((ca_dir / CA_CERT).read_bytes())
    leaf.verify_directly_issued_by(ca_cert)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["schoolgate.lan", "console.schoolgate.lan"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.20.0.1"]
    assert leaf.not_valid_after_utc - datetime.now(UTC) < timedelta(days=398)
    # A real TLS handshake: a client trusting only the school CA accepts the server.
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert_path, key_path)
    client_ctx = ssl.create_default_context(cafile=str(ca_dir / CA_CERT))
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        client_ctx.wrap_socket(raw, server_hostname="console.schoolgate.lan") as tls,
    ):
        assert tls.recv(2) == b"ok"
    thread.join(5)
    listener.close()


@pytest.mark.parametrize(("hosts", "ips"), [([], []), (["bad host " * 40], []), (["ok.lan"], ["not-an-ip"])])
def test_issue_rejects_bad_names(tmp_path: Path, hosts: list[str], ips: list[str]) -> None:
    init_ca(tmp_path, school_name="A School")
    with pytest.raises(CAError):
        issue_server_cert(tmp_path, hosts, ips)


def test_cli_init_show_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from schoolgate.cli import main

    config = tmp_path / "schoolgate.toml"
    config.write_text('policy = "policy.toml"\ndata_dir = "data"\n[site]\nname = "Kingswood Primary"\n')

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["ca", *args, "--config", str(config)])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("init")[0] == 0
    assert (tmp_path / "data" / "ca" / CA_KEY_AND_CERT).exists()
    code, shown, _ = run("show")
    assert code == 0 and "Kingswood Primary" in shown
    assert show_ca(tmp_path / "data" / "ca").sha256_fingerprint in shown
    assert run("export", "--out", str(tmp_path / "out"))[0] == 0
    assert (tmp_path / "out" / "schoolgate-ca.crt").exists()
    code, _, err = run("init")
    assert code == 1 and "--force" in err
    code, issued, _ = run("issue", "--host", "schoolgate.lan", "--ip", "10.20.0.1")
    assert code == 0 and issued.split()[0].endswith("schoolgate.lan-cert.pem")


def test_cli_entry_point_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [SCHOOLGATE, "ca", "show", "--ca-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1 and "schoolgate ca init" in result.stderr
