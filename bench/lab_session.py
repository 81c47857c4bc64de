"""Fifteen minutes of a school day in the lab, and what the DSL would have been told.

Builds a private lab (gateway topology, the example policy, every daemon under `schoolgate run`),
lets each device browse its normal day (HTTP/3 in Chromium, a TV with a hard-coded resolver,
a pupil's own phone), then has the phone try a VPN site, DNS over HTTPS and an SNI trick
(schoolgate.lab.session). Prints the alerts the normal day raised (0 is right), the
circumvention cases for the phone (1 is right), and how long after the ban the phone was
supervised (2 s is the bound). Needs root (network namespaces); tears the lab down at the end.

Run: .venv/bin/python bench/lab_session.py [MINUTES] [--automatic]   (default 15 minutes)

--automatic runs a copy of the example policy with `[bans] on_circumvention = "automatic"`, so
the scheduler bans the phone instead of the DSL.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from schoolgate.lab.client import LabClient
from schoolgate.lab.lab import DEFAULT_CLOCK, DEFAULT_POLICY, Lab
from schoolgate.lab.session import run_session
from schoolgate.lab.topology import private_prefix
from schoolgate.store.db import make_engine, session_factory


def automatic_policy(folder: Path) -> Path:
    """The example policy with automatic bans, beside links to the files it names."""
    folder.mkdir(parents=True)
    for sibling in DEFAULT_POLICY.parent.iterdir():
        if sibling != DEFAULT_POLICY:
            (folder / sibling.name).symlink_to(sibling)
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    changed = text.replace('on_circumvention = "offer"', 'on_circumvention = "automatic"')
    if changed == text:
        raise SystemExit(f"{DEFAULT_POLICY}: no [bans] on_circumvention = \"offer\" to change")
    (folder / DEFAULT_POLICY.name).write_text(changed, encoding="utf-8")
    return folder / DEFAULT_POLICY.name


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    minutes = float(args[0]) if args else 15.0
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sg-session-") as tmp:
        policy = automatic_policy(Path(tmp) / "policy") if "--automatic" in sys.argv else DEFAULT_POLICY
        lab = Lab(private_prefix("sgb", 0, os.getpid()), state_root=Path(tmp) / "state", policy=policy)
        lab.down()
        lab.up(clock=DEFAULT_CLOCK)
        engine = make_engine(lab.database_url)
        try:
            report = run_session(LabClient(lab, session_factory(engine)), minutes, home=Path(tmp) / "homes")
        finally:
            engine.dispose()
            lab.down()
    for line in report.lines():
        print(line)
    print(f"  CPU of this driver: {report.cpu_s:.1f} s")
    ok = (not report.alerts_from_normal_day and len(report.circumvention_cases) == 1
          and report.ban_latency_s is not None and report.ban_latency_s <= 2.0)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
