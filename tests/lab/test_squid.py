"""The Squid reference the benchmarks run in the lab: listening where asked, bumping with the
lab's CA, owned by the user Squid drops to."""

from __future__ import annotations

import pwd
from pathlib import Path
from types import SimpleNamespace

from schoolgate.lab.squid import SQUID_HTTP_PORT, SQUID_TLS_PORT, write_squid_config


def test_the_squid_reference_listens_where_asked_and_bumps_with_the_lab_ca(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "ca").mkdir(parents=True)
    (state / "ca" / "mitmproxy-ca.pem").write_text("the lab CA\n")
    folder = tmp_path / "squid"
    folder.mkdir()
    config = write_squid_config(folder, SimpleNamespace(state_dir=state), "10.41.0.1")
    lines = config.read_text().splitlines()
    assert f"http_port 10.41.0.1:{SQUID_HTTP_PORT}" in lines
    (https,) = [line for line in lines if line.startswith("https_port ")]
    assert https.startswith(f"https_port 10.41.0.1:{SQUID_TLS_PORT} intercept ssl-bump tls-cert={folder / 'bump.pem'}")
    assert (folder / "bump.pem").read_text() == "the lab CA\n"
    proxy_user = pwd.getpwnam("proxy").pw_uid
    assert (folder / "bump.pem").stat().st_uid == proxy_user and folder.stat().st_uid == proxy_user
    assert "ssl_bump terminate pupils social" in lines and "ssl_bump splice all" in lines
