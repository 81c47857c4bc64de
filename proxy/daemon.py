"""schoolgate-proxy: mitmproxy embedded in the daemon's own asyncio loop.

The master is built here (not a shelled-out mitmdump) with only the mitmproxy addons the
proxy needs and the schoolgate addons in their one order (schoolgate.proxy.addons). Beside
mitmproxy, the same loop runs:

- a once-a-second tick: policy file and database generation checked (a change applies within
  2 s; a broken policy keeps the last good one, and the error is in the stats), device register
  reloaded when its generation moves, counters written to the stats file;
- the address learner (schoolgate.proxy.addresses), every `proxy.address_refresh_s`.

Events: under `schoolgate run` (`--events-fd`) each worker hands compact events in batches to
the proxy's one event-writing process (schoolgate.proxy.events) over the store's event channel,
from the loop, every EVENTS_TICK_S or when a batch is full; allowed traffic is folded per minute
first (AllowedAggregator, flushed from the same loop). Run on its own, the proxy writes them
itself (the store's EventWriter, in a thread). Either way its counters are in `daemon_status`
(name "proxy", or "proxy.N") every second, with what it handed over or wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schoolgate.config import AppConfig
from schoolgate.policy.types import Decision
from schoolgate.proxy.upset import UpsetSigner, load_key

if TYPE_CHECKING:

    from schoolgate.policy.engine import CompiledPolicy
    from schoolgate.proxy.front import FrontDoor

log = logging.getLogger("schoolgate.proxy")

STATS_FILE = "proxy-stats.json"
# How often the loop hands its gathered events to the event-writing process (as the DNS
# workers do): a worker killed between two hand-overs loses at most this much.
EVENTS_TICK_S = 0.2
UPSET_KEY_FILE = "upset-button.key"
SWITCH_INTERVAL_S = 0.001


def ca_dir_of(config: AppConfig) -> Path:
    return Path(config.proxy.ca_dir) if config.proxy.ca_dir else config.data_dir / "ca"


def stats_path_of(config: AppConfig, worker: int = 1, workers: int = 1) -> Path:
    """The proxy's stats file; with several workers, one each (`proxy-stats.2.json`)."""
    path = Path(config.proxy.stats_file) if config.proxy.stats_file else config.data_dir / STATS_FILE
    return path if workers <= 1 else path.with_name(f"{path.stem}.{worker}{path.suffix}")


def status_name_of(worker: int, workers: int) -> str:
    """The daemon_status row: "proxy", or "proxy.1", "proxy.2"... for several workers."""
    return "proxy" if workers <= 1 else f"proxy.{worker}"


def upset_key_path_of(config: AppConfig) -> Path:
    """The key that signs the pupil block page's "this upset me" button, shared by every worker;
    beside the CA's key, in the directory only the proxy's user may read."""
    return ca_dir_of(config) / UPSET_KEY_FILE


def mode_spec(mode: str, listen: str) -> str:
    """`transparent` + `0.0.0.0:8081` -> mitmproxy's `transparent@0.0.0.0:8081`.

    `*:PORT` or `:PORT` listens on every address, IPv4 and IPv6 (mitmproxy's default host).
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"proxy.listen: {listen!r} needs a port, e.g. 0.0.0.0:8081 or *:8081")
    host = host.strip("[]")
    if mode not in ("transparent", "regular"):
        raise ValueError(f"proxy.mode: {mode!r} is not one of transparent, regular")
    if host in ("", "*"):
        return f"{mode}@{port}"
    return f"{mode}@{host}:{port}"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def watched_names(policy: CompiledPolicy | None, extra: list[str], limit: int = 4000) -> list[str]:
    """The names whose addresses mark a watched service: each catalogue service's domains and
    exact hosts (with www.), plus `proxy.watched_names`."""
    names: list[str] = [n.lower().rstrip(".") for n in extra]
    for service in policy.services if policy is not None else ():
        for domain in service.domains:
            names.extend((domain, f"www.{domain}"))
        names.extend(service.hosts)
    return list(dict.fromkeys(n for n in names if n))[:limit]


def quiet_mitmproxy_logging(master: Any) -> None:
    """Keep mitmproxy's per-connection chatter off the proxy's hot path.

    mitmproxy logs every client and server connect and disconnect at INFO, and its Master
    forwards every log record to its addons as a deprecated `add_log` event, through a
    thread-safe loop wake-up. At hundreds of connections a second that was a tenth of the
    proxy's time, for lines nobody reads: each decision is already an event in the
    database. Unless the proxy runs at DEBUG, only mitmproxy's warnings and errors are
    logged; no schoolgate addon uses `add_log`.
    """
    master._legacy_log_events.uninstall()
    if log.getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("mitmproxy.proxy.server").setLevel(logging.WARNING)


async def run(
    config: AppConfig, *, ready: Callable[[], None] | None = None, worker: int = 1, workers: int = 1,
    events: socket.socket | None = None,
) -> int:
    """Run the proxy (one of `workers`, sharing the port) until SIGTERM/SIGINT. Returns the exit status.

    Several workers share the transparent listener with SO_REUSEPORT: the kernel spreads new
    connections over the workers' sockets, and a worker that dies leaves the group at once, so
    its share goes to the others until the supervisor has restarted it. (The nftables `numgen`
    map would send each worker its share by port whether it is alive or not, and needs the
    ruleset to follow the worker count.)

    `events`: the sending end of the event channel to the proxy's event-writing process; None:
    this process writes its events itself."""
    from mitmproxy import master as mitm_master
    from mitmproxy import options as mitm_options
    from mitmproxy.addons import core, disable_h2c, errorcheck, next_layer, proxyserver, tlsconfig
    from sqlalchemy.orm import sessionmaker

    from schoolgate import ca
    from schoolgate.clock import clock_from_env
    from schoolgate.identity.neighbours import NeighbourTable
    from schoolgate.identity.resolver import IdentityResolver, RegisterReloader
    from schoolgate.live import LivePolicy
    from schoolgate.proxy.addons import Pipeline, Services, build_addons
    from schoolgate.proxy.addresses import AddressBook, AddressLearner, parse_prefix_host
    from schoolgate.proxy.allowed import AllowedPasses
    from schoolgate.proxy.clients import RecentClients
    from schoolgate.proxy.door_verdicts import DoorVerdicts
    from schoolgate.proxy.front import FrontDoor, listen_sockets
    from schoolgate.proxy.judge import NO_SNI_CLAUSE
    from schoolgate.proxy.search import is_search_engine
    from schoolgate.store.db import make_engine
    from schoolgate.store.events import AllowedAggregator, StatusTarget, make_event_writer
    from schoolgate.store.events.channel import EventChannel

    # Threads share the interpreter with the connections' loop (identity lookups, the status
    # writer, the tick's policy and register checks): a shorter switch interval bounds how long
    # a connection's wake-up waits for one of them to let go (5 ms by default), as in the DNS
    # workers.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    pconf = config.proxy
    ca_dir = ca_dir_of(config)
    ca_info = ca.check_ca(ca_dir)  # before mitmproxy could create a CA of its own
    spec = mode_spec(pconf.mode, pconf.listen)
    clock = clock_from_env()
    site = config.site.id

    engine = make_engine(config.database_url)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    live = LivePolicy.from_config(config, sessions=sessions, clock=clock)
    await asyncio.to_thread(live.load)  # no policy, no proxy: ConfigError reaches the command

    neighbours = NeighbourTable() if pconf.neighbours else None
    identity = IdentityResolver(neighbours=neighbours, now=clock.now)
    register_reloader = RegisterReloader(sessions, site, identity)
    await asyncio.to_thread(register_reloader.poll)
    clients = RecentClients(identity.resolve, lambda: identity.register)

    book = AddressBook()
    try:
        named = [parse_prefix_host(text) for text in pconf.prefix_hosts]
    except ValueError as err:
        raise ValueError(f"proxy.prefix_hosts: {err}") from err
    try:
        unnamed = [ipaddress.ip_network(p, strict=False) for p in config.network.watched_prefixes]
    except ValueError as err:
        raise ValueError(f"network.watched_prefixes: {err}") from err
    book.set_prefixes(named, unnamed)
    learner = AddressLearner(
        book, pconf.resolvers or config.dns.upstreams, lifetime_s=float(config.dns.watched_set_timeout_s)
    )

    started = clock.now()
    stats_path = stats_path_of(config, worker, workers)
    stats_path.parent.mkdir(parents=True, exist_ok=True)

    services: Services | None = None
    front: FrontDoor | None = None

    def snapshot() -> dict[str, Any]:
        assert services is not None
        return {
            "counters": services.counters.as_dict(),
            "open_connections": len(services.connections),
            "addresses_known": len(book),
            "address_lookups": learner.lookups,
            "address_lookup_failures": learner.failures,
            "policy_generation": live.generation,
            "policy_reloads": live.reloads,
            "policy_error": live.error,
            "overlay_generation": live.overlay_generation,
            "overlay_skipped": list(live.overlay_skipped[:20]),
            "register_reloads": register_reloader.reloads,
            "register_generation": register_reloader.generation,
            "hellos_judged_early": pipeline.relayed_early,
            "front": front.snapshot() if front is not None else None,
            "identity_cache_hits": clients.hits,
            "identity_cache_misses": clients.misses,
            "identity_lookups": clients.lookups,
            "identity_refreshes": clients.refreshes,
            "identity_lookups_shared": clients.shared,
            "listen": spec,
            "ca_fingerprint": ca_info.sha256_fingerprint,
            "ca_trust": services.ca_trust.snapshot(),
        }

    status = StatusTarget(
        site=site, name=status_name_of(worker, workers), interval=1.0, started_at=started, extra=snapshot
    )
    writer: Any  # the channel to the writing process, or an EventWriter: submit, stats, start, stop
    if events is not None:
        # Used from the loop only (the channel is not thread-safe): the aggregator's minutes are
        # handed over by the loop's own tick, not by its thread.
        writer = EventChannel(events, engine, status=status)
    else:
        writer = make_event_writer(engine, config, status=status)
    aggregator = AllowedAggregator(writer, clock=clock.now)
    # Passed-through allowed connections are counted per minute on the loop, and each minute's
    # count reaches the aggregator as one record (schoolgate.proxy.allowed).
    passes = AllowedPasses(aggregator.submit, site)
    writer.count_held(passes.held)

    def inspect(host: str) -> bool:
        return is_search_engine(host)

    def close_connection(conn_id: str) -> bool:
        """Close a client connection (and its server side) by its id (the front door's or
        mitmproxy's)."""
        if front is not None and front.close(conn_id):
            return True
        handler = addons.get("proxyserver").connections.get(conn_id)
        transport = handler.transports.get(handler.client) if handler is not None else None
        if transport is None or transport.handler is None:
            return False
        transport.handler.cancel("the school's policy no longer allows this connection")
        return True

    def explain(decision: Decision, now: datetime) -> str:
        from schoolgate.policy.explain import explain_text

        policy = live.policy
        return explain_text(decision, policy, now) if policy is not None else decision.reason

    def operator_of(service_id: str) -> str:
        policy = live.policy
        found = policy.service_by_id.get(service_id) if policy is not None else None
        return found.operator_id if found is not None else service_id

    def refusal_clause() -> str:  # asked on every TLS connection: nothing imported here
        policy = live.policy
        return policy.dynamic.circumvention if policy is not None else NO_SNI_CLAUSE

    def zone() -> tzinfo:
        policy = live.policy
        return policy.school.zone if policy is not None else UTC

    def category(category_id: str) -> tuple[str, str] | None:
        policy = live.policy
        found = policy.category_by_id.get(category_id) if policy is not None else None
        return (found.name, found.description) if found is not None and found.description else None

    services = Services(
        decide=live.decide,
        identify=clients.resolve,
        identify_cached=clients.cached,
        identify_shared=clients.lookup,
        book=book,
        now=clock.now,
        site=site,
        submit_full=writer.submit,
        submit_ask=writer.submit_ask,  # the channel and the in-process writer both take asks
        submit_allowed=aggregator.submit,
        fold_allowed=passes.add,
        inspect=inspect if pconf.inspect_search_engines else None,
        close=close_connection,
        explain=explain,
        operator_of=operator_of,
        policy_version=lambda: (live.generation, live.overlay_generation),
        category=category,
        upset=UpsetSigner(load_key(upset_key_path_of(config))),
        refusal_clause=refusal_clause,
        zone=zone,
    )

    opts: Any = mitm_options.Options()  # mitmproxy's option and addon APIs are untyped
    master = mitm_master.Master(opts, event_loop=asyncio.get_running_loop(), with_termlog=False)
    quiet_mitmproxy_logging(master)
    addons: Any = master.addons
    addons.add(core.Core())
    # One chain entry for all of schoolgate's addons (see Pipeline). mitmproxy's Block addon
    # is left out: it refuses clients by address class, and a school LAN may use public
    # addresses, so it was configured to refuse nothing; only the gateway's nftables rules
    # send traffic here. In the chain it still cost a call per connection.
    pipeline = Pipeline(build_addons(services), services.connections)
    addons.add(pipeline)
    addons.add(
        disable_h2c.DisableH2C(),
        proxyserver.Proxyserver(),  # type: ignore[no-untyped-call]
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
    )
    # Transparent mode: the front door (schoolgate.proxy.front) listens and judges each
    # ClientHello; mitmproxy gets only what it must intercept, handed over in-process. Its own
    # listener is on an ephemeral loopback port that nothing is redirected to (a connection
    # there has no original destination, and mitmproxy drops it).
    if workers > 1 and pconf.mode != "transparent":
        raise ValueError("proxy.workers: several workers need proxy.mode = \"transparent\"")
    front_sockets = listen_sockets(pconf.listen, reuse_port=workers > 1) if pconf.mode == "transparent" else []
    mitm_spec = "transparent@127.0.0.1:0" if front_sockets else spec
    updates: dict[str, Any] = {
        "mode": [mitm_spec],
        "connection_strategy": "lazy",  # never dial a server before the verdict
        "confdir": str(ca_dir),
        "schoolgate_school_name": config.site.name,
        "schoolgate_console_url": config.console.base_url,
    }
    if pconf.upstream_ca_file:
        updates["ssl_verify_upstream_trusted_ca"] = pconf.upstream_ca_file
    opts.update(**updates)

    writer.start()
    if events is None:
        aggregator.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, master.shutdown)

    async def tick_loop() -> None:
        while True:
            try:
                await asyncio.to_thread(live.check)
                await asyncio.to_thread(register_reloader.poll)
                if neighbours is not None:
                    # Keep the MAC map current, so a new device's first connection is named.
                    await asyncio.to_thread(neighbours.refresh)
            except Exception:  # the database may be briefly locked or gone; keep filtering
                log.exception("policy/register refresh failed; keeping the current ones")
            try:
                write_json_atomic(stats_path, {"updated": clock.now().isoformat(), **snapshot()})
            except OSError as err:
                log.warning("cannot write %s: %s", stats_path, err)
            await asyncio.sleep(1.0)

    async def learn_loop() -> None:
        while True:
            names = watched_names(live.policy, list(pconf.watched_names))
            try:
                learnt = await learner.refresh(names)
                log.debug("address book: %d addresses from %d names", learnt, len(names))
            except Exception:
                log.exception("address refresh failed")
            await asyncio.sleep(max(5.0, float(pconf.address_refresh_s)))

    async def announce() -> None:
        nonlocal front
        ps = addons.get("proxyserver")
        while not ps.listen_addrs():
            await asyncio.sleep(0.05)
        if front_sockets:
            instance = next(iter(ps.servers))
            front = FrontDoor(pipeline, instance.handle_stream, opts, instance.mode, verdicts=DoorVerdicts(services))
            front.start(front_sockets)
            listening = front.listen_addrs()
        else:
            listening = ps.listen_addrs()
        log.info("schoolgate proxy listening on %s (%s)", listening, spec)
        if ready is not None:
            ready()

    async def hand_over_loop() -> None:
        """The events gathered on the loop, to the writing process (never blocks)."""
        while True:
            await asyncio.sleep(EVENTS_TICK_S)
            passes.flush_due(clock.now())
            aggregator.flush_due()
            writer.flush()

    async def passes_loop() -> None:
        """The passed-through connections' minutes, to the aggregator (whose own thread writes)."""
        while True:
            await asyncio.sleep(EVENTS_TICK_S)
            passes.flush_due(clock.now())

    tasks = [
        asyncio.create_task(tick_loop(), name="proxy-tick"),
        asyncio.create_task(learn_loop(), name="proxy-learn"),
        asyncio.create_task(announce(), name="proxy-announce"),
    ]
    if events is not None:
        tasks.append(asyncio.create_task(hand_over_loop(), name="proxy-events"))
    else:
        tasks.append(asyncio.create_task(passes_loop(), name="proxy-passes"))
    try:
        await master.run()
    finally:
        if front is not None:
            front.stop()
        for sock in front_sockets:
            sock.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        passes.flush_all()  # on the loop's thread, like every other submit
        if events is not None:
            aggregator.flush_all()
            stopped = writer.stop()
            log.info("stopped; events handed to the writing process %s, dropped %s",
                     stopped.get("handed"), stopped.get("dropped"))
        else:
            aggregator.stop()
            writer.stop()
        with contextlib.suppress(OSError):
            write_json_atomic(stats_path, {"updated": clock.now().isoformat(), "stopped": True, **snapshot()})
        engine.dispose()
    return 0
