"""The self-test in the network lab: from the lab devices' namespaces, or from the gateway.

From the devices (`from_devices=True`) every question and connection leaves a real device
(the pupil's iPad, the staff laptop, the guest phone, the banned iPad) and crosses the LAN
rules as theirs would. From the gateway the same checks run as on an appliance: sockets bound
to the appliance's probe address in each network, inside the gateway's namespace. The lab
tests run both and compare, which is the proof that the gateway's probe addresses see what
devices see.
"""

from __future__ import annotations

from typing import Any

from schoolgate.lab import netns
from schoolgate.lab.lab import Lab
from schoolgate.lab.topology import DEVICES
from schoolgate.selftest.vantage import Vantage

# One device per role's network, and the banned device (its ban makes it supervised).
CHECKED_DEVICES = ("pupil", "staff", "guest", "sup")


def in_namespace(namespace: str) -> Any:
    def runner(probe: Any) -> Any:
        return netns.call_in(namespace, probe, timeout=60)

    return runner


def device_vantages(lab: Lab, keys: tuple[str, ...] = CHECKED_DEVICES) -> list[Vantage]:
    found = []
    for item in DEVICES:
        if item.key not in keys:
            continue
        role = "supervised" if item.banned else (item.role or item.person_role or "guest")
        found.append(Vantage(name=f"lab device {item.key} ({item.device_name})", role=role,
                             client_ip=item.ip, source=None, runner=in_namespace(lab.device_namespace(item.key))))
    return found


def gateway_vantages(lab: Lab) -> list[Vantage]:
    """As on an appliance (selftest.vantage), but the sockets are made in the gateway's namespace."""
    from dataclasses import replace

    from schoolgate.config import load_config
    from schoolgate.policy import load_policy
    from schoolgate.selftest import vantage

    config = load_config(lab.config_path)
    found = vantage.gateway_vantages(load_policy(config.policy), config)
    return [replace(v, runner=in_namespace(lab.names.gateway)) for v in found]


def run_lab_selftest(lab: Lab, *, from_devices: bool, mailer: Any = None, record: bool = True,
                     trigger: str = "lab") -> Any:
    """One self-test of the running lab; returns the SelftestReport."""
    from schoolgate.clock import FileClock
    from schoolgate.config import load_config
    from schoolgate.selftest.run import run_selftest
    from schoolgate.store.db import make_engine, session_factory

    config = load_config(lab.config_path)
    clock = FileClock(lab.clock_path)
    engine = make_engine(config.database_url)
    try:
        return run_selftest(
            config, session_factory(engine), clock.now(), trigger=trigger, clock_source=clock, mailer=mailer,
            record=record, vantages=device_vantages(lab) if from_devices else gateway_vantages(lab),
            appliance_runner=in_namespace(lab.names.gateway), dns_server=(lab.appliance_ip, 53),
        )
    finally:
        engine.dispose()
