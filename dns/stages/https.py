"""Clean upstream answers: drop the upstream's OPT record, and `ech` from SVCB/HTTPS records.

Bytes an upstream sends after the last record its counts declare are cut off: they are not
part of the answer, and a client's parser should never be handed them. An answer must count
exactly one question (ours: the upstream pool has checked its bytes).

Without Encrypted Client Hello the browser names the real site in the TLS SNI, which the proxy
must see to apply the policy. The rest of each record (alpn, port, address hints) is kept.
An answer that cannot be parsed counts as an upstream failure; an SVCB/HTTPS record that cannot
be cleaned is not passed on (the client gets no records and falls back to A/AAAA).
"""

from __future__ import annotations

import logging

from schoolgate.dns.chain import Answer, Result, Stage, then
from schoolgate.dns.message import Message, MessageError
from schoolgate.dns.svcb import SvcbError, filter_message
from schoolgate.dns.upstream import UpstreamFailure
from schoolgate.dns.wire import HEADER, TYPE_HTTPS, TYPE_SVCB, Query

log = logging.getLogger(__name__)


def clean_answer(answer: bytes) -> bytes:
    try:
        message = Message(answer)
        if message.counts[0] != 1:
            # Our question's bytes under a header that counts none (or several) would reach the
            # client as a reply without its question (found by the hostile-upstream fuzzer).
            raise MessageError(f"the answer counts {message.counts[0]} questions, not 1")
        if message.end != len(answer):
            message = Message(answer[: message.end])
        if any(r.rtype == 41 for r in message.records):
            message = Message(message.without_opt())
        if not any(r.rtype in (TYPE_SVCB, TYPE_HTTPS) for r in message.records):
            return message.data
    except MessageError as err:
        raise UpstreamFailure(f"unparseable answer: {err}") from None
    try:
        return filter_message(message)
    except (SvcbError, MessageError) as err:
        log.warning("dropping an SVCB/HTTPS answer that cannot be cleaned: %s", err)
        data = message.data
        return HEADER.pack(message.ident, message.flags, 1, 0, 0, 0) + data[12 : message.question_end]


class HttpsFilterStage(Stage):
    name = "https-filter"

    def resolve(self, query: Query) -> Result:
        return then(self.pass_on(query), self._clean)

    def _clean(self, answer: Answer) -> Answer:
        if answer is None:
            return None
        return clean_answer(answer)
