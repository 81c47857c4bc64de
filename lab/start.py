"""`schoolgate lab start`: the whole appliance in the lab, in the foreground, for a developer.

Builds the lab (devices, gateway with every daemon under `schoolgate run`, an internet),
creates the first console admin with a one-time password, opens the console on the host's
loopback, prints what to try, and waits. Ctrl-C (or SIGTERM) tears the lab down: the
daemons flush their events, the namespaces go.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

from schoolgate.lab.forward import PortForward
from schoolgate.lab.lab import CONSOLE_PORT, DEFAULT_STATE_ROOT, Lab
from schoolgate.lab.netns import LabError
from schoolgate.lab.topology import device

ADMIN = "admin"


def schoolgate_command() -> str:
    """How to run `schoolgate` from another terminal: this installation's own command."""
    script = Path(sys.executable).with_name("schoolgate")
    if script.exists():
        return str(script)
    return f"{sys.executable} -P -m schoolgate"


def create_admin(lab: Lab, python: str = sys.executable) -> str:
    """Create the first admin account; returns its one-time password."""
    done = subprocess.run(
        [python, "-P", "-m", "schoolgate", "users", "add", ADMIN, "--role", "admin", "--name", "Lab admin",
         "--config", str(lab.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("one-time password:"):
            return line.split(":", 1)[1].strip()
    raise LabError(f"could not create the console admin: {done.stdout}{done.stderr}")


def try_this(lab: Lab, console: tuple[str, int], password: str, *, prefix_args: str) -> str:
    sg = schoolgate_command()
    pupil = lab.device_namespace("pupilca")
    school_ca = lab.school_ca
    host, port = console
    appliance = lab.appliance_ip
    lines = [
        "",
        "schoolgate is running in the network lab. Try:",
        "",
        f"  Network mode:                 {lab.wiring.name} (schoolgate lab start --topology gateway|bridge|dns-only)",
        f"  Console (from this machine):  http://{host}:{port}/  (forwarded to {appliance}:{CONSOLE_PORT} in the",
        f"                                appliance namespace {lab.names.gateway}; from the lab LAN: "
        f"http://{appliance}:{CONSOLE_PORT}/)",
        f"  Sign in as:                   {ADMIN}",
        f"  One-time password:            {password}   (one use only: the console takes you through the first sign-in)",
        "",
        "  Browse Facebook as a pupil (a Year 6 laptop that trusts the school CA) and see the block page:",
        f"    {sg} lab browse pupilca https://www.facebook.com/{prefix_args}",
        "  or with curl in the device's namespace:",
        f"    ip netns exec {pupil} curl -sS --cacert {shlex.quote(str(school_ca))} https://www.facebook.com/",
        "",
        "  Ask for access, as the block page's request form would (then see it under Requests in the console):",
        f"    {sg} lab request pupilca https://www.facebook.com/ --name 'Ben Pupil' "
        f"--staff 'Cara Teacher' --reason 'Our class page for the school trip'{prefix_args}",
        "",
        "  Prove that filtering works, from each device's network (results go to Checks in the console):",
        f"    {sg} lab selftest{prefix_args}            (or --from gateway, as an appliance does)",
        f"  Am I filtered? from a device: ip netns exec {pupil} curl -s http://{appliance}:{CONSOLE_PORT}/filtered",
        "",
        f"  Other devices: {', '.join(d for d in ('pupil', 'staff', 'guest', 'sup'))}; "
        f"`{sg} lab status{prefix_args}` lists the daemons,",
        f"  logs are in {lab.state_dir / 'logs'}. Press Ctrl-C to stop and tear the lab down.",
        "",
    ]
    return "\n".join(lines)


def run_foreground(prefix: str, state_root: Path, console_port: int, policy: Path, clock: str,
                   *, topology: str = "gateway") -> int:
    device("pupilca")  # the demo device exists
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    lab = Lab(prefix, state_root=state_root, policy=policy, topology=topology)
    forward: PortForward | None = None
    try:
        print(f"schoolgate lab: building the lab {prefix!r} (this takes a few seconds)...", file=sys.stderr, flush=True)
        lab.up(clock=clock)
        password = create_admin(lab)
        forward = PortForward(lab.names.gateway, lab.appliance_ip, CONSOLE_PORT, listen_port=console_port).start()
        extra = ""
        if prefix != "sg":
            extra += f" --prefix {prefix}"
        if state_root != DEFAULT_STATE_ROOT:
            extra += f" --state-root {shlex.quote(str(state_root))}"
        print(try_this(lab, forward.address, password, prefix_args=extra), flush=True)
        while not stop.wait(0.5):
            if lab.status()["processes"].get("appliance", {}).get("alive") is False:
                print("schoolgate lab: the appliance supervisor has stopped; tearing down", file=sys.stderr)
                break
    except (LabError, OSError, ValueError) as err:
        print(f"schoolgate lab: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        # A second Ctrl-C during the teardown must not leave namespaces behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if forward is not None:
            forward.stop()
        print("schoolgate lab: stopping the daemons and removing the lab...", file=sys.stderr, flush=True)
        lab.down()
        print(f"schoolgate lab: the lab is down (logs kept in {lab.state_dir / 'logs'})", file=sys.stderr, flush=True)
    return 0
