"""Reading the files other systems export: their text encoding, decided from the bytes.

Windows tools write UTF-16 with a byte-order mark (Out-File, older Export-Csv), UTF-8 with
one (Export-Csv -Encoding UTF8, Excel's "CSV UTF-8"), or the machine's code page (Excel's
plain "CSV", cp1252 in the UK); Unix tools write UTF-8. One function decides, so a lease
export, a directory CSV and a console upload are all read the same way, and a file that is
not text is refused with a message saying so, never half-read.
"""

from __future__ import annotations

import codecs


class ExportError(ValueError):
    """The file cannot be read as the export it should be (says why, in words for a technician)."""


_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_export(data: bytes, *, what: str = "the file") -> tuple[str, str]:
    """(text, encoding name) of an exported file.

    A byte-order mark decides; then UTF-16 without one (every other byte NUL in ASCII text);
    then UTF-8; then cp1252, the UK's Windows code page, which can decode anything but the
    five bytes it leaves undefined.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return _decode(data, encoding, what), encoding.replace("-sig", " (with BOM)")
    head = data[:4096]
    if len(head) >= 4 and head.count(0) * 3 >= len(head):
        encoding = "utf-16-le" if head[1] == 0 else "utf-16-be"
        return _decode(data, encoding, what), encoding
    if b"\0" in head:
        raise ExportError(f"{what} is not a text file (save it as CSV or text)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return _decode(data, "cp1252", what), "cp1252"


def _decode(data: bytes, encoding: str, what: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        raise ExportError(
            f"{what} is not valid {encoding} text (byte {err.start}); save it again as CSV UTF-8"
        ) from err
