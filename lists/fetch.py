"""Downloading a subscription: conditional, bounded in size and time, optionally pinned.

- Conditional: the ETag and Last-Modified of the version in force go out as If-None-Match and
  If-Modified-Since; a 304 means nothing to download.
- Bounded: a Content-Length over the cap is refused before reading, and the body is counted as
  it arrives, so a server that lies about its length is cut off at the cap too. `timeout_s` is
  the deadline for the whole download; a server that goes silent is given up after a third of
  it (at most 30 seconds) at any point, so the whole is bounded by about 1.3 x timeout_s.
- Pinned: with `sha256` set, a body with any other digest is refused.

The body goes to a temporary file in the folder given, never into memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from schoolgate import __version__

USER_AGENT = f"schoolgate/{__version__} (list updates)"
_CHUNK = 1 << 16


class FetchError(RuntimeError):
    """The download failed; the message says why in words for a technician."""


@dataclass(frozen=True)
class Fetched:
    not_modified: bool
    path: Path | None  # the body, in a temporary file the caller moves or removes
    etag: str | None
    last_modified: str | None
    sha256: str | None
    size: int
    url: str  # after redirects


def silence_limit(timeout_s: float) -> float:
    return max(1.0, min(30.0, timeout_s / 3))


def fetch(
    url: str,
    folder: Path,
    *,
    max_bytes: int,
    timeout_s: float,
    etag: str | None = None,
    last_modified: str | None = None,
    sha256: str | None = None,
) -> Fetched:
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (http and https only: checked in the policy)
    deadline = time.monotonic() + timeout_s
    try:
        response = urllib.request.urlopen(request, timeout=silence_limit(timeout_s))  # noqa: S310
    except urllib.error.HTTPError as err:
        if err.code == 304:
            return Fetched(True, None, etag, last_modified, None, 0, url)
        raise FetchError(f"the server answered HTTP {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, TimeoutError):
            raise FetchError(f"no answer from the server within {silence_limit(timeout_s):.0f} s") from err
        raise FetchError(f"cannot reach the server: {reason}") from err
    except TimeoutError as err:
        raise FetchError(f"no answer from the server within {silence_limit(timeout_s):.0f} s") from err
    except OSError as err:
        raise FetchError(f"cannot reach the server: {err}") from err
    with response:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise FetchError(
                f"the download is {int(length)} bytes, more than the {max_bytes} bytes allowed (max_size_mb)"
            )
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".download.", dir=folder)
        path = Path(name)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(handle, "wb") as out:
                while True:
                    if time.monotonic() > deadline:
                        raise FetchError(f"the download took longer than {timeout_s:.0f} s (timeout_s)")
                    try:
                        block = response.read(_CHUNK)
                    except TimeoutError as err:
                        raise FetchError(
                            f"the server stopped sending for {silence_limit(timeout_s):.0f} s"
                        ) from err
                    except OSError as err:
                        raise FetchError(f"the download broke off: {err}") from err
                    if not block:
                        break
                    size += len(block)
                    if size > max_bytes:
                        raise FetchError(f"the download is more than the {max_bytes} bytes allowed (max_size_mb)")
                    digest.update(block)
                    out.write(block)
            if length is not None and length.isdigit() and size != int(length):
                raise FetchError(f"the download ended after {size} of {length} bytes")
            hexdigest = digest.hexdigest()
            if sha256 is not None and hexdigest != sha256:
                raise FetchError(f"the download's SHA-256 is {hexdigest}, not the pinned {sha256}")
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        return Fetched(
            False,
            path,
            response.headers.get("ETag"),
            response.headers.get("Last-Modified"),
            hexdigest,
            size,
            response.geturl(),
        )
