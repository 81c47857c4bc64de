"""Making logged text safe to print.

Hosts, URLs and search terms come from the network: they may hold control characters,
bidirectional overrides that reorder what the reader sees, or bytes that were not UTF-8
(kept as lone surrogates). Those become visible escapes rather than breaking the page or
misleading the reader; HTML escaping is still done by Jinja's autoescape afterwards.
"""

from __future__ import annotations

import re

# C0 controls (except tab, newline, carriage return), DEL, C1 controls, bidi controls,
# lone surrogates.
_UNSHOWABLE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"


def printable(text: str) -> str:
    if _UNSHOWABLE.search(text) is None:
        return text
    return _UNSHOWABLE.sub(_escape, text)
