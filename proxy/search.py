"""Search terms from search-engine URLs, for the DSL's safeguarding review.

Only requests the proxy can read (plain HTTP, or HTTPS it intercepts) reach this; the term
is stored as text and never rendered as HTML (it is whatever a pupil typed).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

MAX_TERM = 500  # a longer "term" is a pasted document; keep the start

# (engine, path prefixes, query parameter). An empty prefix tuple: any path.
_ENGINES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("google", ("/search", "/webhp", "/complete/search", "/images"), "q"),
    ("bing.com", ("/search", "/images/search", "/videos/search", "/news/search", "/AS/Suggestions"), "q"),
    ("youtube.com", ("/results", "/search"), "search_query"),
    ("youtube.com", ("/complete/search",), "q"),
    ("duckduckgo.com", (), "q"),
)


def _is_google(host: str) -> bool:
    """google.<TLD> and www./m. prefixed forms: google.com, www.google.co.uk, m.google.fr."""
    labels = host.split(".")
    if labels and labels[0] in ("www", "m"):
        labels = labels[1:]
    if not labels or labels[0] != "google":
        return False
    if len(labels) == 2:  # google.com, google.de
        return True
    # google.co.uk, google.com.au: a second-level label under a two-letter country code
    return len(labels) == 3 and labels[1] in ("co", "com") and len(labels[2]) == 2


def _engine_param(host: str, path: str) -> str | None:
    host = host.lower().rstrip(".")
    for engine, paths, param in _ENGINES:
        matched = _is_google(host) if engine == "google" else (host == engine or host.endswith("." + engine))
        if matched and (not paths or any(path == p or path.startswith(p + "/") for p in paths)):
            return param
    return None


def search_term(host: str, url: str) -> str | None:
    """The search term in `url` if `host` is a search engine we know, else None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    param = _engine_param(host, parts.path or "/")
    if param is None:
        return None
    for key, value in parse_qsl(parts.query, keep_blank_values=False):
        if key == param:
            term = " ".join(value.split())  # collapse whitespace and control characters
            return term[:MAX_TERM] or None
    return None


def is_search_engine(host: str) -> bool:
    """A host whose requests can carry search terms (used to decide what to inspect)."""
    host = host.lower().rstrip(".")
    return _is_google(host) or any(
        host == engine or host.endswith("." + engine) for engine, _paths, _param in _ENGINES if engine != "google"
    )
