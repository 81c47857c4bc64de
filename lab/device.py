"""What a lab device sees: browse a URL, or send the access request form from the block page.

`schoolgate lab browse` and `schoolgate lab request` use these, so a developer (and the
appliance tests) can act as a pupil's iPad without a browser in the namespace.
"""

from __future__ import annotations

import html
import http.cookiejar
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from schoolgate.lab import netns
from schoolgate.lab.lab import CONSOLE_PORT, Lab
from schoolgate.lab.topology import GATEWAY_LAN_IP, device

CONSOLE_URL = f"http://{GATEWAY_LAN_IP}:{CONSOLE_PORT}"  # the gateway topology's
_CSRF = re.compile(r'name="csrf_token"\s+value="([^"]*)"')
_REFERENCE = re.compile(r'id="reference">([^<]+)<')
_TOKEN = re.compile(r'id="token"><code>([^<]+)<')


@dataclass(frozen=True)
class Seen:
    """One page load: the HTTP status (0: none), the page as text, and curl's error if any."""

    status: int
    text: str
    error: str

    def render(self) -> str:
        if self.status == 0:
            return f"(no page: {self.error.strip() or 'the connection failed'})"
        return f"HTTP {self.status}\n\n{self.text}"


class _TextOf(HTMLParser):
    """The visible text of a page, a line per block, links as "text <href>"."""

    BLOCKS = frozenset({"p", "div", "h1", "h2", "h3", "li", "dt", "dd", "section", "br", "tr", "title", "form"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        if tag in self.BLOCKS:
            self.parts.append("\n")
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip = max(0, self._skip - 1)
        if tag == "a" and self._href:
            self.parts.append(f" <{self._href}>")
            self._href = None
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def page_text(page: str) -> str:
    parser = _TextOf()
    parser.feed(page)
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


def trust_bundle(lab: Lab, key: str) -> Path:
    """The CAs the device trusts: the internet's public CA, and the school CA if installed."""
    cas = [lab.public_ca]
    if device(key).trusts_school_ca and lab.school_ca.exists():
        cas.append(lab.school_ca)
    bundle = lab.state_dir / "pki" / f"trust-{key}.pem"
    bundle.write_text("".join(Path(ca).read_text() for ca in cas))
    return bundle


def browse(lab: Lab, key: str, url: str, timeout: float = 10) -> Seen:
    """Load `url` on the device with curl (its resolver is the gateway), as its browser would."""
    with tempfile.NamedTemporaryFile(prefix="sg-lab-page-") as body:
        argv = ["curl", "-sS", "--max-time", str(timeout), "--cacert", str(trust_bundle(lab, key)),
                "-o", body.name, "-w", "%{http_code}", url]
        done = netns.exec_in(lab.device_namespace(key), argv, check=False, timeout=timeout + 5)
        page = Path(body.name).read_text(errors="replace")
    status = int(done.stdout.strip() or 0) if done.stdout.strip().isdigit() else 0
    return Seen(status, page_text(page), done.stderr)


@dataclass(frozen=True)
class Requested:
    status: int
    reference: str | None
    token: str | None
    text: str


def request_access(lab: Lab, key: str, url: str, *, reasons: str, requester: str, staff_name: str = "",
                   site_content: str = "", console_url: str | None = None) -> Requested:
    """Fill in and send the access request form the block page links to, from the device."""
    console_url = console_url or lab.console_url

    def send() -> Requested:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        form_url = f"{console_url}/request?{urllib.parse.urlencode({'url': url})}"
        with opener.open(form_url, timeout=10) as response:
            form = response.read().decode("utf-8", "replace")
        match = _CSRF.search(form)
        fields = {
            "csrf_token": html.unescape(match.group(1)) if match else "",
            "requester": requester,
            "staff_name": staff_name,
            "url": url,
            "site_content": site_content,
            "reasons": reasons,
        }
        data = urllib.parse.urlencode(fields).encode()
        try:
            with opener.open(f"{console_url}/request", data=data, timeout=10) as response:
                status, page = response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            status, page = err.code, err.read().decode("utf-8", "replace")
        reference, token = _REFERENCE.search(page), _TOKEN.search(page)
        return Requested(
            status,
            html.unescape(reference.group(1)).strip() if reference else None,
            html.unescape(token.group(1)).strip() if token else None,
            page_text(page),
        )

    return netns.call_in(lab.device_namespace(key), send, timeout=30)
