"""Print the review pack's HTML to PDF with Chromium (Debian's `chromium` package).

Headless Chromium lays out and prints exactly what a browser shows, with the fonts the appliance
has (fonts-liberation). It is started for one page and ends with it; the HTML is a local file
with everything inline, so nothing is fetched. An appliance without Chromium can still produce
the HTML (`--html`), which any browser prints.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 120


class PdfError(RuntimeError):
    """Chromium is missing or could not print the pack."""


def chromium_binary() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise PdfError("Chromium is not installed (Debian: sudo apt-get install chromium fonts-liberation); "
                   "use --html to write the pack as HTML instead")


def html_to_pdf(html: str, out: Path, *, timeout: float = TIMEOUT_S) -> int:
    """Write the PDF; returns its size in bytes."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="schoolgate-review-") as work:
        source = Path(work) / "review.html"
        source.write_text(html, encoding="utf-8")
        target = Path(work) / "review.pdf"
        # The pack has no script: without a JIT, V8 needs no writable-and-executable memory, which
        # the console's systemd unit forbids (MemoryDenyWriteExecute).
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                "--js-flags=--jitless",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={Path(work) / 'profile'}", "--no-pdf-header-footer",
                f"--print-to-pdf={target}", source.as_uri()]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                                  env={"HOME": work, "PATH": "/usr/bin:/bin"})
        except subprocess.TimeoutExpired as err:
            raise PdfError(f"Chromium did not finish printing within {timeout:g} s") from err
        if done.returncode != 0 or not target.exists() or target.stat().st_size == 0:
            raise PdfError(f"Chromium could not print the pack (exit {done.returncode}): {done.stderr.strip()[-500:]}")
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), out)
    return out.stat().st_size
