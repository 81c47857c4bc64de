"""`schoolgate events` (schoolgate.writers): the supervisor's event-writing process's command
line, and what it refuses."""

from __future__ import annotations

import argparse
import socket

import pytest

from schoolgate.store.events.channel import channel_pair
from schoolgate.writers import settings_of, source_argument, sources_from


@pytest.mark.parametrize(("text", "expected"), [
    ("dns=7", ("dns", 7)),
    ("proxy=12", ("proxy", 12)),
])
def test_a_source_names_a_daemon_and_a_descriptor(text: str, expected: tuple[str, int]) -> None:
    assert source_argument(text) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("dns", "DAEMON=FD"),
    ("dns=", "DAEMON=FD"),
    ("dns=seven", "DAEMON=FD"),
    ("dns=-1", "DAEMON=FD"),
    ("console=7", "'console' is not one of dns, proxy"),
])
def test_a_malformed_source_is_refused_by_name(text: str, says: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=says):
        source_argument(text)


def test_each_daemon_is_written_with_its_own_settings() -> None:
    from schoolgate.dns.daemon import WRITER_GATHER_S, WRITER_SETTINGS
    from schoolgate.proxy.events import WRITER_STATUS_NAME

    assert settings_of("dns") is WRITER_SETTINGS and settings_of("dns").gather_s == WRITER_GATHER_S
    assert settings_of("proxy").status_name == WRITER_STATUS_NAME and settings_of("proxy").gather_s == 0


def test_a_descriptor_that_is_not_a_channel_or_a_daemon_named_twice_is_refused() -> None:
    sending, reading = channel_pair()
    tcp = socket.socket()
    try:
        with pytest.raises(ValueError, match=rf"--source proxy={tcp.fileno()}: not the event channel"):
            sources_from([("proxy", tcp.fileno())])
        with pytest.raises(ValueError, match="each daemon once"):
            sources_from([("dns", reading.fileno()), ("dns", reading.fileno())])
        (source,) = sources_from([("dns", reading.fileno())])
        assert source.settings.status_name == "dns.events" and source.reading.fileno() == reading.fileno()
        source.reading.detach()  # the test's own socket closes it
    finally:
        tcp.close()
        sending.close()
        reading.close()


@pytest.mark.parametrize(("options", "watch", "scheduler"), [
    ([], False, False),
    (["--watch"], True, False),
    (["--scheduler"], False, True),
    (["--watch", "--scheduler"], True, True),
])
def test_companions_are_asked_for_by_options(options: list[str], watch: bool, scheduler: bool) -> None:
    """`--watch` runs net watch beside the channels, `--scheduler` the scheduler; without them
    the process writes only the channels."""
    from schoolgate.writers import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["events", "--config", "c", "--source", "dns=7", *options])
    assert (args.watch, args.scheduler) == (watch, scheduler)
