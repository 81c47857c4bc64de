"""Removing Encrypted Client Hello configs from SVCB/HTTPS records (RFC 9460), at the byte level.

With an `ech` parameter (key 5) a browser encrypts the real hostname inside the TLS handshake
and the proxy sees only the provider's public name. Without it the browser sends the real name
in the SNI. Everything else in the record (alpn, port, ipv4hint, ipv6hint, unknown keys) is kept
byte for byte; a `mandatory` list that names `ech` loses that entry.
"""

from __future__ import annotations

from schoolgate.dns.message import Message
from schoolgate.dns.wire import TYPE_HTTPS, TYPE_SVCB, U16

KEY_MANDATORY = 0
KEY_ECH = 5


class SvcbError(ValueError):
    pass


def _skip_target(rdata: bytes, offset: int) -> int:
    """TargetName is an uncompressed name (RFC 9460 §2.2)."""
    total = 0
    while True:
        if offset >= len(rdata):
            raise SvcbError("target name runs past the record")
        length = rdata[offset]
        if length == 0:
            return offset + 1
        if length > 63:
            raise SvcbError("compressed or invalid label in the target name")
        total += length + 1
        if total > 255:
            raise SvcbError("target name too long")
        offset += length + 1


def strip_ech(rdata: bytes) -> bytes:
    """The record data without the `ech` parameter; the same bytes when there is none."""
    if len(rdata) < 3:
        raise SvcbError("record data too short")
    offset = _skip_target(rdata, 2)
    params: list[tuple[int, bytes]] = []
    previous = -1
    while offset < len(rdata):
        if offset + 4 > len(rdata):
            raise SvcbError("parameter header truncated")
        key = U16.unpack_from(rdata, offset)[0]
        length = U16.unpack_from(rdata, offset + 2)[0]
        value = rdata[offset + 4 : offset + 4 + length]
        if len(value) != length:
            raise SvcbError("parameter value truncated")
        if key <= previous:
            raise SvcbError("parameters not in strictly increasing key order")
        previous = key
        params.append((key, value))
        offset += 4 + length
    if not any(key == KEY_ECH for key, _ in params):
        return rdata
    kept: list[tuple[int, bytes]] = []
    for key, value in params:
        if key == KEY_ECH:
            continue
        if key == KEY_MANDATORY:
            if len(value) % 2:
                raise SvcbError("mandatory list has an odd length")
            keys = [U16.unpack_from(value, i)[0] for i in range(0, len(value), 2)]
            keys = [k for k in keys if k != KEY_ECH]
            if not keys:
                continue  # an empty mandatory list is not allowed: drop the parameter
            kept.append((key, b"".join(U16.pack(k) for k in keys)))
            continue
        kept.append((key, value))
    head = rdata[: _skip_target(rdata, 2)]
    return head + b"".join(U16.pack(k) + U16.pack(len(v)) + v for k, v in kept)


def filter_message(message: Message) -> bytes:
    """The response with `ech` removed from every SVCB/HTTPS record. Raises SvcbError if malformed."""
    edits: list[tuple[int, int, bytes]] = []
    data = message.data
    for record in message.records:
        if record.rtype not in (TYPE_SVCB, TYPE_HTTPS):
            continue
        rdata = data[record.rdata_offset : record.end]
        stripped = strip_ech(rdata)
        if stripped is rdata or stripped == rdata:
            continue
        # Two edits: RDLENGTH, and the parameters after the target name. The owner and target
        # names stay byte for byte where they were, so pointers into them still hold.
        params_start = record.rdata_offset + _skip_target(rdata, 2)
        head = params_start - record.rdata_offset
        edits.append((record.rdata_offset - 2, record.rdata_offset, U16.pack(len(stripped))))
        edits.append((params_start, record.end, stripped[head:]))
    if not edits:
        return data
    return message.splice(edits)
