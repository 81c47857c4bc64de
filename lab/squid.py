"""Squid doing the proxy's job in the lab, as the reference the benchmarks measure schoolgate
against: peek at the ClientHello, then terminate or splice by server name and network, as the
example policy does for pupils and social media (blocked) and for everyone else (allowed)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from schoolgate.lab.internet import RESOLVER_IP

SQUID_HTTP_PORT = 3128
SQUID_TLS_PORT = 3129


def write_squid_config(folder: Path, lab: Any, address: str) -> Path:
    """squid.conf in `folder` (owned by Squid's `proxy` user), listening on `address`, bumping
    with the lab's CA so it can terminate what the policy blocks."""
    shutil.copy(lab.state_dir / "ca" / "mitmproxy-ca.pem", folder / "bump.pem")
    shutil.chown(folder, "proxy", "proxy")
    shutil.chown(folder / "bump.pem", "proxy", "proxy")
    config = folder / "squid.conf"
    bump = f"intercept ssl-bump tls-cert={folder / 'bump.pem'} generate-host-certificates=off"
    config.write_text(f"""
http_port {address}:{SQUID_HTTP_PORT}
https_port {address}:{SQUID_TLS_PORT} {bump}
acl pupils src 10.41.20.0/22
acl social ssl::server_name .facebook.com .instagram.com .x.com .twitter.com
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump terminate pupils social
ssl_bump splice all
http_access allow all
on_unsupported_protocol tunnel all
visible_hostname schoolgate-lab-gateway
dns_nameservers {RESOLVER_IP}
cache deny all
access_log none
cache_log {folder / 'cache.log'}
pid_filename {folder / 'squid.pid'}
coredump_dir {folder}
shutdown_lifetime 1 seconds
workers 1
""")
    return config
