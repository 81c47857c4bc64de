"""One school's appliance, as far as the event log goes: a process feeding the real EventWriter.

Run by tests/trust as a subprocess (one per site):

    python producer.py URL SITE DATA_DIR RATE MAX_EVENTS STOP_FILE RESULT_FILE

It submits blocked-access events at RATE per second (a bounded loop: MAX_EVENTS at most)
until STOP_FILE exists, stops the writer, and writes the writer's counters and its uid prefix
to RESULT_FILE as JSON. The writer comes from ``make_event_writer`` with the appliance's data
directory, exactly as the daemons make it.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

from schoolgate.store.db import make_engine
from schoolgate.store.events import EventRecord, StatusTarget, make_event_writer


def main(argv: list[str]) -> int:
    url, site, data_dir, rate_text, max_text, stop_file, result_file = argv
    rate, max_events = float(rate_text), int(max_text)
    engine = make_engine(url)
    config = SimpleNamespace(data_dir=Path(data_dir), site=SimpleNamespace(id=site))
    writer = make_event_writer(engine, config, status=StatusTarget(site=site, name="producer", interval=1.0))
    writer.start()
    stop = Path(stop_file)
    started = time.monotonic()
    submitted = refused = 0
    slowest_submit = 0.0
    while submitted < max_events and not stop.exists():
        due = started + submitted / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        record = EventRecord(
            ts=datetime.now(UTC),
            site=site,
            source="dns",
            client_ip=f"10.{submitted % 200}.0.{submitted % 250 + 1}",
            host=f"blocked{submitted % 997}.example",
            verdict="block",
            rule_id="social-media",
            role="pupil",
            qtype="A",
        )
        before = time.perf_counter()
        if not writer.submit(record):
            refused += 1
        slowest_submit = max(slowest_submit, time.perf_counter() - before)
        submitted += 1
    stats = writer.stop(timeout=60)
    engine.dispose()
    result = {
        "site": site,
        "uid_prefix": writer.uid_prefix,
        "submit_calls": submitted,
        "refused": refused,
        "slowest_submit_s": slowest_submit,
        "stats": stats,
    }
    Path(result_file).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
