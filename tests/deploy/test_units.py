"""The systemd units: each one's hardening, checked setting by setting, and `systemd-analyze verify`.

The table says what each daemon may do (user, capabilities, address families); everything it
may not do is the same for all of them and checked for each. MemoryDenyWriteExecute= is
exercised for real: the same seccomp rules systemd installs are loaded into a Python process,
which then runs the native code the daemons use (argon2, cryptography, mitmproxy, SQLAlchemy).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
EXEC = "/opt/schoolgate/venv/bin/schoolgate"
CONFIG = "/etc/schoolgate/schoolgate.toml"

# unit -> (user, capabilities, address families, subcommand)
DAEMONS = {
    "schoolgate-dns.service": (
        "schoolgate-dns",
        {"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN"},
        {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"},
        "dns",
    ),
    # The proxy's unit supervises its workers and their event writer (schoolgate run --only proxy).
    "schoolgate-proxy.service": (
        "schoolgate-proxy",
        set(),
        {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"},
        "run --only proxy",
    ),
    "schoolgate-console.service": ("schoolgate-console", set(), {"AF_UNIX", "AF_INET", "AF_INET6"}, "console"),
    "schoolgate-scheduler.service": ("schoolgate-scheduler", set(), {"AF_UNIX", "AF_INET", "AF_INET6"}, "scheduler"),
    "schoolgate-netwatch.service": (
        "schoolgate-netwatch",
        {"CAP_NET_ADMIN"},
        {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"},
        "net watch",
    ),
    "schoolgate-identity.service": (
        "schoolgate-identity", set(), {"AF_UNIX", "AF_INET", "AF_INET6"}, "identity serve"
    ),
}
# Every service, the oneshot included.
COMMON = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/schoolgate",
    "ConfigurationDirectory": "schoolgate",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateMounts": "yes",
    "ProtectHome": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "UMask": "0027",
}


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> every value given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{path.name}: setting outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"{key}: expected one value, got {values}"
    return values[0]


def words(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> set[str]:
    return {w for value in unit[section].get(key, []) for w in value.split()}


def test_the_unit_set_is_complete() -> None:
    names = {p.name for p in UNITS.iterdir()}
    assert names == {*DAEMONS, "schoolgate-net.service", "schoolgate.target", "schoolgate-console.socket"}
    target = parse_unit(UNITS / "schoolgate.target")
    # The console is started by its socket (on demand), so the target wants the socket.
    wanted = {*DAEMONS, "schoolgate-net.service", "schoolgate-console.socket"} - {"schoolgate-console.service"}
    assert words(target, "Unit", "Wants") == wanted
    assert one(target, "Install", "WantedBy") == "multi-user.target"


def test_the_console_is_socket_activated() -> None:
    socket_unit = parse_unit(UNITS / "schoolgate-console.socket")
    assert one(socket_unit, "Socket", "Service") == "schoolgate-console.service"
    assert one(socket_unit, "Socket", "ListenStream")  # replaced by the installer's drop-in
    assert one(socket_unit, "Socket", "FreeBind") == "yes"  # bound before the LAN address is up
    assert one(socket_unit, "Install", "WantedBy") == "schoolgate.target"
    assert "schoolgate.target" in words(socket_unit, "Unit", "PartOf")
    service = parse_unit(UNITS / "schoolgate-console.service")
    assert "schoolgate-console.socket" in words(service, "Unit", "Requires")
    assert "schoolgate-console.socket" in words(service, "Unit", "After")
    assert one(service, "Install", "Also") == "schoolgate-console.socket"


@pytest.mark.parametrize("name", sorted(DAEMONS))
def test_daemon_hardening(name: str) -> None:
    user, caps, families, command = DAEMONS[name]
    unit = parse_unit(UNITS / name)
    service = unit["Service"]
    assert one(unit, "Service", "ExecStart") == f"{EXEC} {command} --config {CONFIG}"
    assert one(unit, "Service", "User") == user
    assert one(unit, "Service", "Group") == "schoolgate"
    # Every daemon is restarted whatever ends it, but identity with nothing configured exits
    # cleanly by design (nothing to receive) and stays stopped, and the console exits cleanly
    # once idle, to be started by its socket; any failure restarts either.
    clean_exit = {"schoolgate-identity.service", "schoolgate-console.service"}
    assert one(unit, "Service", "Restart") == ("on-failure" if name in clean_exit else "always")
    assert float(one(unit, "Service", "RestartSec")) <= 1  # a killed daemon is back within 2 s
    assert one(unit, "Unit", "StartLimitIntervalSec") == "0"  # and it is never given up on
    assert words(unit, "Service", "CapabilityBoundingSet") == caps
    assert words(unit, "Service", "AmbientCapabilities") == caps
    assert words(unit, "Service", "RestrictAddressFamilies") == families
    assert one(unit, "Service", "ProtectKernelTunables") == "yes"
    for key, value in COMMON.items():
        assert one(unit, "Service", key) == value, key
    assert service["SystemCallFilter"][0] == "@system-service"
    assert "~@privileged @resources" in service["SystemCallFilter"]
    assert "schoolgate.target" in words(unit, "Unit", "PartOf")
    if name != "schoolgate-console.service":  # enabled through its socket (above)
        assert one(unit, "Install", "WantedBy") == "schoolgate.target"


def test_net_oneshot() -> None:
    unit = parse_unit(UNITS / "schoolgate-net.service")
    assert one(unit, "Service", "Type") == "oneshot"
    assert one(unit, "Service", "ExecStart") == f"{EXEC} net apply --config {CONFIG}"
    assert "network-online.target" in words(unit, "Unit", "Before")
    assert words(unit, "Service", "CapabilityBoundingSet") == {"CAP_NET_ADMIN"}
    # It writes the forwarding sysctls, so /proc/sys must stay writable for it.
    assert "ProtectKernelTunables" not in unit["Service"]
    for key, value in COMMON.items():
        assert one(unit, "Service", key) == value, key
    assert "AF_NETLINK" in words(unit, "Service", "RestrictAddressFamilies")


@pytest.fixture(scope="module")
def verify_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tree with systemd's own units, ours, and an executable where ExecStart points."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    root = tmp_path_factory.mktemp("deploy-units")
    system = Path("/usr/lib/systemd/system")
    shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    binary = root / EXEC.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    target = root / "usr/local/lib/systemd/system"
    target.mkdir(parents=True)
    for unit in UNITS.iterdir():
        shutil.copy(unit, target / unit.name)
    return root


def test_units_verify(verify_root: Path) -> None:
    units = sorted(str(p) for p in (verify_root / "usr/local/lib/systemd/system").iterdir())
    done = subprocess.run(
        ["systemd-analyze", "verify", f"--root={verify_root}", *units], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr


def test_verify_notices_a_missing_executable(verify_root: Path) -> None:
    """The verify above would catch a wrong ExecStart path (so it can fail)."""
    broken = verify_root / "usr/local/lib/systemd/system/schoolgate-broken.service"
    broken.write_text((UNITS / "schoolgate-dns.service").read_text().replace(EXEC, "/opt/schoolgate/nowhere"))
    try:
        done = subprocess.run(
            ["systemd-analyze", "verify", f"--root={verify_root}", str(broken)], capture_output=True, text=True
        )
    finally:
        broken.unlink()
    assert done.returncode != 0 and "/opt/schoolgate/nowhere" in done.stderr, done.stderr


def test_security_exposure(verify_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Print each unit's exposure score (systemd-analyze security, offline) and keep it low."""
    scores = {}
    for name in sorted([*DAEMONS, "schoolgate-net.service"]):
        done = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", f"--root={verify_root}", "--no-pager", name],
            capture_output=True,
            text=True,
            cwd=UNITS,
        )
        line = [ln for ln in done.stdout.splitlines() if "Overall exposure level" in ln]
        assert line, done.stdout + done.stderr
        scores[name] = float(line[-1].split(":")[1].split()[0])
    with capsys.disabled():
        print("\nsystemd-analyze security (exposure, 0 = best, 10 = worst):")
        for name, score in scores.items():
            print(f"  {name:32} {score:.1f}")
    assert all(score <= 3.0 for score in scores.values()), scores


MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, errno, mmap, sys

    # The rules systemd installs for MemoryDenyWriteExecute=yes: no mapping both writable and
    # executable, and no making memory executable after the fact.
    seccomp = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    seccomp.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(Cmp)
    ]
    ALLOW, EPERM, MASKED_EQ = 0x7FFF0000, 0x00050000 | errno.EPERM, 7
    W, X = mmap.PROT_WRITE, mmap.PROT_EXEC
    ctx = seccomp.seccomp_init(ALLOW)
    SHM_EXEC = 0o100000
    rules = [
        ("mmap", 2, W | X, W | X), ("mprotect", 2, X, X), ("pkey_mprotect", 2, X, X), ("shmat", 2, SHM_EXEC, SHM_EXEC)
    ]
    for name, arg, mask, value in rules:
        nr = seccomp.seccomp_syscall_resolve_name(name.encode())
        cmp = Cmp(arg, MASKED_EQ, mask, value)
        assert seccomp.seccomp_rule_add_array(ctx, EPERM, nr, 1, ctypes.byref(cmp)) == 0, name
    assert seccomp.seccomp_load(ctypes.c_void_p(ctx)) == 0

    try:  # the filter is in force
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | W | X)
    except PermissionError:
        pass
    else:
        sys.exit("write+execute mapping was allowed: the filter is not active")

    # What the daemons run natively.
    import argon2
    hasher = argon2.PasswordHasher()
    assert hasher.verify(hasher.hash("correct horse"), "correct horse")
    import datetime, tempfile
    from schoolgate.ca import init_ca, issue_server_cert
    with tempfile.TemporaryDirectory() as ca:
        init_ca(ca, school_name="Probe School")
        issue_server_cert(ca, ["schoolgate.lan"], ["10.0.0.1"])
    import sqlalchemy
    engine = sqlalchemy.create_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
    import dnslib, pyroute2, flask, gunicorn, apscheduler
    import mitmproxy.tools.dump, mitmproxy.certs, mitmproxy_rs
    print("MDWE-OK")
    """
)


def test_memory_deny_write_execute_keeps_the_daemons_working() -> None:
    if not Path("/lib/x86_64-linux-gnu/libseccomp.so.2").exists() and not list(
        Path("/usr/lib").rglob("libseccomp.so.2")
    ):
        pytest.fail("libseccomp2 is missing: apt-get install libseccomp2")
    done = subprocess.run([sys.executable, "-c", MDWE_PROBE], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and "MDWE-OK" in done.stdout, done.stdout + done.stderr
