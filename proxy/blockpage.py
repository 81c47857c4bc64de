"""The school's block page: what was blocked, under which rule and clause, and how to ask for access.

Everything the page echoes (host, URL, device name, rule text) may come from an attacker: the
URL is whatever the browser asked for. Every value is HTML-escaped, the request link is built
with urlencode, and the page is served with a Content-Security-Policy that allows no script
at all and only the one inline stylesheet below, by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

_LONDON = ZoneInfo("Europe/London")
MAX_ECHO = 300  # long URLs are cut on the page (the request link carries the full one, capped)
MAX_LINK_URL = 2000

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Arial,sans-serif;background:#f4f6f8;color:#1b2733;
margin:0;padding:2rem 1rem}
main{max-width:40rem;margin:0 auto;background:#fff;border-radius:8px;padding:2rem;
box-shadow:0 1px 4px rgba(0,0,0,.12)}
h1{font-size:1.5rem;margin:0 0 1rem;color:#a4262c}
p{line-height:1.5}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.4rem 1rem;margin:1.5rem 0}
dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}
.notice{background:#fff4ce;border-left:4px solid #c19c00;padding:.75rem 1rem}
a.button{display:inline-block;background:#0b5cad;color:#fff;padding:.6rem 1rem;border-radius:4px;
text-decoration:none;font-weight:600}
footer{margin-top:2rem;font-size:.85rem;color:#5a6672}
""".strip()

STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")
CSP = (
    "default-src 'none'; "
    f"style-src '{STYLE_HASH}'; "
    "img-src 'none'; script-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)

HEADERS: dict[str, str] = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class BlockInfo:
    """What the page says. All strings are untrusted and escaped when rendered."""

    school: str
    host: str
    url: str | None
    rule_id: str
    clause: str
    reason: str
    at: datetime  # aware
    device: str | None  # device id, for the request form
    device_name: str | None
    service_name: str | None = None
    circumvention: bool = False
    explanation: str | None = None  # schoolgate.policy.explain_text: reason, clause, when it changes


def _cut(text: str, limit: int = MAX_ECHO) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def request_link(console_base_url: str, info: BlockInfo) -> str:
    """The access-request form (seed 001 appendix A), prefilled: URL, device, time, rule."""
    query = urlencode({
        "url": (info.url or f"https://{info.host}/")[:MAX_LINK_URL],
        "device": info.device or "",
        "at": info.at.isoformat(timespec="seconds"),
        "rule": info.rule_id,
    })
    return f"{console_base_url.rstrip('/')}/request?{query}"


def render(info: BlockInfo, console_base_url: str) -> str:
    e = html.escape
    site = info.service_name or info.host
    local = info.at.astimezone(_LONDON)
    rows = [
        ("Site", info.host),
        ("Address", _cut(info.url) if info.url else None),
        ("Rule", info.rule_id),
        ("Policy", info.clause or None),
        ("Device", info.device_name or info.device),
        ("Time", f"{local:%d %B %Y, %H:%M}"),
    ]
    details = "\n".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in rows if v)
    why = info.explanation or info.reason or "This site is not allowed on the school network."
    extra = ""
    if info.circumvention:
        extra = (
            "<p>This connection looked like an attempt to get round the school's filtering. "
            "It has been recorded for the Designated Safeguarding Lead.</p>"
        )
    link = request_link(console_base_url, info)
    return f"""<!doctype html>
<html lang="en-GB">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Blocked: {e(_cut(site, 80))}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<h1>{e(_cut(site, 80))} is blocked at {e(info.school)}</h1>
<p>{e(why)}</p>
{extra}
<dl>
{details}
</dl>
<p class="notice">This network is filtered and monitored. Attempts to reach blocked sites are
recorded with the device, the time and the address.</p>
<p>If you need this site for your work, ask for access. A member of staff will review the request.</p>
<p><a class="button" href="{e(link, quote=True)}">Request access to this site</a></p>
<footer>{e(info.school)} · schoolgate</footer>
</main>
</body>
</html>
"""
