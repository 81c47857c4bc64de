"""What the proxy learns about a device's trust in the school CA from its TLS handshakes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from schoolgate.proxy.catrust import CaTrustObserver

AT = datetime(2026, 11, 23, 10, 15, tzinfo=UTC)


@dataclass
class Conn:
    peername: tuple[str, int] | None
    error: str | None = None


@dataclass
class Data:
    conn: Conn


def test_handshakes_that_complete_or_reject_the_ca_are_remembered() -> None:
    observer = CaTrustObserver(lambda: AT, limit=2)
    observer.tls_established_client(Data(Conn(("10.41.20.12", 50000))))
    observer.tls_failed_client(Data(Conn(("::ffff:10.41.20.41", 50001),
                                         "The client does not trust the proxy's certificate for x.com (unknown ca)")))
    observer.tls_failed_client(Data(Conn(("10.41.20.50", 50002), "connection closed")))  # tells nothing
    assert observer.snapshot() == {"10.41.20.12": [True, AT.isoformat()], "10.41.20.41": [False, AT.isoformat()]}
    observer.tls_established_client(Data(Conn(("10.41.20.60", 1))))
    assert list(observer.snapshot()) == ["10.41.20.41", "10.41.20.60"]  # the oldest goes first
    observer.tls_established_client(Data(Conn(None)))
    assert len(observer.snapshot()) == 2
