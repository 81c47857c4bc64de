"""dnsmasq's lease file, as schoolgate.identity.leases reads it, in the common lease shape.

dnsmasq writes only a lease's expiry (0: infinite); the start is when schoolgate first sees
it. DHCPv6 leases (after the `duid` line) carry no MAC and are counted as skipped.
"""

from __future__ import annotations

from schoolgate.identity.leaseformats import DhcpLease, LeaseFile


def parse_dnsmasq(text: str) -> LeaseFile:
    from schoolgate.identity.leases import parse_leases

    parsed = parse_leases(text)
    result = LeaseFile("dnsmasq", problems=list(parsed.problems), skipped=parsed.ipv6_skipped, consumed=len(text))
    result.leases = [
        DhcpLease(lease.line, lease.ip, lease.mac, lease.hostname, None, lease.expiry) for lease in parsed.leases
    ]
    return result
