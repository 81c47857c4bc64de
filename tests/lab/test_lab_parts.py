"""The lab's pure parts: names, addresses, the internet's zone and certificates (no root)."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from schoolgate.lab.internet import SITES, LabZoneResolver, address_for_name, site_for_name
from schoolgate.lab.pki import CA_NAME, LabCA, issuer_common_name
from schoolgate.lab.topology import DEVICES, ROUTED_DEVICES, TOPOLOGIES, LabNames, private_prefix, topology


def test_names_are_prefixed_and_short_enough() -> None:
    names = LabNames("sgt")
    assert names.gateway == "sgt-gw" and names.internet == "sgt-net"
    assert all(n.startswith("sgt-") and len(n) <= 15 for n in names.all())
    assert len(names.all(topology("gateway"))) == len(set(names.all())) - 2 - len(ROUTED_DEVICES) == len(DEVICES) + 2
    # A teardown removes every name any topology may have made.
    assert {n for t in TOPOLOGIES for n in names.all(topology(t))} == set(names.all())


@pytest.mark.parametrize(
    ("name", "appliance", "dns", "gateway", "namespaces"),
    [
        ("gateway", "10.41.0.1", "10.41.0.1", "10.41.0.1", len(DEVICES) + 2),
        ("bridge", "10.41.0.2", "10.41.0.1", "10.41.0.1", len(DEVICES) + 4),  # router, switch
        ("dns-only", "10.41.0.2", "10.41.0.2", "10.41.0.1", len(DEVICES) + 5),  # and the routed phone
    ],
)
def test_each_mode_has_its_topology(name: str, appliance: str, dns: str, gateway: str, namespaces: int) -> None:
    wiring = topology(name)
    assert (wiring.appliance_ip, wiring.device_dns, wiring.device_gateway) == (appliance, dns, gateway)
    assert len(LabNames("sgt").all(wiring)) == namespaces
    assert all(d.routed for d in wiring.devices if d.key == "phone")
    with pytest.raises(ValueError, match="no lab topology"):
        topology("router")


@pytest.mark.parametrize("prefix", ["", "SG", "1sg", "sg-x", "toolong7", "sg x"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        LabNames(prefix)


@pytest.mark.parametrize("stem", ["sgt", "sga", "sgtc"])
def test_private_prefixes_are_valid_and_differ_between_runs_and_labs(stem: str) -> None:
    made = {private_prefix(stem, serial, pid) for pid in range(4000, 4040) for serial in range(3)}
    assert len(made) == 120
    assert all(LabNames(prefix).prefix.startswith(stem) for prefix in made)


def test_devices_have_distinct_addresses_and_macs() -> None:
    assert len({d.ip for d in DEVICES}) == len({d.mac for d in DEVICES}) == len(DEVICES)


@pytest.mark.parametrize(
    ("name", "label"),
    [("facebook.com", "facebook"), ("WWW.Facebook.com.", "facebook"), ("static.x.com", "x"),
     ("notfacebook.com", None), ("library.example.org", "library")],
)
def test_site_lookup_is_by_label_suffix(name: str, label: str | None) -> None:
    site = site_for_name(name)
    assert (site.label if site else None) == label


def test_other_names_get_stable_distinct_addresses_outside_the_sites() -> None:
    assert address_for_name("www.example.com") == address_for_name("WWW.example.com.")
    assert address_for_name("www.example.com").startswith("198.18.")
    site_ips = {s.ip for s in SITES}
    names = ["www.example.com", "twimg.com", "fbcdn.net", "cdninstagram.com", "t.co"]
    addresses = {address_for_name(n) for n in names}
    assert len(addresses) == len(names) and not addresses & site_ips


@pytest.mark.parametrize(
    ("name", "qtype", "expected"),
    [("www.facebook.com", "A", "203.0.113.10"), ("anything.example", "A", None),
     ("www.facebook.com", "AAAA", "NODATA"), ("x.invalid", "A", "NXDOMAIN")],
)
def test_the_internets_zone(name: str, qtype: str, expected: str | None) -> None:
    reply = LabZoneResolver().resolve(DNSRecord.question(name, qtype), None)
    assert reply.header.aa == 1
    if expected == "NXDOMAIN":
        assert reply.header.rcode == RCODE.NXDOMAIN
    elif expected == "NODATA":
        assert reply.header.rcode == RCODE.NOERROR and not reply.rr
    else:
        (answer,) = reply.rr
        assert answer.rtype == QTYPE.A
        assert str(answer.rdata) == (expected or address_for_name(name))


def test_site_certificates_chain_to_the_lab_ca(tmp_path: Path) -> None:
    ca = LabCA(tmp_path)
    issued = ca.issue("facebook", ("facebook.com", "www.facebook.com"))
    assert issuer_common_name(issued.cert_path.read_bytes()) == CA_NAME
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(issued.cert_path, issued.key_path)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname="www.facebook.com")
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # drive the handshake over memory
        for side in (tls_client, tls_server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert tls_client.version() is not None  # verified against the lab CA, name matched
    ca.ensure()  # idempotent: the root is not replaced
    assert issuer_common_name(issued.cert_path.read_bytes()) == CA_NAME
