"""Each kind of answer judged against each expectation: what passes, what fails, what is filtering."""

from __future__ import annotations

import pytest

from schoolgate.doctor import Status
from schoolgate.selftest.checks import judge_connection, judge_dns
from schoolgate.selftest.plan import Expectation, Kind, Want
from schoolgate.selftest.probes import Connection, DnsAnswer
from schoolgate.selftest.vantage import Vantage

V = Vantage(name="Pupil Wi-Fi (pupil)", role="pupil", client_ip="10.41.23.254")
BLOCK = "10.41.0.1"
SCHOOL_CA = "CN=schoolgate school CA"


def dns(want: Want, value: str = BLOCK) -> Expectation:
    # As the plan makes them: a name the policy allows is not a filtering question.
    return Expectation(Kind.DNS, "category", "Gambling", V, "gambling.test", want, value,
                       filtering=want not in (Want.ALLOW, Want.ADDRESS), rule="pupils-harmful")


@pytest.mark.parametrize(
    ("want", "value", "answer", "status", "filtering"),
    [
        (Want.BLOCK, BLOCK, DnsAnswer("NOERROR", (BLOCK,)), Status.OK, False),
        (Want.BLOCK, BLOCK, DnsAnswer("NOERROR", ("198.51.100.7",)), Status.FAIL, True),  # let through
        (Want.BLOCK, BLOCK, DnsAnswer("NXDOMAIN"), Status.FAIL, True),
        (Want.BLOCK, BLOCK, DnsAnswer("", error="timed out after 2 s"), Status.FAIL, True),  # daemon silent
        (Want.ALLOW, BLOCK, DnsAnswer("NOERROR", ("198.51.100.7",)), Status.OK, False),
        (Want.ALLOW, BLOCK, DnsAnswer("NXDOMAIN"), Status.OK, False),  # a canary that does not exist
        (Want.ALLOW, BLOCK, DnsAnswer("NOERROR", (BLOCK,)), Status.FAIL, False),  # over-blocking
        (Want.ALLOW, BLOCK, DnsAnswer("SERVFAIL"), Status.FAIL, False),  # the upstream is down
        (Want.REWRITE, "forcesafesearch.google.com",
         DnsAnswer("NOERROR", ("198.51.100.9",), ("forcesafesearch.google.com",)), Status.OK, False),
        (Want.REWRITE, "forcesafesearch.google.com", DnsAnswer("NOERROR", ("198.51.100.9",)), Status.FAIL, True),
        (Want.NXDOMAIN, "", DnsAnswer("NXDOMAIN"), Status.OK, False),
        (Want.NXDOMAIN, "", DnsAnswer("NOERROR", ("198.51.100.9",)), Status.FAIL, True),  # DoH turns on
        (Want.ADDRESS, BLOCK, DnsAnswer("NOERROR", (BLOCK,)), Status.OK, False),
    ],
)
def test_dns_answers(want: Want, value: str, answer: DnsAnswer, status: Status, filtering: bool) -> None:
    result = judge_dns(dns(want, value), answer)
    assert result.status is status, result.message
    assert (result.failed and result.filtering) == filtering
    assert result.vantage == V.name and result.subject == "Gambling"
    if result.failed:
        assert result.fix


def web(want: Want, kind: Kind = Kind.TLS) -> Expectation:
    filtering = want is not Want.UNTOUCHED
    return Expectation(kind, "https", "Facebook", V, "facebook.com", want, BLOCK, address=BLOCK, filtering=filtering,
                       rule="pupils-no-social-media")


@pytest.mark.parametrize(
    ("want", "seen", "status", "filtering"),
    [
        (Want.KILLED, Connection(True, error="reset"), Status.OK, False),
        (Want.KILLED, Connection(True, True, SCHOOL_CA, 403, "Blocked"), Status.OK, False),  # trusts the CA
        (Want.KILLED, Connection(True, True, "CN=DigiCert", 200, "<html>"), Status.FAIL, True),  # reached the site
        (Want.KILLED, Connection(False, error="refused"), Status.FAIL, False),  # proxy down: nothing gets through
        (Want.UNTOUCHED, Connection(True, True, "CN=DigiCert", 200), Status.OK, False),
        (Want.UNTOUCHED, Connection(True, True, SCHOOL_CA, 200), Status.FAIL, False),  # decrypted
        (Want.UNTOUCHED, Connection(True, error="reset"), Status.FAIL, False),  # cut off
        (Want.UNTOUCHED, Connection(True, True, "CN=DigiCert", 0, error="closed"), Status.FAIL, False),
    ],
)
def test_tls_connections(want: Want, seen: Connection, status: Status, filtering: bool) -> None:
    result = judge_connection(web(want), seen, SCHOOL_CA, BLOCK)
    assert result.status is status, result.message
    assert (result.failed and result.filtering) == filtering


@pytest.mark.parametrize(
    ("seen", "status"),
    [
        (Connection(True, status=403, body="<title>Blocked: Facebook</title>"), Status.OK),
        (Connection(True, status=200, body="<html>facebook</html>"), Status.FAIL),
        (Connection(False, error="refused"), Status.FAIL),
    ],
)
def test_the_http_block_page(seen: Connection, status: Status) -> None:
    assert judge_connection(web(Want.BLOCK_PAGE, Kind.HTTP), seen, SCHOOL_CA, BLOCK).status is status
