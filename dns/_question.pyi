"""A plain DNS query read in one pass, and a reply put together (dns/_question.c)."""

def plain_name(packet: bytes, /) -> tuple[int, bytes, str] | None:
    """(where the name ends, its wire form in lower case, its dotted lower-case form) for a
    plain name (labels of at most 63 bytes, at most 255 bytes, ASCII, no dot inside a label,
    the type and class present); None for anything else, which the full parser reads."""

def plain_query(
    packet: bytes, edns_udp_size: int, /
) -> tuple[int, int, int, bytes, str, int, bool, bool, int] | None:
    """(ID, flags, where the question ends, the name's wire form in lower case, its dotted
    form, type, EDNS, DO bit, the largest answer the client takes) for a query the fast path
    may answer: a QUERY with one question of a plain name (see plain_name), class IN, a type
    from 1 to 127, no answer or authority records, and no additional record or one OPT record
    at the root, EDNS version 0, inside the packet. The largest answer is 512 bytes without
    EDNS, else the client's UDP size between 512 and `edns_udp_size`. None for anything else."""

def reply(packet: bytes, question_end: int, head: bytes, tail: bytes, /) -> bytes:
    """packet[:2] + head + packet[12:question_end] + tail: the query's ID and question with a
    reply's flags and counts (`head`, 10 bytes) and records (`tail`). ValueError if the
    question does not end inside the packet after its header, or `head` is not 10 bytes."""
