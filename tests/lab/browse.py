"""Drive Chromium on a lab device: run as `ip netns exec <device> python browse.py SPEC.json`.

The tests cannot drive a browser in another network namespace from their own process, so they
write what to do into a JSON file and run this script inside the device's namespace. It prints
one JSON object: for each step, when it finished, the page's URL, HTTP status, visible text and
HTML.

SPEC: {"home": dir (its .pki/nssdb holds the CAs the device trusts), "viewport": [w, h] or null,
       "steps": [["goto", url] | ["click", selector] | ["fill", selector, text]
                 | ["wait_text", selector, [text, ...], timeout_ms]]}

`wait_text` waits, in real time, until the element's text holds one of the texts: what a
page's own script writes when it is done (headless Chromium's --virtual-time-budget would run
the script's timers without the time passing that the script waits for).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def main(spec_path: str) -> int:
    from playwright.sync_api import sync_playwright

    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    os.environ["HOME"] = spec["home"]  # Chromium reads the device's trusted CAs from $HOME/.pki/nssdb
    results: list[dict[str, Any]] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
            env={**os.environ, "HOME": spec["home"]},
        )
        context = browser.new_context(
            viewport={"width": spec["viewport"][0], "height": spec["viewport"][1]} if spec.get("viewport") else None,
        )
        page = context.new_page()
        csp: list[str] = []
        page.on("console", lambda m: csp.append(m.text) if "Content Security Policy" in m.text else None)
        for step in spec["steps"]:
            status = None
            error = None
            try:
                if step[0] == "goto":
                    response = page.goto(step[1], timeout=20_000)
                    status = response.status if response is not None else None
                elif step[0] == "click":
                    with page.expect_navigation(timeout=20_000) as navigation:
                        page.click(step[1], timeout=10_000)
                    response = navigation.value
                    status = response.status if response is not None else None
                elif step[0] == "fill":
                    page.fill(step[1], step[2], timeout=10_000)
                elif step[0] == "wait_text":
                    page.wait_for_function(
                        "([selector, texts]) => { const e = document.querySelector(selector);"
                        " return !!e && texts.some((t) => e.textContent.includes(t)); }",
                        arg=[step[1], step[2]], timeout=step[3],
                    )
                else:
                    raise ValueError(f"unknown step {step[0]!r}")
            except Exception as err:  # reported to the test, which decides
                error = f"{type(err).__name__}: {err}"
            results.append({
                "step": step,
                "done_at": time.time(),  # the wall clock when the step finished, for timing what follows
                "url": page.url,
                "status": status,
                "error": error,
                "text": page.inner_text("body") if error is None else "",
                "html": page.content() if error is None else "",
            })
        browser.close()
    print(json.dumps({"results": results, "csp_violations": csp}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
