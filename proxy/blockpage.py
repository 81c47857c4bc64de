"""The school's block pages: what was blocked, under which rule and clause, and what to do next.

Two pages. Adults get the full account: the site, the rule, the clause of the school's policy,
the category's published rationale, and a link to ask for access (seed 001 appendix A). A
pupil's device gets a page a child of 4 to 11 can read: short words, a picture, "ask your
teacher", a "this upset me" button that tells the Designated Safeguarding Lead, and Childline's
number, with the same facts below for the adult who comes to help.

Everything the pages echo (host, URL, device name, rule text) may come from an attacker: the
URL is whatever the browser asked for. Every value is HTML-escaped, the request link is built
with urlencode, and the pages are served with a Content-Security-Policy that allows no script
at all, no image or other fetch (the picture is inline SVG), and only the one inline
stylesheet below, by its hash. The pupil page may post one form, to its own origin.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass
from datetime import datetime, tzinfo
from urllib.parse import urlencode

from schoolgate.proxy.upset import UPSET_PATH
from schoolgate.timewords import instant_words

MAX_ECHO = 300  # long URLs are cut on the page (the request link carries the full one, capped)
MAX_LINK_URL = 2000
CHILDLINE_NUMBER = "0800 1111"
CHILDLINE_TEL = "tel:08001111"

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
a.button,button{display:inline-block;background:#0b5cad;color:#fff;padding:.6rem 1rem;border-radius:4px;
text-decoration:none;font-weight:600;font-size:1rem;border:0;cursor:pointer}
footer{margin-top:2rem;font-size:.85rem;color:#5a6672}
.pupil main{text-align:center;font-size:1.3rem}
.pupil h1{font-size:2rem;color:#174a85}
.pupil .kid p{margin:.6rem 0}
.pupil .help{margin:1.5rem 0;padding:1rem;border-radius:12px;background:#eef5ff}
.pupil button{font-size:1.3rem;padding:.8rem 1.6rem;border-radius:999px;background:#b4235a;min-height:3rem}
.pupil .childline{font-size:1.4rem;font-weight:700}
.pupil .adults{text-align:left;font-size:.9rem;border-top:1px solid #d0d7de;margin-top:2rem;padding-top:1rem}
.pupil .adults h2{font-size:1rem}
""".strip()

STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")


def _csp(form_action: str) -> str:
    return (
        "default-src 'none'; "
        f"style-src '{STYLE_HASH}'; "
        f"img-src 'none'; script-src 'none'; form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )


CSP = _csp("'none'")
PUPIL_CSP = _csp("'self'")  # the "this upset me" button posts to the page's own origin

_COMMON_HEADERS: dict[str, str] = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
HEADERS: dict[str, str] = {**_COMMON_HEADERS, "Content-Security-Policy": CSP}
PUPIL_HEADERS: dict[str, str] = {**_COMMON_HEADERS, "Content-Security-Policy": PUPIL_CSP}

# A friendly shield with a smile: drawn inline, so the page fetches nothing.
PICTURE = """<svg class="picture" viewBox="0 0 120 120" width="120" height="120" role="img"
aria-label="A smiling blue shield">
<path d="M60 8 L104 24 V58 C104 86 84 104 60 112 C36 104 16 86 16 58 V24 Z" fill="#2b7bd6"
stroke="#174a85" stroke-width="4"/>
<circle cx="46" cy="52" r="7" fill="#fff"/><circle cx="74" cy="52" r="7" fill="#fff"/>
<circle cx="47" cy="53" r="3.5" fill="#1b2733"/><circle cx="75" cy="53" r="3.5" fill="#1b2733"/>
<circle cx="34" cy="68" r="5" fill="#f7a1b5"/><circle cx="86" cy="68" r="5" fill="#f7a1b5"/>
<path d="M44 74 Q60 88 76 74" fill="none" stroke="#fff" stroke-width="5" stroke-linecap="round"/>
</svg>"""


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
    zone: tzinfo  # the school's time zone (the policy's [school] timezone), for "Time"
    service_name: str | None = None
    circumvention: bool = False
    explanation: str | None = None  # schoolgate.policy.explain_text: reason, clause, when it changes
    category_name: str | None = None  # the catalogue category that blocked it, e.g. "Social media"
    rationale: str | None = None  # that category's published rationale
    pupil: bool = False  # the device is a pupil's: the page written for children
    upset_token: str | None = None  # the pupil page's "this upset me" button (schoolgate.proxy.upset)


def _cut(text: str, limit: int = MAX_ECHO) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def in_words(moment: datetime, zone: tzinfo) -> str:
    """The school's local time in words: "Monday 23 November 2026, 10:15 am"."""
    return instant_words(moment, zone)


def request_link(console_base_url: str, info: BlockInfo) -> str:
    """The access-request form (seed 001 appendix A), prefilled: URL, device, time, rule."""
    query = urlencode({
        "url": (info.url or f"https://{info.host}/")[:MAX_LINK_URL],
        "device": info.device or "",
        "at": info.at.isoformat(timespec="seconds"),
        "rule": info.rule_id,
    })
    return f"{console_base_url.rstrip('/')}/request?{query}"


def _facts(info: BlockInfo) -> str:
    e = html.escape
    category = info.category_name
    if category and info.rationale:
        category = f"{category}: {info.rationale}"
    rows = [
        ("School", info.school if info.pupil else None),
        ("Site", info.host),
        ("Address", _cut(info.url) if info.url else None),
        ("Rule", info.rule_id),
        ("Policy", info.clause or None),
        ("Category", category),
        ("Device", info.device_name or info.device),
        ("Time", in_words(info.at, info.zone)),
    ]
    return "\n".join(f'<dt>{e(k)}</dt><dd id="fact-{k.lower()}">{e(v)}</dd>' for k, v in rows if v)


def render(info: BlockInfo, console_base_url: str) -> str:
    """The page for `info`: the pupil page when `info.pupil`, else the adults' page."""
    return render_pupil(info, console_base_url) if info.pupil else render_adult(info, console_base_url)


def headers_for(info: BlockInfo) -> dict[str, str]:
    return PUPIL_HEADERS if info.pupil else HEADERS


def _document(title: str, body: str, *, pupil: bool) -> str:
    return f"""<!doctype html>
<html lang="en-GB">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{STYLE}</style>
</head>
<body{' class="pupil"' if pupil else ''}>
{body}
</body>
</html>
"""


def render_adult(info: BlockInfo, console_base_url: str) -> str:
    e = html.escape
    site = info.service_name or info.host
    why = info.explanation or info.reason or "This site is not allowed on the school network."
    extra = ""
    if info.circumvention:
        extra = (
            "<p>This connection looked like an attempt to get round the school's filtering. "
            "It has been recorded for the Designated Safeguarding Lead.</p>"
        )
    rationale = ""
    if info.rationale:
        label = f"Why {info.category_name} is blocked" if info.category_name else "Why sites like this are blocked"
        rationale = f'<p id="rationale"><strong>{e(label)}:</strong> {e(info.rationale)}</p>'
    link = request_link(console_base_url, info)
    body = f"""<main>
<h1>{e(_cut(site, 80))} is blocked at {e(info.school)}</h1>
<p>{e(why)}</p>
{rationale}
{extra}
<dl>
{_facts(info)}
</dl>
<p class="notice">This network is filtered and monitored. Attempts to reach blocked sites are
recorded with the device, the time and the address.</p>
<p>If you need this site for your work, ask for access. A member of staff will review the request.</p>
<p><a class="button" id="request-link" href="{e(link, quote=True)}">Request access to this site</a></p>
<footer>{e(info.school)} · schoolgate</footer>
</main>"""
    return _document(f"Blocked: {e(_cut(site, 80))}", body, pupil=False)


def render_pupil(info: BlockInfo, console_base_url: str) -> str:
    """The page for a child: few, short words; every fact an adult needs is below them."""
    e = html.escape
    site = info.service_name or info.host
    trying = ""
    if info.circumvention:
        trying = "<p>Trying to get round the school's filter is not allowed.</p>"
    upset = ""
    if info.upset_token:
        upset = f"""<section class="help" id="upset">
<h2>Did something upset you?</h2>
<p>Press the button. A grown-up who keeps you safe will be told.</p>
<form method="post" action="{e(UPSET_PATH, quote=True)}">
<input type="hidden" name="token" value="{e(info.upset_token, quote=True)}">
<button type="submit" id="upset-button">This upset me</button>
</form>
</section>"""
    rationale = f'<p id="rationale">{e(info.rationale)}</p>' if info.rationale else ""
    link = request_link(console_base_url, info)
    body = f"""<main>
{PICTURE}
<div class="kid" id="for-children">
<h1>This website is blocked</h1>
<p>You can't use it at {e(info.school)}.</p>
{trying}
<p><strong>Ask your teacher</strong> if you need help.</p>
</div>
{upset}
<p class="childline" id="childline">You can talk to Childline. It is free.<br>
Call <a href="{CHILDLINE_TEL}">{CHILDLINE_NUMBER}</a></p>
<section class="adults" id="for-adults">
<h2>For grown-ups</h2>
<p>{e(_cut(site, 80))} was blocked by the school's filter. {e(info.explanation or info.reason or '')}</p>
{rationale}
<dl>
{_facts(info)}
</dl>
<p class="notice">This network is filtered and monitored. Attempts to reach blocked sites are
recorded with the device, the time and the address.</p>
<p><a id="request-link" href="{e(link, quote=True)}">Ask for access to this site</a>
(a member of staff reviews every request).</p>
</section>
</main>"""
    return _document("This website is blocked", body, pupil=True)


def render_upset_thanks(school: str) -> str:
    """What a child sees after pressing "this upset me"."""
    e = html.escape
    body = f"""<main>
{PICTURE}
<div class="kid" id="for-children">
<h1>Thank you for telling us</h1>
<p>You did the right thing.</p>
<p>A grown-up at {e(school)} who keeps you safe has been told.</p>
<p><strong>You can talk to your teacher too.</strong></p>
</div>
<p class="childline" id="childline">You can talk to Childline. It is free.<br>
Call <a href="{CHILDLINE_TEL}">{CHILDLINE_NUMBER}</a></p>
</main>"""
    return _document("Thank you for telling us", body, pupil=True)


def render_upset_failed(school: str) -> str:
    """The button could not vouch for the page (too old, or not from this device's page)."""
    e = html.escape
    body = f"""<main>
{PICTURE}
<div class="kid" id="for-children">
<h1>Sorry, that did not work</h1>
<p>Please tell your teacher, or another grown-up at {e(school)}.</p>
</div>
<p class="childline" id="childline">You can talk to Childline. It is free.<br>
Call <a href="{CHILDLINE_TEL}">{CHILDLINE_NUMBER}</a></p>
</main>"""
    return _document("Please tell your teacher", body, pupil=True)
