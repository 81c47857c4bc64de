"""Kills at the front door (judged there, or remembered from this minute) and passes there: real sockets on
loopback, the real addons, policy and event writer, each sequence of connections run with them
and without them (the whole way) and compared."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from mitmproxy import options
from mitmproxy.proxy.mode_specs import ProxyMode
from proxy_testkit import FACEBOOK_IP, PUPIL, SITE, STAFF, TRUSTED_PUPIL, SettableClock, client_hello_bytes, events
from sqlalchemy.orm import Session, sessionmaker

from schoolgate.policy.types import Client, Decision, Role, Target, Verdict
from schoolgate.proxy.addons import EventLog, Pipeline, Rejudge, Services, build_addons
from schoolgate.proxy.allowed import AllowedPasses
from schoolgate.proxy.door_verdicts import DoorPass, DoorVerdicts, Moment
from schoolgate.proxy.front import FrontDoor, listen_sockets
from schoolgate.proxy.judge import Action, Judgement
from schoolgate.proxy.relay import new_event_loop
from schoolgate.store.events import EventWriter

LOOPBACK = "127.0.0.1"
MODE = ProxyMode.parse("transparent")
# What an event is, but its row id, its uid and the instant it was stamped with.
EVENT_FIELDS = ("source", "client_ip", "host", "verdict", "rule_id", "role", "mac", "device_id", "device_name",
                "person_id", "person_name", "qtype", "url", "search_term", "clause", "service", "category",
                "flags", "identity_source", "site")


class Version:
    """The policy version the services report (a reload or an overlay change moves it)."""

    def __init__(self) -> None:
        self.value = 1

    def __call__(self) -> object:
        return (self.value, 0)


@pytest.fixture
def version() -> Version:
    return Version()


@pytest.fixture
def remembering(services: Services, known_clients: dict[str, Client], version: Version, writer: EventWriter
                ) -> Services:
    """The services as the daemon wires them: a recent identity on the loop, a policy version,
    and events handed to the writer as asks."""
    services.identify_cached = lambda ip: known_clients.get(ip, Client(ip=ip))
    services.policy_version = version
    services.submit_ask = writer.submit_ask
    return services


Step = tuple[Client, str | None, tuple[str, int] | None]  # who connects, the SNI, where to (None: the origin)
Between = Callable[[int], None]  # run before each connection, given its index


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The origin a passthrough reaches: it sends back what it is sent."""
    while chunk := await reader.read(65536):
        writer.write(chunk)
    writer.close()


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """mitmproxy's side (the block page): these tests hand it nothing to serve."""
    writer.close()


def started_door(services: Services, destination: Callable[[Any], tuple[str, int]], *, remember: bool) -> FrontDoor:
    """A front door on loopback with the real addons, with or without its verdicts at the door."""
    door = FrontDoor(
        Pipeline(build_addons(services), services.connections), refuse, options.Options(), MODE,
        destination=destination, verdicts=DoorVerdicts(services) if remember else None,
    )
    door.start(listen_sockets(f"{LOOPBACK}:0", reuse_port=False))
    return door


def run_steps(services: Services, known: dict[str, Client], steps: list[Step], *, remember: bool,
              between: Between | None = None) -> dict[str, Any]:
    """Each step's connection, one after the other, through a front door with or without the
    table of kills; what the front door and the counters said at the end."""

    async def main() -> dict[str, Any]:
        origin = await asyncio.start_server(echo, LOOPBACK, 0)
        origin_address = (LOOPBACK, int(origin.sockets[0].getsockname()[1]))
        targets: list[tuple[str, int]] = []
        door = started_door(services, lambda _sock: targets[-1], remember=remember)
        port = int(door.listen_addrs()[0][1])
        try:
            for index, (who, sni, target) in enumerate(steps):
                if between is not None:
                    between(index)
                known[LOOPBACK] = dataclasses.replace(who, ip=LOOPBACK)  # the register says who is there
                targets.append(target or origin_address)
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                writer.write(client_hello_bytes(sni))
                await writer.drain()
                writer.write_eof()
                with contextlib.suppress(ConnectionResetError):  # a kill may reset the connection
                    await asyncio.wait_for(reader.read(), timeout=30)
                writer.close()
                await asyncio.wait_for(ended(door), timeout=30)  # the front door's side is done
            return {"front": door.snapshot(), "counters": services.counters.as_dict()}
        finally:
            door.stop()
            origin.close()

    async def ended(door: FrontDoor) -> None:
        while len(services.connections) or door.snapshot()["splices_open"]:
            await asyncio.sleep(0.005)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main())


def logged(sessions: sessionmaker[Session], writer: EventWriter) -> list[tuple[Any, ...]]:
    """Each attempt's event. The writer folds a repeated event handed over as an ask into the
    row of the first (its `count`), as it does for every event that comes through the daemon's
    channel. A row of count n stands for n attempts here."""
    return [
        tuple(getattr(e, name) for name in EVENT_FIELDS)
        for e in events(sessions, writer)
        for _ in range(e.count)
    ]


KILL = (FACEBOOK_IP, 443)
CASES: dict[str, tuple[list[Step], int, int]] = {
    # steps; how many the front door judged and killed itself, and how many it killed from memory
    "a pupil retrying Facebook": ([(PUPIL, "www.facebook.com", KILL)] * 4, 1, 3),
    "the SNI's case does not matter to the verdict, only to the key": (
        [(PUPIL, "www.facebook.com", KILL), (PUPIL, "WWW.Facebook.com", KILL), (PUPIL, "www.facebook.com", KILL)],
        2, 1),
    "another address is another connection": (
        [(PUPIL, "www.facebook.com", KILL), (PUPIL, "www.facebook.com", ("203.0.113.7", 443)),
         (PUPIL, "www.facebook.com", KILL), (PUPIL, "www.facebook.com", ("203.0.113.7", 443))], 2, 2),
    "passthroughs are judged and spliced at the door": ([(STAFF, "allowed.test", None)] * 3, 0, 0),
    "a pupil's allowed site, then a blocked one, then the allowed one again": (
        [(PUPIL, "allowed.test", None), (PUPIL, "www.facebook.com", KILL), (PUPIL, "allowed.test", None),
         (PUPIL, "www.facebook.com", KILL)], 1, 1),
    "no SNI: the address book has a say": ([(PUPIL, None, KILL)] * 3, 0, 0),
    "fronting: the address book has a say": ([(PUPIL, "allowed.test", KILL)] * 3, 0, 0),
    "the block page is mitmproxy's, not a kill": ([(TRUSTED_PUPIL, "www.facebook.com", KILL)] * 2, 0, 0),
    "the device changes hands: judged again": (
        [(PUPIL, "www.facebook.com", KILL), (PUPIL, "www.facebook.com", KILL),
         (dataclasses.replace(PUPIL, person_id="p9", person_name="Pupil Nine"), "www.facebook.com", KILL),
         (STAFF, "www.facebook.com", KILL)], 2, 1),
}


@pytest.mark.parametrize("passes", ["each pass a row", "passes folded per minute, as the daemon does"])
@pytest.mark.parametrize("case", list(CASES))
def test_the_front_door_kills_and_passes_exactly_as_the_whole_way_does(
    case: str, passes: str, remembering: Services, known_clients: dict[str, Client],
    sessions: sessionmaker[Session], writer: EventWriter,
) -> None:
    steps, judged, from_memory = CASES[case]
    folds = AllowedPasses(writer.submit, SITE)
    if passes != "each pass a row":
        remembering.fold_allowed = folds.add
    whole_way = run_steps(remembering, known_clients, steps, remember=False)
    folds.flush_all()
    whole_events = logged(sessions, writer)
    remembering.counters = type(remembering.counters)()
    at_the_door = run_steps(remembering, known_clients, steps, remember=True)
    folds.flush_all()
    door_events = logged(sessions, writer)[len(whole_events):]
    assert (at_the_door["front"].pop("killed_judged_at_door"), at_the_door["front"].pop("killed_from_memory")) == (
        judged, from_memory)
    assert (whole_way["front"].pop("killed_judged_at_door"), whole_way["front"].pop("killed_from_memory")) == (0, 0)
    passes = at_the_door["counters"]["passed_through"]
    assert (at_the_door["front"].pop("passed_at_door"), whole_way["front"].pop("passed_at_door")) == (passes, 0)
    assert at_the_door == whole_way
    assert door_events == whole_events
    assert len(whole_events) >= len([s for s in steps if s[2] == KILL and not s[0].trusts_school_ca])


@pytest.mark.parametrize(
    ("change", "from_memory"),
    [
        ("nothing", 3),
        ("the policy is reloaded", 2),  # the repeat after the reload is judged again, then remembered
        ("the minute turns", 2),
    ],
)
def test_a_reload_or_a_new_minute_has_the_next_repeat_judged_again(
    change: str, from_memory: int, remembering: Services, known_clients: dict[str, Client], version: Version,
    clock: SettableClock, sessions: sessionmaker[Session], writer: EventWriter,
) -> None:
    def between(index: int) -> None:
        if index == 2 and change == "the policy is reloaded":
            version.value += 1
        if index == 2 and change == "the minute turns":
            clock.instant += timedelta(seconds=60)

    result = run_steps(remembering, known_clients, [(PUPIL, "www.facebook.com", KILL)] * 4, remember=True,
                       between=between)
    assert result["front"]["killed_from_memory"] == from_memory
    assert result["front"]["killed_judged_at_door"] == 4 - from_memory
    assert result["front"]["killed"] == 4
    assert sum(e.count for e in events(sessions, writer)) == 4


def blocking(until: datetime | None = None) -> Callable[[Client, Target, datetime], Decision]:
    """A decide that blocks every name (for a ban, say), until `until`."""

    def decide(client: Client, target: Target, now: datetime) -> Decision:
        return Decision(verdict=Verdict.BLOCK, rule_id="ban", clause="§1", reason="banned", role=Role.PUPIL,
                        valid_until=until)

    return decide


def test_a_kill_is_not_replayed_past_its_decisions_end(remembering: Services, clock: SettableClock) -> None:
    """An exception or a ban can end mid-minute (`valid_until`): a repeat after that is judged again."""
    pupil = dataclasses.replace(PUPIL, ip=LOOPBACK)
    recent = {LOOPBACK: pupil}  # the identities seen lately
    remembering.identify_cached = recent.get
    remembering.decide = blocking(until=clock.instant + timedelta(seconds=20))
    table = DoorVerdicts(remembering)
    start = clock.instant.timestamp()
    moment = Moment(start, remembering.policy_version())  # type: ignore[misc]
    peer, destination = (LOOPBACK, 50000), ("203.0.113.9", 443)
    assert table.judge(moment, peer, "game.test", destination) is not None
    assert (table.judged, table.replayed, len(table)) == (1, 0, 1)
    assert table.judge(Moment(start + 19, moment.version), peer, "game.test", destination) is not None
    assert (table.judged, table.replayed) == (1, 1)
    assert table.judge(Moment(start + 20, moment.version), peer, "game.test", destination) is not None
    assert (table.judged, table.replayed) == (2, 1)  # judged again
    recent.clear()  # the identity is no longer recent: looked up off the loop, the whole way
    assert table.judge(moment, peer, "game.test", destination) is None


def test_a_judge_that_fails_at_the_door_leaves_the_connection_to_the_whole_way(
    remembering: Services, clock: SettableClock
) -> None:
    def failing(client: Client, target: Target, now: datetime) -> Decision:
        raise RuntimeError("the policy could not be read")

    remembering.identify_cached = lambda ip: dataclasses.replace(PUPIL, ip=ip)
    remembering.decide = failing
    table = DoorVerdicts(remembering)
    moment = Moment(clock.instant.timestamp(), remembering.policy_version())  # type: ignore[misc]
    assert table.judge(moment, (LOOPBACK, 50000), "game.test", KILL) is None
    assert (table.judged, len(table)) == (0, 0)  # nothing remembered: the whole way judges and counts it


def test_the_table_is_bounded(remembering: Services, clock: SettableClock) -> None:
    remembering.identify_cached = lambda ip: dataclasses.replace(PUPIL, ip=ip)
    remembering.decide = blocking()
    table = DoorVerdicts(remembering, limit=3)
    moment = Moment(clock.instant.timestamp(), remembering.policy_version())  # type: ignore[misc]
    for index in range(7):
        assert table.judge(moment, (LOOPBACK, 50000), f"n{index}.test", KILL) is not None
        assert 1 <= len(table) <= 3


def test_kills_of_one_devices_names_that_one_decision_blocks_share_their_facts(
    remembering: Services, clock: SettableClock
) -> None:
    """A device's kills of many names of one blocked service carry one facts tuple (sent once per
    batch, checked once by the writer), the facts EventLog makes; another device, or another
    minute, has its own."""
    asks: list[tuple[Any, ...]] = []
    remembering.submit_ask = lambda ask: asks.append(ask) is None
    pupils = {ip: dataclasses.replace(PUPIL, ip=ip) for ip in (LOOPBACK, "127.0.0.2")}
    remembering.identify_cached = pupils.get
    table = DoorVerdicts(remembering)
    start = clock.instant.timestamp()

    def kill(moment: Moment, ip: str, sni: str) -> None:
        verdict = table.judge(moment, (ip, 50000), sni, (FACEBOOK_IP, 443))
        assert verdict is not None and not isinstance(verdict, DoorPass)
        table.replay(verdict, moment)

    moment = Moment(start, remembering.policy_version())  # type: ignore[misc]
    for index in range(3):
        kill(moment, LOOPBACK, f"n{index}.www.facebook.com")
    kill(moment, LOOPBACK, "n0.www.facebook.com")  # a repeat, from memory
    kill(moment, "127.0.0.2", "www.facebook.com")
    kill(Moment(start + 60, moment.version), LOOPBACK, "n9.www.facebook.com")
    assert [ask[1] for ask in asks] == ["n0.www.facebook.com", "n1.www.facebook.com", "n2.www.facebook.com",
                                        "n0.www.facebook.com", "www.facebook.com", "n9.www.facebook.com"]
    first = asks[0][4]
    assert all(ask[4] is first for ask in asks[1:4])
    assert asks[4][4] is not first and asks[4][4][2] == "127.0.0.2"
    assert asks[5][4] is not first and asks[5][4] == first  # a new minute's table: made again, the same
    decision = remembering.decide(pupils[LOOPBACK], Target(host="n0.www.facebook.com"), clock.instant)
    assert decision.blocked
    assert first == EventLog(remembering).facts(pupils[LOOPBACK], Judgement(decision, Target(
        host="n0.www.facebook.com"), Action.KILL))


def test_the_door_judges_at_its_moments_instant(remembering: Services, clock: SettableClock) -> None:
    """The connections of one wake-up are judged at the instant its moment read (the clock is
    read once for them), not at whatever the clock says as each is judged."""
    asked: list[datetime] = []

    def decide(client: Client, target: Target, now: datetime) -> Decision:
        asked.append(now)
        return blocking()(client, target, now)

    remembering.identify_cached = lambda ip: dataclasses.replace(PUPIL, ip=ip)
    remembering.decide = decide
    table = DoorVerdicts(remembering)
    moment = table.moment()
    assert moment.now == clock.instant and moment.ts == clock.instant.timestamp()
    clock.instant += timedelta(seconds=30)  # the clock moves on while the wake-up's connections are judged
    for index in range(3):
        assert table.judge(moment, (LOOPBACK, 50000), f"n{index}.test", KILL) is not None
    later = Moment(moment.ts + 45, moment.version)  # a moment made from an instant alone
    assert table.judge(later, (LOOPBACK, 50000), "n9.test", KILL) is not None
    assert asked == [moment.now] * 3 + [moment.now + timedelta(seconds=45)]


def test_the_table_needs_what_the_daemon_gives(services: Services) -> None:
    with pytest.raises(ValueError, match="submit_ask"):
        DoorVerdicts(services)


@pytest.mark.parametrize("remember", [False, True], ids=["the whole way", "passed at the door"])
def test_rejudge_closes_a_pass_whose_verdict_turns_to_a_block(
    remember: bool, remembering: Services, known_clients: dict[str, Client], version: Version,
    sessions: sessionmaker[Session], writer: EventWriter,
) -> None:
    """Lunch ends, or a ban is made: a connection spliced at the door is judged again each
    second as one spliced the whole way is, and closed, with its block logged."""

    async def main() -> tuple[bytes, dict[str, int], int]:
        origin = await asyncio.start_server(echo, LOOPBACK, 0)
        target = (LOOPBACK, int(origin.sockets[0].getsockname()[1]))
        door = started_door(remembering, lambda _sock: target, remember=remember)
        remembering.close = door.close
        known_clients[LOOPBACK] = dataclasses.replace(STAFF, ip=LOOPBACK)
        try:
            reader, writer_ = await asyncio.open_connection(LOOPBACK, int(door.listen_addrs()[0][1]))
            hello = client_hello_bytes("allowed.test")
            writer_.write(hello)
            await asyncio.wait_for(reader.readexactly(len(hello)), timeout=30)  # echoed: spliced
            rejudge = Rejudge(remembering)
            assert rejudge.sweep() == 0  # nothing changed
            remembering.decide = blocking()
            version.value += 1
            closed = rejudge.sweep()
            try:
                rest = await asyncio.wait_for(reader.read(), timeout=30)
            except ConnectionResetError:
                rest = b""
            writer_.close()
            while len(remembering.connections) or door.snapshot()["splices_open"]:
                await asyncio.sleep(0.005)
            return rest, remembering.counters.as_dict(), closed
        finally:
            door.stop()
            origin.close()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        rest, counters, closed = runner.run(main())
    assert (rest, closed, counters["passthroughs_closed"], counters["passed_through"]) == (b"", 1, 1, 1)
    assert [(e.host, e.verdict, e.rule_id) for e in events(sessions, writer)][-1] == ("allowed.test", "block", "ban")
