"""Small helpers over `ip netns`: run a command in a namespace, start and stop our processes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


class LabError(RuntimeError):
    pass


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, input=input_text
    )
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", *args], check=check)


def exec_in(namespace: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", namespace]
    if env:
        prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
    return run([*prefix, *argv], check=check, timeout=timeout)


def exists(namespace: str) -> bool:
    return (NETNS_DIR / namespace).exists()


def add(namespace: str, nameserver: str | None = None) -> None:
    ip("netns", "add", namespace)
    exec_in(namespace, ["ip", "link", "set", "lo", "up"])
    if nameserver:
        # `ip netns exec` bind-mounts /etc/netns/<ns>/resolv.conf over /etc/resolv.conf.
        folder = ETC_NETNS / namespace
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:2 attempts:1\n")


def delete(namespace: str) -> None:
    if exists(namespace):
        ip("netns", "del", namespace, check=False)
    folder = ETC_NETNS / namespace
    if folder.is_dir():
        for item in folder.iterdir():
            item.unlink()
        folder.rmdir()


def spawn(namespace: str, argv: Sequence[str], *, log_path: Path,
          env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running process in a namespace; `ip netns exec` execs it, so the PID is its own."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    log_file = log_path.open("ab")
    try:
        return subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,  # a Ctrl-C in the lab's terminal does not reach the daemons
        )
    finally:
        log_file.close()


def process_alive(pid: int, expected_start: str | None = None) -> bool:
    """True if `pid` runs and (when given) is the same process we started, not a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return False
    return expected_start is None or fields[19] == expected_start


def process_start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, ProcessLookupError):
        return None


def stop_process(pid: int, expected_start: str | None, *, grace: float = 8.0) -> None:
    """SIGTERM the process we started, then SIGKILL it if it does not go within `grace`."""
    if not process_alive(pid, expected_start):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(pid, expected_start):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def call_in(namespace: str, function: Callable[[], T], timeout: float = 60.0) -> T:
    """Run `function` in a thread that has entered `namespace`.

    A network namespace is per thread (setns), and sockets keep the namespace they were made
    in, so a test can open sockets inside a lab device without a subprocess.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        fd = os.open(NETNS_DIR / namespace, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {namespace}: {os.strerror(err)}")
        finally:
            os.close(fd)
        try:
            result.append(function())
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=target, name=f"in-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"call in {namespace} did not finish within {timeout}s")
    if failure:
        raise failure[0]
    return result[0]


def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
