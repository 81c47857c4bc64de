"""Making logged text safe to show and to export.

Hosts, URLs and search terms come from the network: they may hold control characters,
bidirectional overrides that reorder what the reader sees ("gnp.exe" shown for "exe.png"),
or bytes that were not UTF-8 (kept as lone surrogates). On a page they become visible
escapes (`printable`); in a CSV file (`csv_text`) NUL and the other control characters are
dropped (a spreadsheet or a script reading the file may stop or misread at them) and the
bidirectional controls are shown as escapes. HTML escaping and the CSV formula guard are
done on top of these by Jinja and schoolgate.services.csvexport.
"""

from __future__ import annotations

import re

_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROLS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"  # C0 except tab, newline, carriage return; DEL; C1
_SURROGATES = "\ud800-\udfff"
_UNSHOWABLE = re.compile(f"[{_CONTROLS}{_BIDI}{_SURROGATES}]")
_CONTROL = re.compile(f"[{_CONTROLS}]")
_BIDI_OR_SURROGATE = re.compile(f"[{_BIDI}{_SURROGATES}]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}"


def printable(text: str) -> str:
    """Control, bidirectional and stray-byte characters as visible escapes (for pages)."""
    if _UNSHOWABLE.search(text) is None:
        return text
    return _UNSHOWABLE.sub(_escape, text)


def csv_text(text: str) -> str:
    """For a CSV cell: control characters (NUL included) dropped, bidirectional controls and
    stray bytes shown as escapes. Tabs and line breaks stay (the CSV writer quotes them)."""
    text = _CONTROL.sub("", text)
    if _BIDI_OR_SURROGATE.search(text) is None:
        return text
    return _BIDI_OR_SURROGATE.sub(_escape, text)
