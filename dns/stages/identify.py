"""Identify the client: source address (and MAC from the neighbour table) to a policy Client."""

from __future__ import annotations

from typing import Protocol

from schoolgate.dns.chain import Result, Stage
from schoolgate.dns.wire import Query
from schoolgate.policy.types import Client


class ClientResolver(Protocol):
    def resolve(self, ip: str, mac: str | None = None) -> Client: ...


class IdentifyStage(Stage):
    name = "identify"

    def __init__(self, resolver: ClientResolver | None) -> None:
        super().__init__()
        self.resolver = resolver

    def resolve(self, query: Query) -> Result:
        if self.resolver is None:
            query.client = Client(ip=query.client_ip)
        else:
            query.client = self.resolver.resolve(query.client_ip)
        return self.pass_on(query)
