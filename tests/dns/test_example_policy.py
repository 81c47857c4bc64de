"""The daemon with the policy schoolgate ships as its example (deploy/policy.example.toml).

The example's networks are the school's LAN ranges; the test adds the loopback addresses as
a pupil network (127.0.0.0/8) and a staff network (::1) so that loopback clients have roles.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import dns.rdatatype
import pytest
from conftest import Daemon, addresses, ask, ede, init_database

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
LOOPBACK_NETWORKS = """

[[networks]]
name = "test: loopback pupils"
cidrs = ["127.0.0.0/8"]
role = "pupil"

[[networks]]
name = "test: loopback staff"
cidrs = ["::1/128"]
role = "staff"
"""


@pytest.fixture(scope="module")
def example_daemon(tmp_path_factory, authority):
    if not (DEPLOY / "policy.example.toml").exists():
        pytest.skip("deploy/policy.example.toml is not there")
    workdir = tmp_path_factory.mktemp("dns-example")
    (workdir / "policy.toml").write_text((DEPLOY / "policy.example.toml").read_text() + LOOPBACK_NETWORKS)
    shutil.copytree(DEPLOY / "lists", workdir / "lists")
    (workdir / "var").mkdir()
    d = Daemon(workdir, [authority.address])
    init_database(d.db_url)
    d.start()
    yield d
    assert d.stop() == 0


def test_social_media_by_role_and_time(example_daemon: Daemon) -> None:
    d = example_daemon
    d.set_time(datetime(2026, 11, 18, 12, 30, tzinfo=UTC))  # school hours: lunch is inside them (§4, §6)
    pupil = ask(d.port, "www.facebook.com", use_edns=0)
    assert addresses(pupil) == ["10.41.0.1"] and ede(pupil) == [(17, "pupils-no-social-media")]
    staff = ask(d.port, "www.facebook.com", server="::1", use_edns=0)
    assert addresses(staff) == ["10.41.0.1"] and ede(staff) == [(17, "staff-social-media-school-hours")]
    d.set_time(datetime(2026, 11, 18, 8, 43, tzinfo=UTC))  # before school: staff may, for two more minutes
    early = ask(d.port, "www.facebook.com", server="::1")
    assert addresses(early) == ["192.0.2.21"]
    assert early.answer[0].ttl <= 120
    assert addresses(ask(d.port, "www.facebook.com")) == ["10.41.0.1"]  # pupils still may not


def test_circumvention_blocked_for_everyone_and_safe_search_for_everyone(example_daemon: Daemon) -> None:
    d = example_daemon
    d.set_time(datetime(2026, 11, 18, 19, 0, tzinfo=UTC))
    for server in ("127.0.0.1", "::1"):
        doh = ask(d.port, "dns.google", server=server, use_edns=0)
        assert addresses(doh) == ["10.41.0.1"] and ede(doh) == [(15, "no-circumvention")]
        search = ask(d.port, "www.google.com", server=server)
        cname = [r for r in search.answer if r.rdtype == dns.rdatatype.CNAME]
        assert str(cname[0][0].target) == "forcesafesearch.google.com."
        assert addresses(search) == ["216.239.38.120"]
