"""MAC address spelling: the register stores lower-case, colon-separated, six octets."""

from __future__ import annotations

import re

_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_BARE = re.compile(r"^[0-9a-f]{12}$")


def normalise_mac(text: str) -> str | None:
    """``AA-BB-CC-DD-EE-FF``, ``aa:bb:…`` or ``aabbccddeeff`` -> ``aa:bb:cc:dd:ee:ff``; None if not a MAC."""
    value = text.strip().lower()
    if _MAC.match(value):
        return value.replace("-", ":")
    if _BARE.match(value):
        return ":".join(value[i : i + 2] for i in range(0, 12, 2))
    return None
