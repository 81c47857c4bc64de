"""Run the plan's expectations and the appliance's health checks; compare; say what failed.

Expectations run concurrently (a DNS daemon that does not answer costs one timeout, not one per
question). Each result says whether its failure means filtering itself is not working for a
network (a blocked category answered with the real address, the DNS daemon silent, the DoH
canary resolving, a blocked site's connection reaching the site): that is what makes the
self-test e-mail the DSL and the headteacher as well as the technician.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from schoolgate.doctor import Status
from schoolgate.selftest import probes
from schoolgate.selftest.plan import UPSTREAM, Expectation, Kind, Want

log = logging.getLogger(__name__)
WORKERS = 16
Runner = Callable[[Callable[[], Any]], Any]


@dataclass(frozen=True)
class CheckResult:
    check: str
    subject: str
    vantage: str  # "" for the appliance's own health checks
    status: Status
    message: str
    fix: str = ""
    filtering: bool = False  # this failure means filtering itself is not working
    elapsed_ms: int = 0
    role: str = ""  # the role the vantage is filtered as ("" for the appliance's own checks)

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["status"] = self.status.value.lower()
        return values

    def line(self) -> str:
        where = f" from {self.vantage}" if self.vantage else ""
        text = f"{self.status.value:<4} {self.check}: {self.subject}{where}: {self.message}"
        return f"{text} -> {self.fix}" if self.fix and self.status is not Status.OK else text


@dataclass(frozen=True)
class Target:
    """Where the appliance answers, and what it is."""

    dns_server: str  # a device's resolver: the appliance's LAN address
    dns_port: int = 53
    timeout_s: float = 2.0
    school_ca_issuer: str = ""  # the school CA's subject: a certificate it issued is the block page
    upstreams: tuple[str, ...] = ()  # "host:port", for a blocked service's real address
    watched_prefixes: tuple[str, ...] = ()
    appliance_runner: Runner | None = None  # where the appliance's own sockets are made (the lab)


def _here(probe: Callable[[], Any]) -> Any:
    return probe()


DNS_FIX = "check that schoolgate-dns runs (sudo systemctl status schoolgate-dns) and the ruleset is loaded " \
          "(sudo systemctl restart schoolgate-net)"


def judge_dns(item: Expectation, answer: probes.DnsAnswer) -> CheckResult:
    def result(status: Status, message: str, fix: str = "", filtering: bool | None = None) -> CheckResult:
        return CheckResult(item.check, item.subject, item.vantage.name, status, message, fix,
                           item.filtering if filtering is None else filtering, answer.elapsed_ms, item.vantage.role)

    asked = f"{item.name}: {answer.describe()}"
    if not answer.answered:
        return result(Status.FAIL, f"the appliance did not answer the DNS question for {item.name} "
                      f"({answer.error})", DNS_FIX, filtering=True)
    if item.want is Want.BLOCK:
        if answer.rcode == "NOERROR" and item.value in answer.addresses:
            return result(Status.OK, f"blocked ({asked}) by {item.rule}")
        return result(Status.FAIL, f"NOT blocked: {asked}; the policy blocks it ({item.rule})",
                      "run `schoolgate policy explain` for this name, and check the DNS daemon's log")
    if item.want is Want.ALLOW:
        if item.value in answer.addresses:
            return result(Status.FAIL, f"blocked, but the policy allows it ({item.rule}): {asked}",
                          "run `schoolgate policy explain` for this name")
        if answer.rcode in ("NOERROR", "NXDOMAIN"):
            return result(Status.OK, f"allowed ({asked}) by {item.rule}")
        return result(Status.FAIL, f"allowed by the policy but the upstream DNS failed: {asked}",
                      "check the upstream DNS servers (schoolgate doctor --only upstream)")
    if item.want is Want.REWRITE:
        if item.value.lower() in answer.cnames:
            return result(Status.OK, f"safe search enforced ({asked})")
        return result(Status.FAIL, f"safe search NOT enforced: {asked}; expected a CNAME to {item.value} "
                      f"({item.rule})", "check the DNS daemon's log")
    if item.want is Want.NXDOMAIN:
        if answer.rcode == "NXDOMAIN":
            return result(Status.OK, f"answered NXDOMAIN, so browsers keep using the school's DNS ({asked})")
        return result(Status.FAIL, f"{asked}: browsers and phones may now switch to encrypted DNS and bypass "
                      "the filter", "check the DNS daemon's special names")
    if item.value in answer.addresses:
        return result(Status.OK, f"{asked}")
    return result(Status.FAIL, f"{asked}; expected {item.value}", "check dns.names and network.appliance_ipv4")


def judge_connection(item: Expectation, seen: probes.Connection, issuer: str, address: str) -> CheckResult:
    def result(status: Status, message: str, fix: str = "", filtering: bool | None = None) -> CheckResult:
        return CheckResult(item.check, item.subject, item.vantage.name, status, message, fix,
                           item.filtering if filtering is None else filtering, seen.elapsed_ms, item.vantage.role)

    where = f"{item.name} at {address}"
    school_ca = bool(issuer) and seen.issuer == issuer
    if item.want is Want.KILLED:
        if not seen.connected:
            return result(Status.FAIL, f"{where}: the proxy did not answer ({seen.error}); devices cannot reach "
                          "any watched site", "sudo systemctl status schoolgate-proxy", filtering=False)
        if not seen.established:
            return result(Status.OK, f"{where}: killed during the TLS handshake ({item.rule})")
        if school_ca and seen.status == 403:
            return result(Status.OK, f"{where}: the school's block page ({item.rule})")
        return result(Status.FAIL, f"{where}: the connection went through ({seen.describe()}); the policy blocks "
                      f"it ({item.rule})", "check the proxy's log and network.watched_prefixes")
    if item.want is Want.BLOCK_PAGE:
        if seen.status == 403 and "Blocked" in seen.body:
            return result(Status.OK, f"{where}: the school's block page")
        if not seen.connected:
            return result(Status.FAIL, f"{where}: the proxy did not answer ({seen.error})",
                          "sudo systemctl status schoolgate-proxy", filtering=False)
        return result(Status.FAIL, f"{where}: {seen.describe()}, not the block page ({item.rule})",
                      "check the proxy's log")
    # UNTOUCHED: an allowed site must keep its own certificate and answer.
    if not seen.connected:
        return result(Status.FAIL, f"{where}: could not connect ({seen.error})",
                      "check the internet connection, or change selftest.allowed_sites")
    if not seen.established:
        return result(Status.FAIL, f"{where}: an allowed site was cut off during the TLS handshake ({seen.error})",
                      "check the proxy's log: is the site in a watched service's ranges?")
    if school_ca:
        return result(Status.FAIL, f"{where}: an allowed site was decrypted by the school CA",
                      "check proxy.inspect_search_engines and the proxy's log")
    if not seen.status:
        return result(Status.FAIL, f"{where}: no response after the handshake ({seen.error or 'closed'})",
                      "check the internet connection")
    return result(Status.OK, f"{where}: passed untouched ({seen.describe()})")


class Checker:
    """Runs expectations against the running appliance."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._appliance: Runner = target.appliance_runner or _here

    def run(self, expectations: Sequence[Expectation]) -> list[CheckResult]:
        plain = [e for e in expectations if e.address != UPSTREAM]
        real = [e for e in expectations if e.address == UPSTREAM]
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="selftest") as pool:
            results: list[CheckResult] = list(pool.map(self._one, plain))
            found = list(pool.map(self._real_address, _by_vantage(real)))
        return results + [r for r in found if r is not None]

    def _one(self, item: Expectation) -> CheckResult:
        vantage, target = item.vantage, self.target
        try:
            if item.kind is Kind.DNS:
                answer = vantage.run(lambda: probes.ask_dns(target.dns_server, target.dns_port, item.name,
                                                            source=vantage.source, timeout=target.timeout_s))
                return judge_dns(item, answer)
            address = item.address
            if not address:
                answer = vantage.run(lambda: probes.ask_dns(target.dns_server, target.dns_port, item.name,
                                                            source=vantage.source, timeout=target.timeout_s))
                if not answer.addresses:
                    return CheckResult(item.check, item.subject, vantage.name, Status.FAIL,
                                       f"{item.name} did not resolve through the appliance ({answer.describe()})",
                                       "check the upstream DNS servers", item.filtering, answer.elapsed_ms)
                address = answer.addresses[0]
            return self._connect(item, address)
        except Exception as err:  # one probe that breaks is a finding, never the end of the run
            log.exception("self-test probe %s %s failed", item.check, item.name)
            return CheckResult(item.check, item.subject, vantage.name, Status.FAIL,
                               f"the check itself failed: {err.__class__.__name__}: {err}", "report this")

    def _connect(self, item: Expectation, address: str) -> CheckResult:
        vantage, timeout = item.vantage, self.target.timeout_s + 1
        if item.kind is Kind.HTTP:
            seen = vantage.run(lambda: probes.get_http(address, 80, item.name, source=vantage.source, timeout=timeout))
        else:
            seen = vantage.run(lambda: probes.connect_tls(address, 443, item.name, source=vantage.source,
                                                          timeout=timeout))
        return judge_connection(item, seen, self.target.school_ca_issuer, address)

    def _upstream_address(self, name: str) -> str | None:
        for upstream in self.target.upstreams:
            host, _, port = upstream.rpartition(":")

            def ask(server: str = host.strip("[]"), number: int = int(port or 53)) -> probes.DnsAnswer:
                return probes.ask_dns(server, number, name, timeout=self.target.timeout_s)

            answer: probes.DnsAnswer = self._appliance(ask)
            if answer.addresses:
                return str(answer.addresses[0])
        return None

    def _real_address(self, items: list[Expectation]) -> CheckResult | None:
        """The first blocked service whose real address the watched prefixes cover."""
        prefixes = [ipaddress.ip_network(p, strict=False) for p in self.target.watched_prefixes]
        for item in items:
            address = self._upstream_address(item.name)
            if address is None or not any(ipaddress.ip_address(address) in net for net in prefixes):
                continue
            return self._connect(item, address)
        if not items:
            return None
        first = items[0]
        return CheckResult("https-blocked-address", "watched prefixes", first.vantage.name, Status.WARN,
                           "none of the blocked services' addresses is in network.watched_prefixes, so this was "
                           "not tested: a device that ignores DNS reaches them only if DNS answered it recently",
                           "list the services' published ranges in network.watched_prefixes")


def _by_vantage(items: Sequence[Expectation]) -> list[list[Expectation]]:
    groups: dict[str, list[Expectation]] = {}
    for item in items:
        groups.setdefault(item.vantage.name, []).append(item)
    return list(groups.values())


def summarise(results: Sequence[CheckResult]) -> dict[str, Any]:
    failed = [r for r in results if r.failed]
    return {
        "checks": len(results),
        "failed": len(failed),
        "warnings": sum(r.status is Status.WARN for r in results),
        "filtering_down": any(r.filtering for r in failed),
    }


def now_iso(now: datetime) -> str:
    return now.isoformat(timespec="seconds")
