"""CPU per query through the DNS worker's resolver chain, without sockets, and what logging costs.

    .venv/bin/python -P bench/dns_path.py [--queries 50000] [--repeat 5] [--profile blocked]

Builds the chain as a worker does (schoolgate.dns.resolver.build_resolver) over the example policy
plus a generated 200,000-name blocklist, with a pupil client, and times ready-made query packets
answered as a worker's UDP listener answers them: the fast path first, taken once per wake-up of
64 datagrams (schoolgate.dns.fastpath: blocked names and cache hits; "fast path answered" says
how many it took), the chain for what it declines, by the thread's CPU time, best of --repeat
short runs (the least disturbed by other work):

  blocked      a listed name, a different one each query (the policy's cold path)
  blocked-hot  one of 500 listed names (the policy's caches warm, as in a school)
  cached       one of 2,000 allowed names already in the answer cache
  special      use-application-dns.net (answered by the chain itself)

Each load runs with three sinks for the events stage, taking turns:

  handed over  what a DNS worker does: an EventChannel (schoolgate.store.events.channel) sends
               the compact events in batches to an event-writing process forked here, which
               writes them to SQLite as the daemon's writer does; the batches' encoding and
               sending is timed in the measured thread (`flush` after each run)
  in-process   the daemon's own EventWriter in the measured thread, as a worker did before the
               event writer had a process of its own: its thread is not started, and the measured
               thread writes the queued events after each run (`flush`)
  not logged   a sink that keeps nothing

The difference from "not logged" is what logging costs the worker per query (goal: at most
5 µs). The event-writing process's CPU per event (its rusage over the events it was handed) is
printed too: that work is off the worker, on another process (and core).
No socket is read or written: add the kernel's cost of a datagram in and out (bench/dns measures
the whole thing against dnsmasq).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import gc
import os
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.rrset

from schoolgate.clock import SystemClock
from schoolgate.config import load_config
from schoolgate.dns.cache import AnswerCache
from schoolgate.dns.chain import Stage
from schoolgate.dns.daemon import WRITER_BATCH_ROWS, WRITER_GATHER_S, WRITER_SQLITE_CACHE_KIB, settle_collector
from schoolgate.dns.resolver import build_resolver
from schoolgate.dns.server import READ_BATCH, QueryHandler
from schoolgate.dns.stages.watch import WatchedFeeder
from schoolgate.dns.upstream import UpstreamPool
from schoolgate.dns.wire import Query
from schoolgate.dns.wire import parse_query as parse
from schoolgate.gateway.sets import MemoryWatchedSets
from schoolgate.identity.resolver import IdentityResolver
from schoolgate.live import LivePolicy
from schoolgate.store.db import init_db
from schoolgate.store.events import EventWriter, make_event_writer
from schoolgate.store.events.channel import EventChannel, channel_pair, receive_events

REPO = Path(__file__).resolve().parent.parent
LISTED = 200_000


def listed(i: int) -> str:
    return f"ads{i}.track-{i % 9973}.com"


def write_appliance(folder: Path) -> Path:
    (folder / "blocklist.txt").write_text("".join(f"{listed(i)}\n" for i in range(LISTED)), encoding="utf-8")
    shutil.copytree(REPO / "deploy" / "lists", folder / "lists", dirs_exist_ok=True)
    example = (REPO / "deploy" / "policy.example.toml").read_text(encoding="utf-8")
    (folder / "policy.toml").write_text(example + """
[categories.bench_adverts]
name = "Advertising and tracking (benchmark list)"

[lists.bench_blocklist]
name = "Benchmark blocklist"
file = "blocklist.txt"
format = "plain"
category = "bench_adverts"

[[rules]]
id = "bench-blocklist"
clause = "Online Safety Policy (filtering)"
reason = "advertising and tracking"
action = "block"
lists = ["bench_blocklist"]

[[networks]]
name = "benchmark clients"
cidrs = ["127.0.0.0/8"]
role = "pupil"
""", encoding="utf-8")
    config = folder / "schoolgate.toml"
    config.write_text('policy = "policy.toml"\ndata_dir = "var"\n\n[site]\nid = "bench"\n\n[dns]\ncache_size = 50000\n',
                      encoding="utf-8")
    return config


class Upstream(Stage):
    """Answers every name with one A record (TTL 1 hour), at once: fills the cache."""

    def resolve(self, query: Query) -> bytes:
        message = dns.message.make_response(dns.message.from_wire(query.raw))
        message.answer.append(dns.rrset.from_text(query.qname + ".", 3600, "IN", "A", "198.51.100.7"))
        return message.to_wire()


class NullSink:
    """Keeps nothing: what the chain costs without logging."""

    def submit(self, record: Any) -> bool:
        return True

    def submit_compact(self, event: Any) -> bool:
        return True

    def flush(self) -> bool:
        return True


def fork_event_writer(database: Path) -> tuple[EventChannel, int]:
    """(the worker's channel, the pid of a process writing what it hands over to `database`)."""
    engine = init_db(f"sqlite:///{database}")
    engine.dispose()
    sending, reading = channel_pair()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            sending.close()
            gc.freeze()  # as the daemon's writer inherits its supervisor's heap: never walked
            from schoolgate.store.db import make_engine

            # The daemon's event-writing process's batch size, page cache and bursts, so its CPU
            # per event is the daemon's.
            writer = EventWriter(
                make_engine(f"sqlite:///{database}", sqlite_cache_kib=WRITER_SQLITE_CACHE_KIB),
                max_queue=10_000_000, batch_size=WRITER_BATCH_ROWS,
            )
            writer.start()
            for _ in receive_events(reading, writer.submit_many, stop_after=lambda: None,
                                    gather=WRITER_GATHER_S, gathered=writer.write_now,
                                    max_gathered=WRITER_BATCH_ROWS):
                pass
            stats = writer.stop(timeout=600)
            print(f"event-writing process: {stats['written']:,} written, {stats['dropped']} dropped")
            code = 0
        finally:
            sys.stdout.flush()
            os._exit(code)
    reading.close()
    # Waits as long as the writing process needs: the worker loses nothing in the benchmark.
    return EventChannel(sending, max_waiting=10_000_000), pid


def wire(name: str) -> bytes:
    return dns.message.make_query(name, "A").to_wire()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--profile", choices=("blocked", "blocked-hot", "cached", "special"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sg-bench-path-"))
    os.chdir(folder)
    try:
        config = load_config(write_appliance(folder))
        started = time.process_time()
        live = LivePolicy.from_config(config)
        live.load()
        print(f"policy with {LISTED:,} listed names compiled in {time.process_time() - started:.1f} s CPU")
        engine = init_db(f"sqlite:///{folder / 'events.db'}")
        # Not started: the measured thread writes the queue itself (flush), so the writer's
        # work is counted as the daemon's.
        writer = make_event_writer(engine, config, max_queue=4 * args.queries)
        channel, writer_pid = fork_event_writer(folder / "handed-over.db")
        resolver = build_resolver(
            policy=live, clock=SystemClock(), pool=UpstreamPool(["127.0.0.1:9"]), cache=AnswerCache(50_000),
            sink=writer, site="bench", feeder=WatchedFeeder(MemoryWatchedSets(), 600),
            identities=IdentityResolver(), own_names=["schoolgate.lan"],
        )
        resolver.cache.next.next = Upstream()  # type: ignore[union-attr]
        # As a worker answers: the fast path first, the chain for what it declines.
        handler = QueryHandler(resolver.head, resolver.fast.answer)
        rng = random.Random(1)
        allowed = [f"site{i}.allowed-example.org" for i in range(2000)]

        async def fill() -> None:
            for name in allowed:
                result = handler.handle(wire(name), "127.0.0.1", False)
                if result is not None and not isinstance(result, bytes):
                    await result

        asyncio.run(fill())
        # The collector as a worker runs it (its policy out of the collector's sight): without
        # this, full collections walking the million-name policy are charged to the queries.
        settle_collector()
        hot = [listed(rng.randrange(LISTED)) for _ in range(500)]
        # Cold names: each run takes names no earlier run asked for (the policy's caches hold
        # at most a few tens of thousands), so "best of" never measures a warm cache.
        unseen = list(range(LISTED))
        rng.shuffle(unseen)

        def cold() -> list[bytes]:
            if len(unseen) < args.queries:
                unseen.extend(rng.sample(range(LISTED), LISTED))
            return [wire(listed(unseen.pop())) for _ in range(args.queries)]

        fixed = {
            "blocked-hot": [wire(rng.choice(hot)) for _ in range(args.queries)],
            "cached": [wire(rng.choice(allowed)) for _ in range(args.queries)],
            "special": [wire("use-application-dns.net") for _ in range(args.queries)],
        }
        loads: dict[str, Callable[[], list[bytes]]] = {"blocked": cold}
        loads.update({name: (lambda packets=packets: packets) for name, packets in fixed.items()})

        def run(packets: list[bytes]) -> float:
            # As the UDP listener answers: the fast path taken once per wake-up of READ_BATCH
            # datagrams (one clock reading, policy and identity for them), the chain for what
            # it declines.
            through_chain = handler.through_chain
            drain = resolver.fast.drain
            sink = resolver.events.sink
            begun = time.thread_time()
            for start in range(0, len(packets), READ_BATCH):
                fast = drain()
                for packet in packets[start:start + READ_BATCH]:
                    if fast(packet, "127.0.0.1") is None:
                        through_chain(packet, "127.0.0.1", False)
            sink.flush()  # the writer's share: rows built and inserted
            return (time.thread_time() - begun) / len(packets) * 1e6

        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(run, loads[args.profile]())
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return 0
        print(f"µs of CPU per query (best of {args.repeat}), {args.queries:,} queries each, load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        # The two sinks take turns, run after run, so that a busy spell of the machine hits both.
        results: dict[str, dict[str, float]] = {"handed over": {}, "in-process": {}, "not logged": {}}
        sinks = (("handed over", channel), ("in-process", writer), ("not logged", NullSink()))
        for name, make in loads.items():
            for _ in range(args.repeat):
                for label, sink in sinks:
                    resolver.events.set_sink(sink)
                    spent = run(make())
                    results[label][name] = min(results[label].get(name, spent), spent)
        print(f"  {'load':<14} {'handed over':>11} {'in-process':>11} {'not logged':>11}   "
              "logging: handed over, in-process")
        for name in loads:
            handed, inline, without = (results[label][name] for label in ("handed over", "in-process", "not logged"))
            print(f"  {name:<14} {handed:11.2f} {inline:11.2f} {without:11.2f}   "
                  f"{handed - without:8.2f} {inline - without:8.2f}")
        print(f"fast path answered {resolver.fast.answered:,}")
        stats = writer.stats()
        print(f"events written: {stats.get('written'):,}, dropped: {stats.get('dropped')}")
        # The logging alone: the events stage's work for one answered blocked query, and the
        # writer's share (the row built and inserted), against a sink that keeps nothing.
        decided = [parse(packet) for packet in loads["blocked"]()[:1000]]
        for query in decided:
            query.client_ip = "127.0.0.1"
            resolver.head.resolve(query)  # decided and answered: query.decision is set
        # Ten copies of each, given fresh times before every run (outside the timing): a
        # daemon's events come in time order, and the same instants logged again and again
        # would be inserted into the middle of every index on the time, which made the
        # writing process's figure two to three times what the daemon's writer spends.
        samples = [copy.copy(query) for _ in range(10) for query in decided]
        log_one = resolver.events._log  # what the stage runs once the answer is ready

        def logging_cost(sink: Any) -> tuple[float, float]:
            """(handing over, writing): µs of CPU per event, best of many short runs."""
            resolver.events.set_sink(sink)
            best_hand, best_write = float("inf"), float("inf")
            for _ in range(args.repeat * 4):
                now = time.time()
                for i, query in enumerate(samples):
                    query.ts = now + i * 1e-6
                begun = time.thread_time()
                for query in samples:
                    log_one(query)
                handed = time.thread_time()
                sink.flush()
                written = time.thread_time()
                events = len(samples)
                best_hand = min(best_hand, (handed - begun) / events * 1e6)
                best_write = min(best_write, (written - handed) / events * 1e6)
            return best_hand, best_write

        (hand, send), (hand_inline, write) = logging_cost(channel), logging_cost(writer)
        hand_null, _ = logging_cost(NullSink())
        print(f"logging a blocked query, µs of CPU in the worker: {hand + send:.2f} handed over (encoding and "
              "sending every full batch of 128 included; goal: at most 5), against "
              f"{hand_inline + write:.2f} with the writer in the worker ({hand_inline:.2f} + {write:.2f} to make "
              f"and insert its row); {hand_null:.2f} with a sink that keeps nothing")
        channel.stop(timeout=600)
        handed_total = channel.stats()["handed"]
        channel_sock = channel._sock
        channel_sock.close()  # the writing process sees the end of its stream, writes the rest, ends
        _, status, usage = os.wait4(writer_pid, 0)
        writer_cpu = usage.ru_utime + usage.ru_stime
        print(f"the event-writing process: {writer_cpu / max(1, handed_total) * 1e6:.2f} µs of CPU per event "
              f"({handed_total:,} events; exit status {os.waitstatus_to_exitcode(status)})")
        return 0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
