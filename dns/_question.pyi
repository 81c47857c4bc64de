"""The question's name of a plain DNS query, read in one pass (dns/_question.c)."""

def plain_name(packet: bytes, /) -> tuple[int, bytes, str] | None:
    """(where the name ends, its wire form in lower case, its dotted lower-case form) for a
    plain name (labels of at most 63 bytes, at most 255 bytes, ASCII, no dot inside a label,
    the type and class present); None for anything else, which the full parser reads."""
