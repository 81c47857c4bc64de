"""What the console on demand costs the person who wakes it: the first request's time to first
byte after the console has gone to sleep, beside a request to the console once awake.

    .venv/bin/python -P bench/console_wake.py [--runs 10] [--tls] [--load 2]

Runs `schoolgate run --only console` on loopback (its own SQLite database in a temporary
folder) with `[console] idle_minutes` short, so that the console sleeps between runs. Each run
waits until the supervisor reports the console asleep, then opens a new connection and times
its first byte (the wake: the supervisor's fork, the application loading, the answer), then a
second request on a new connection (the same console, awake: the reference in the same run),
then waits for it to sleep again. The console's CPU until that first byte (its start-up, read
from its /proc/PID/stat as the byte arrives) is the figure a busy machine moves least. The CPU a
wake costs over the console's whole life is read from the supervisor's
/proc/PID/stat: the CPU of its children it has reaped (cutime + cstime), which grows by each
console's whole life (its start, both requests, and its idle loop until it slept).

`--systemd` measures the console as schoolgate-console.socket starts it instead: this script
holds the listening socket, as systemd does, and on each run starts `schoolgate console` as a
new Python process with the socket as LISTEN_FDS (no preloaded supervisor to fork from: the
whole start-up is in the wake), right after the request is sent; its CPU is its rusage. As on
an appliance, where `pip install` has compiled every module's bytecode, the checkout's modules
are compiled first (beside their sources, in the `__pycache__` folders git ignores): a
development checkout under PYTHONDONTWRITEBYTECODE=1 (as the units set it) would otherwise
compile about a hundred of them from source on every wake. `--source` measures that instead
(with PYTHONDONTWRITEBYTECODE=1 and this checkout not compiled beforehand).

`--load N` runs `stress-ng --cpu N` meanwhile (started and stopped by this script), as the
machine is at 8:50 on a Monday; `--tls` serves the console over TLS (a certificate from a
school CA made for the run), as an appliance does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from schoolgate.lab.console_demand import SCHOOLGATE, free_port, prepare

REPO = Path(__file__).resolve().parents[1]
IDLE_MINUTES = 0.02  # 1.2 s: a run then takes a few seconds
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of `pid` so far (0 if it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def reaped_children_cpu_s(pid: int) -> float:
    """cutime + cstime of `pid`: the CPU of the children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / TICKS


class Console:
    def __init__(self, folder: Path, *, tls: bool) -> None:
        self.setup(folder, free_port(), tls=tls)
        self.state = folder / "run.json"
        self.log = folder / "run.log"
        self.process = subprocess.Popen(
            [*SCHOOLGATE, "run", "--config", str(self.config), "--only", "console", "--state-file", str(self.state)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def setup(self, folder: Path, port: int, *, tls: bool) -> None:
        made = prepare(folder, port=port, tls=tls, idle_minutes=IDLE_MINUTES)
        self.folder, self.port, self.config, self.context = folder, port, made.config, made.context

    def state_of_console(self) -> dict[str, object]:
        try:
            child: dict[str, object] = json.loads(self.state.read_text())["children"]["console"]
        except (FileNotFoundError, ValueError, KeyError):
            return {}
        return child

    def wait_asleep(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.state_of_console().get("pid") is not None or not self.state_of_console():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"the console did not sleep:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def console_pid(self) -> int | None:
        pid = self.state_of_console().get("pid")
        return int(str(pid)) if pid else None

    def time_to_first_byte(self) -> float:
        """One GET /login on a new connection: seconds from connecting to its first byte."""
        started = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        conn = self.context.wrap_socket(raw, server_hostname="127.0.0.1") if self.context else raw
        with conn:
            conn.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            first = conn.recv(1)
            took = time.perf_counter() - started
            # The console's CPU so far: for the request that woke it, its start-up (a forked
            # child's times begin at zero).
            console_pid = self.console_pid()
            self.cpu_to_first_byte = process_cpu_s(console_pid) if console_pid else float("nan")
            rest = first
            while chunk := conn.recv(65536):
                rest += chunk
        if not rest.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer {rest[:80]!r}")
        return took

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)


class SystemdConsole(Console):
    """The console started as systemd's socket unit starts it: a new process per wake."""

    def __init__(self, folder: Path, *, tls: bool, bytecode: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=2048)
        self.setup(folder, self.listener.getsockname()[1], tls=tls)
        self.log = folder / "console.log"
        self.service: subprocess.Popen[bytes] | None = None
        if bytecode:
            compile_checkout()
        self.env = {**os.environ, **({} if bytecode else {"PYTHONDONTWRITEBYTECODE": "1"})}

    def start_service(self) -> None:
        # LISTEN_PID is the service's own PID: the shell's, which `exec` keeps.
        script = 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"'
        listener = self.listener.fileno()
        self.service = subprocess.Popen(
            ["sh", "-c", script, "sh", *SCHOOLGATE, "console", "--config", str(self.config)],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, pass_fds=(3,), env=self.env,
            preexec_fn=lambda: os.dup2(listener, 3),  # noqa: PLW1509  (the test's own child, no threads)
        )

    def console_pid(self) -> int | None:
        return self.service.pid if self.service is not None else None

    def wake_and_time(self) -> float:
        """The first request, sent before the service starts (as it is what starts it)."""
        started = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.start_service()
        conn = self.context.wrap_socket(raw, server_hostname="127.0.0.1") if self.context else raw
        with conn:
            conn.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            first = conn.recv(1)
            took = time.perf_counter() - started
            self.cpu_to_first_byte = process_cpu_s(self.service.pid)  # its whole start-up, from exec
            while first and conn.recv(65536):
                pass
        return took

    def wait_exit_cpu_s(self) -> float:
        """Wait for the idle service to exit; its CPU (user + system) from its rusage."""
        assert self.service is not None
        _pid, status, usage = os.wait4(self.service.pid, 0)
        self.service.returncode = os.waitstatus_to_exitcode(status)
        if self.service.returncode != 0:
            raise RuntimeError(f"the console exited {self.service.returncode}:\n{self.log.read_text()[-3000:]}")
        return usage.ru_utime + usage.ru_stime

    def stop(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            self.service.wait(timeout=60)
        self.listener.close()


def compile_checkout() -> None:
    """Every module of this checkout compiled beside its source (`__pycache__`, which git
    ignores), as `pip install` leaves an appliance's: what its console then reads instead."""
    excluded = r"[/\\](\.venv|\.git|build|tests|bench)[/\\]"
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-x", excluded, str(REPO)], check=True,
                   stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def cpu_load(workers: int) -> Iterator[None]:
    if not workers:
        yield
        return
    if not shutil.which("stress-ng"):
        raise SystemExit("stress-ng is not installed (Debian: stress-ng)")
    load = subprocess.Popen(["stress-ng", "--cpu", str(workers), "--timeout", "900"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # its workers running
        yield
    finally:
        load.send_signal(signal.SIGINT)
        try:
            load.wait(timeout=20)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()


def spread(values: list[float], unit: float = 1000.0) -> str:
    ms = sorted(v * unit for v in values)
    return f"median {statistics.median(ms):7.1f}  min {ms[0]:7.1f}  max {ms[-1]:7.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--tls", action="store_true", help="serve the console over TLS, as an appliance does")
    parser.add_argument("--load", type=int, default=0, metavar="N", help="run stress-ng --cpu N meanwhile")
    parser.add_argument("--systemd", action="store_true",
                        help="start the console as schoolgate-console.socket does: a new process with LISTEN_FDS")
    parser.add_argument("--source", action="store_true",
                        help="with --systemd: no compiled bytecode, every module of the checkout compiled on each wake")
    args = parser.parse_args(argv)
    woken: list[float] = []
    awake: list[float] = []
    cpu: list[float] = []
    started_cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="sg-console-wake-") as tmp:
        if args.systemd:
            service = SystemdConsole(Path(tmp), tls=args.tls, bytecode=not args.source)
            try:
                with cpu_load(args.load):
                    for _ in range(max(1, args.runs)):
                        woken.append(service.wake_and_time())
                        started_cpu.append(service.cpu_to_first_byte)
                        awake.append(service.time_to_first_byte())
                        cpu.append(service.wait_exit_cpu_s())
            finally:
                service.stop()
        else:
            console = Console(Path(tmp), tls=args.tls)
            try:
                console.wait_asleep(120)
                with cpu_load(args.load):
                    for _ in range(max(1, args.runs)):
                        console.wait_asleep(60)
                        before = reaped_children_cpu_s(console.process.pid)
                        woken.append(console.time_to_first_byte())
                        started_cpu.append(console.cpu_to_first_byte)
                        awake.append(console.time_to_first_byte())
                        console.wait_asleep(60)
                        cpu.append(reaped_children_cpu_s(console.process.pid) - before)
            finally:
                console.stop()
    how = ("TLS" if args.tls else "plain HTTP") + (f", under stress-ng --cpu {args.load}" if args.load else "")
    how += ", started as systemd's socket unit does (a new process" + (
        ", the checkout's modules compiled from source each time)" if args.source else
        ", bytecode compiled beforehand as on an appliance)") if args.systemd \
        else ", forked by schoolgate run's preloaded supervisor"
    print(f"Console on demand ({how}), {len(woken)} runs, {os.cpu_count()} CPUs")
    print(f"  first byte, waking the console (ms)  {spread(woken)}")
    print(f"  first byte, the console awake (ms)   {spread(awake)}")
    ratios = [w / a for w, a in zip(woken, awake, strict=True)]
    print(f"  wake / awake, per run                {spread(ratios, 1.0)} x")
    print(f"  CPU until the first byte, waking (ms)  {spread(started_cpu)}")
    print(f"  CPU per wake, the console's whole life (ms)  {spread(cpu)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
