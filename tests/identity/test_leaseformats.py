"""Lease files of each DHCP server, with the quirks real exports have, and bad input."""

from __future__ import annotations

import codecs
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schoolgate.identity.exports import ExportError, decode_export
from schoolgate.identity.leaseformats import LeaseFormatError, detect_format, parse_lease_file
from schoolgate.identity.leaseformats.windows import client_mac, decide_day_first

LONDON = ZoneInfo("Europe/London")

WINDOWS_HEADER = (
    '"IPAddress","ScopeId","AddressState","ClientId","ClientType","Description","DnsRegistration","DnsRR",'
    '"HostName","LeaseExpiryTime","NapCapable","NapStatus","PolicyName","ProbationEnds","ServerIP",'
    '"PSComputerName"'
)


def windows_row(ip: str, state: str, client_id: str, host: str, expiry: str, description: str = "") -> str:
    return (
        f'"{ip}","10.41.0.0","{state}","{client_id}","Dhcp","{description}","NotApplicable","A","{host}",'
        f'"{expiry}","False","FullAccess","","","10.41.0.5","DC01"'
    )


# As Windows PowerShell 5.1 writes it on a UK server: the #TYPE line, every field quoted.
WINDOWS_UK = "\r\n".join([
    "#TYPE Microsoft.Management.Infrastructure.CimInstance#root/Microsoft/Windows/DHCP/DhcpServerv4Lease",
    WINDOWS_HEADER,
    windows_row("10.41.20.11", "Active", "02-41-00-00-20-11", "ipad-11.kingswood.local", "25/11/2026 14:03:22"),
    windows_row("10.41.20.12", "Active", "01-02-41-00-00-20-12", "laptop-12", "01/12/2026 09:00:00",
                description="Year 6, laptop trolley"),
    windows_row("10.41.20.13", "ActiveReservation", "024100002013", "hall-pc", ""),
    windows_row("10.41.20.14", "Declined", "02-41-00-00-20-14", "", "25/11/2026 10:00:00"),
    windows_row("10.41.20.15", "Expired", "02-41-00-00-20-15", "gone", "20/11/2026 10:00:00"),
    "",
])


def parse_windows(text: str, **kwargs: object) -> object:
    return parse_lease_file(text, "windows", tz=LONDON, **kwargs)  # type: ignore[arg-type]


def test_windows_export_as_a_uk_server_writes_it() -> None:
    parsed = parse_lease_file(WINDOWS_UK, tz=LONDON)  # detected from the #TYPE line
    assert parsed.format == "windows" and parsed.problems == [] and parsed.skipped == 2
    assert [(lease.line, lease.ip, lease.mac, lease.hostname, lease.starts, lease.ends) for lease in parsed.leases] == [
        (3, "10.41.20.11", "02:41:00:00:20:11", "ipad-11.kingswood.local", None,
         datetime(2026, 11, 25, 14, 3, 22, tzinfo=LONDON)),
        (4, "10.41.20.12", "02:41:00:00:20:12", "laptop-12", None, datetime(2026, 12, 1, 9, 0, tzinfo=LONDON)),
        (5, "10.41.20.13", "02:41:00:00:20:13", "hall-pc", None, None),  # a reservation never ends
    ]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "cp1252", "utf-8"])
def test_windows_export_in_every_encoding_windows_writes(encoding: str) -> None:
    text = WINDOWS_UK.replace("hall-pc", "hall-pc").replace("Year 6", "Year 6 £ café")
    data = text.encode(encoding)
    if encoding == "utf-16-le":
        assert not data.startswith(codecs.BOM_UTF16_LE)  # no BOM: found by its NUL bytes
    decoded, used = decode_export(data)
    parsed = parse_lease_file(decoded, tz=LONDON)
    assert [lease.mac for lease in parsed.leases] == ["02:41:00:00:20:11", "02:41:00:00:20:12", "02:41:00:00:20:13"]
    assert used


@pytest.mark.parametrize(
    ("dates", "default", "day_first"),
    [
        (["25/11/2026 14:03:22", "01/12/2026 09:00:00"], None, True),  # 25 can only be a day
        (["11/25/2026 2:03:22 PM", "12/01/2026 9:00:00 AM"], None, False),  # US order
        (["01/12/2026 09:00:00"], None, True),  # ambiguous: UK servers write day first
        (["01/12/2026 09:00:00"], False, False),  # unless the technician says otherwise
    ],
)
def test_windows_date_order_is_decided_from_the_whole_file(
    dates: list[str], default: bool | None, day_first: bool
) -> None:
    assert decide_day_first(dates, default) is day_first


def test_us_dates_with_am_and_pm() -> None:
    text = "\n".join([WINDOWS_HEADER,
                      windows_row("10.0.0.1", "Active", "02-00-00-00-00-01", "a", "11/25/2026 2:03:22 PM"),
                      windows_row("10.0.0.2", "Active", "02-00-00-00-00-02", "b", "11/26/2026 12:10:00 AM")])
    parsed = parse_windows(text)
    assert [lease.ends for lease in parsed.leases] == [  # type: ignore[attr-defined]
        datetime(2026, 11, 25, 14, 3, 22, tzinfo=LONDON), datetime(2026, 11, 26, 0, 10, tzinfo=LONDON)]


@pytest.mark.parametrize(
    ("client_id", "mac"),
    [
        ("02-41-00-00-20-11", "02:41:00:00:20:11"),
        ("01-02-41-00-00-20-11", "02:41:00:00:20:11"),  # with the Ethernet hardware type
        ("024100002011", "02:41:00:00:20:11"),
        ("02:41:00:00:20:11", "02:41:00:00:20:11"),
        ("00-01-00-01-2c-5e-7a-1b-02-41", None),  # a DUID, not a MAC
        ("ff-02-41-00-00-20-11", None),
    ],
)
def test_both_client_id_forms(client_id: str, mac: str | None) -> None:
    assert client_mac(client_id) == mac


def test_windows_bad_rows_are_problems_and_the_rest_is_read() -> None:
    text = "\n".join([
        WINDOWS_HEADER,
        windows_row("10.0.0.300", "Active", "02-00-00-00-00-01", "a", "25/11/2026 10:00:00"),
        windows_row("10.0.0.2", "Active", "zz-00-00-00-00-02", "b", "25/11/2026 10:00:00"),
        windows_row("10.0.0.3", "Active", "02-00-00-00-00-03", "<script>", "25/11/2026 10:00:00"),  # kept
        windows_row("10.0.0.4", "Active", "02-00-00-00-00-04", "d", "31/02/2026 10:00:00"),
        windows_row("10.0.0.5", "Sleeping", "02-00-00-00-00-05", "e", "25/11/2026 10:00:00"),
        windows_row("10.0.0.6", "Active", "02-00-00-00-00-06", "f", "25/11/2026 10:00:00"),
    ])
    parsed = parse_windows(text)
    assert [(lease.ip, lease.hostname) for lease in parsed.leases] == [  # type: ignore[attr-defined]
        ("10.0.0.3", None), ("10.0.0.6", "f")]
    reasons = [(p.line, p.reason) for p in parsed.problems]  # type: ignore[attr-defined]
    assert [line for line, _ in reasons] == [2, 3, 4, 5, 6]
    assert "not an IP address" in reasons[0][1] and "not an Ethernet MAC" in reasons[1][1]
    assert "not a valid host name" in reasons[2][1] and "not a real date" in reasons[3][1]
    assert "unknown AddressState" in reasons[4][1]


def test_a_csv_that_is_not_a_lease_export_is_refused_as_a_whole() -> None:
    with pytest.raises(LeaseFormatError, match="not a Get-DhcpServerv4Lease export"):
        parse_windows('"Name","Email"\n"Ada","ada@example.org"\n')
    with pytest.raises(LeaseFormatError, match="not a lease file schoolgate knows"):
        parse_lease_file("name,email\nada,ada@example.org\n", tz=LONDON)


ISC = """\
# The format of this file is documented in the dhcpd.leases(5) manual page.
# This lease file was written by isc-dhcp-4.4.3
authoring-byte-order little-endian;
server-duid "\\000\\001\\000\\001,^z\\033\\002A\\000\\000\\000\\005";

lease 10.41.20.11 {
  starts 1 2026/11/23 08:00:00;
  ends 1 2026/11/23 20:00:00;
  cltt 1 2026/11/23 08:00:00;
  binding state active;
  next binding state free;
  rewind binding state free;
  hardware ethernet 02:41:00:00:20:11;
  uid "\\001\\002A\\000\\000 \\021";
  set vendor-class-identifier = "android-dhcp-14";
  client-hostname "ipad-11";
}
lease 10.41.20.12 {
  starts epoch 1795420800; # Mon Nov 23 08:00:00 2026
  ends never;
  binding state active;
  hardware ethernet 02:41:00:00:20:12;
  client-hostname "odd;name {x}";
}
lease 10.41.20.13 {
  starts 1 2026/11/23 07:00:00;
  ends 1 2026/11/23 07:30:00;
  binding state free;
  hardware ethernet 02:41:00:00:20:13;
}
lease6 fd00::11 {
  cltt 1 2026/11/23 08:00:00;
}
failover peer "dc" state { my state normal at 1 2026/11/23 07:00:00; }
lease 10.41.20.14 {
  starts 1 2026/11/23 08:00:00;
  binding state active;
}
lease 10.41.20.99 {
  starts 1 2026/13/23 08:00:00;
  hardware ethernet 02:41:00:00:20:99;
}
lease 10.41.20.15 {
  starts 1 2026/11/23 09:00:00;
  hardware ethernet 02:41:00:00:20:15;
"""


def test_isc_dhcpd_leases() -> None:
    parsed = parse_lease_file(ISC, tz=LONDON)
    assert parsed.format == "isc"
    found = [(lease.line, lease.ip, lease.mac, lease.hostname, lease.starts, lease.ends, lease.active)
             for lease in parsed.leases]
    assert found == [
        (6, "10.41.20.11", "02:41:00:00:20:11", "ipad-11", datetime(2026, 11, 23, 8, tzinfo=UTC),
         datetime(2026, 11, 23, 20, tzinfo=UTC), True),
        # epoch times and `ends never`; "odd;name {x}" is one quoted string, but no host name
        (18, "10.41.20.12", "02:41:00:00:20:12", None, datetime(2026, 11, 23, 8, tzinfo=UTC), None, True),
        (25, "10.41.20.13", "02:41:00:00:20:13", None, datetime(2026, 11, 23, 7, tzinfo=UTC),
         datetime(2026, 11, 23, 7, 30, tzinfo=UTC), False),
    ]
    assert parsed.skipped == 2  # lease6, and a lease without a client
    assert [(p.line, p.reason) for p in parsed.problems] == [
        (18, "host name 'odd;name {x}' is not a valid host name; the lease is kept without it"),
        (39, "'1 2026/13/23 08:00:00' is not a dhcpd time"),
    ]
    # The last lease is still being written: it is left for the next read.
    assert ISC[: parsed.consumed].rstrip().endswith("}") and "10.41.20.15" not in ISC[: parsed.consumed]


KEA = """\
address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context,pool_id
10.41.20.11,02:41:00:00:20:11,01:02:41:00:00:20:11,43200,1795464000,1,0,0,ipad-11,0,,0
10.41.20.12,02:41:00:00:20:12,,4294967295,4294967295,1,0,0,lab&#x2cpc,0,,0
10.41.20.13,02:41:00:00:20:13,,3600,1795424400,1,0,0,,2,,0
10.41.20.14,,,3600,1795424400,1,0,0,,1,,0
10.41.20.15,02:41:00:00:20:15,,soon,1795424400,1,0,0,,0,,0
10.41.20.16,02:41:00:00:20:16,,3600,1795"""


def test_kea_lease_csv() -> None:
    parsed = parse_lease_file(KEA, tz=LONDON)
    assert parsed.format == "kea"
    found = [(lease.line, lease.ip, lease.hostname, lease.starts, lease.ends, lease.active) for lease in parsed.leases]
    assert found == [
        (2, "10.41.20.11", "ipad-11", datetime(2026, 11, 23, 8, tzinfo=UTC), datetime(2026, 11, 23, 20, tzinfo=UTC),
         True),
        (3, "10.41.20.12", None, None, None, True),  # an infinite lease; "lab,pc" is no host name
        (4, "10.41.20.13", None, datetime(2026, 11, 23, 8, tzinfo=UTC), datetime(2026, 11, 23, 9, tzinfo=UTC),
         False),  # expired-reclaimed: it ended at its expiry
    ]
    assert parsed.skipped == 1  # declined: no client
    assert [(p.line, p.reason) for p in parsed.problems] == [
        (3, "host name 'lab,pc' is not a valid host name; the lease is kept without it"),
        (6, "valid_lifetime, expire and state must be numbers"),
    ]
    assert "10.41.20.16" not in KEA[: parsed.consumed]  # the line Kea is still writing


def test_dnsmasq_in_the_common_shape() -> None:
    parsed = parse_lease_file("1795464000 02:41:00:00:20:11 10.41.20.11 ipad-11 *\n", tz=LONDON)
    assert parsed.format == "dnsmasq"
    (lease,) = parsed.leases
    assert (lease.mac, lease.starts, lease.ends) == ("02:41:00:00:20:11", None, datetime(2026, 11, 23, 20, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "fmt"),
    [(WINDOWS_UK, "windows"), (WINDOWS_HEADER + "\n", "windows"), (ISC, "isc"), (KEA, "kea"),
     ("0 02:00:00:00:00:01 10.0.0.1 x *\n", "dnsmasq"), ("hello\n", None), ("", None)],
)
def test_detect_format(text: str, fmt: str | None) -> None:
    assert detect_format(text) == fmt


def test_a_binary_file_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ExportError, match="not a text file"):
        decode_export(b"PK\x03\x04\x00\x00binary zip", what="leases.xlsx")


@given(st.text(max_size=400))
@settings(max_examples=300, deadline=None)
def test_no_input_makes_a_parser_raise_anything_but_a_format_error(text: str) -> None:
    for fmt in ("windows", "isc", "kea", "dnsmasq"):
        try:
            parsed = parse_lease_file(text, fmt, tz=LONDON)
        except LeaseFormatError:
            continue
        assert 0 <= parsed.consumed <= len(text)
