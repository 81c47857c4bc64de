"""deploy/install.sh on a fresh Debian 12 tree: installs, validates, boots, and reinstalls cleanly.

The tree comes from `debootstrap --variant=minbase bookworm`; the downloaded packages are kept
as a tarball under build/ so that a rerun only unpacks them. install.sh runs with --root, so
every command that needs the target system runs in it through chroot. Then the tree is booted
with systemd as PID 1 (systemd-nspawn, its LAN interface in a network namespace of our own):
every unit must come up under its hardening, `schoolgate doctor` must pass inside, and a
killed daemon must be restarted.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TARBALL = REPO / "build" / "deploy" / "bookworm-minbase.tgz"
SUITE = "bookworm"
FLAGS = [
    "--non-interactive",
    "--no-start",
    "--lan-if",
    "eth0",
    "--lan-address",
    "10.91.0.1/24",
    "--upstream",
    "10.91.0.254",
    "--site-id",
    "testschool",
    "--site-name",
    "Test Primary School",
]
# Left out of the before/after comparison: logs and caches that any command may touch.
VOLATILE = re.compile(
    r"(__pycache__|\.pyc$|^var/log/|^var/cache/|^var/lib/apt/|^var/lib/dpkg/|^tmp/|^run/|^proc/|^sys/|^dev/)"
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(900)]


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line format)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file() or path.suffix not in ("", ".list", ".sources"):
            continue
        text = path.read_text(errors="replace")
        for block in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", block, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", block, re.M)
            if uris and suites and SUITE in suites.group(1).split():
                return uris.group(1)
        for line in text.splitlines():
            match = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+" + SUITE + r"\s", line)
            if match:
                return match.group(1)
    return "http://deb.debian.org/debian"


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise AssertionError(f"{argv} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


def unmount_below(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m == str(root) or m.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], check=False)


@pytest.fixture(scope="module")
def debian_tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is missing: apt-get install debootstrap")
    mirror = debian_mirror()
    if not TARBALL.exists():
        TARBALL.parent.mkdir(parents=True, exist_ok=True)
        scratch = tmp_path_factory.mktemp("deploy-debootstrap")
        partial = TARBALL.with_suffix(".partial.tgz")
        run(["debootstrap", "--variant=minbase", f"--make-tarball={partial}", SUITE, str(scratch), mirror])
        partial.rename(TARBALL)
        shutil.rmtree(scratch, ignore_errors=True)
    root = tmp_path_factory.mktemp("deploy-root")
    root.chmod(0o755)  # a system's / is world-searchable; the daemon users must get in
    try:
        run(["debootstrap", "--variant=minbase", f"--unpack-tarball={TARBALL}", SUITE, str(root), mirror])
        trust_local_authorities(root)
        yield root
    finally:
        unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)


def trust_local_authorities(root: Path) -> None:
    """Give the tree the certificate authorities this machine added locally.

    Where the network inspects TLS (as this test machine's does, and some school networks do),
    pip inside the tree trusts the package index only with the same local CA. Debian's
    ca-certificates, which install.sh installs, picks them up from this directory.
    """
    local = Path("/usr/local/share/ca-certificates")
    target = root / "usr/local/share/ca-certificates"
    target.mkdir(parents=True, exist_ok=True)
    for cert in sorted(local.glob("*.crt")) if local.is_dir() else []:
        shutil.copy(cert, target / cert.name)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A frozen copy of the checkout: the runs must see the same source, whatever else is edited meanwhile."""
    target = tmp_path_factory.mktemp("deploy-checkout") / "schoolgate"
    ignore = shutil.ignore_patterns(
        ".git",
        ".venv",
        "build",
        "var",
        "__pycache__",
        "*.egg-info",
        ".hypothesis",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "node_modules",
        "*.db",
        "*.db-wal",
        "*.db-shm",
    )
    shutil.copytree(REPO, target, ignore=ignore, symlinks=True)
    return target


def install(checkout: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # The tree has no /opt/wheels; pip there uses the package index only.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_FIND_LINKS")}
    return run(["bash", str(checkout / "deploy" / "install.sh"), "--root", str(root), *FLAGS, *extra], env=env)


WRITE_DATABASE = (
    "import sqlite3; c = sqlite3.connect('file:/var/lib/schoolgate/schoolgate.db?mode=rw', uri=True, "
    "isolation_level=None); c.execute('BEGIN IMMEDIATE'); c.execute('ROLLBACK')"
)


def as_user(root: Path, daemon: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run Python in the tree as a daemon's user (its group: schoolgate)."""
    argv = ["chroot", f"--userspec=schoolgate-{daemon}:schoolgate", str(root), "/opt/schoolgate/venv/bin/python", "-c"]
    return subprocess.run([*argv, code], capture_output=True, text=True, timeout=60)


def tree_manifest(root: Path) -> dict[str, tuple[str, int, int, int]]:
    """path -> (sha256 or link target, mode, uid, gid) for every file, link and directory."""
    result: dict[str, tuple[str, int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if VOLATILE.search(rel):
                continue
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                content = "-> " + os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                content = ""
            result[rel] = (content, stat.S_IMODE(info.st_mode) | stat.S_IFMT(info.st_mode), info.st_uid, info.st_gid)
    return result


@pytest.fixture(scope="module")
def installed(debian_tree: Path, checkout: Path) -> tuple[Path, str]:
    """The tree after the first install.sh run, and what that run printed."""
    first = install(checkout, debian_tree)
    return debian_tree, first.stdout + first.stderr


# The tests below run in this order on one tree: install, reinstall, boot, edit, uninstall.


def test_install_on_fresh_debian(installed: tuple[Path, str]) -> None:
    root, output = installed
    assert "one-time password" in output.lower()

    # Users, directories and modes.
    passwd = (root / "etc/passwd").read_text()
    for daemon in ("dns", "proxy", "console", "scheduler", "netwatch", "identity"):
        assert re.search(rf"^schoolgate-{daemon}:", passwd, re.M), daemon
    data = (root / "var/lib/schoolgate").stat()
    assert stat.S_IMODE(data.st_mode) == 0o2770
    assert stat.S_IMODE((root / "etc/schoolgate/schoolgate.toml").stat().st_mode) == 0o640
    assert (root / "var/lib/schoolgate/schoolgate.db").exists()
    assert stat.S_IMODE((root / "var/lib/schoolgate/schoolgate.db").stat().st_mode) == 0o660
    assert (root / "var/lib/schoolgate/ca/mitmproxy-ca.pem").exists()
    assert stat.S_IMODE((root / "var/lib/schoolgate/ca/mitmproxy-ca.pem").stat().st_mode) == 0o600

    # Enabled: the symlinks exist even though no systemd runs in the tree.
    wants = root / "etc/systemd/system"
    assert (wants / "multi-user.target.wants/schoolgate.target").is_symlink()
    for unit in ("net", "dns", "proxy", "scheduler", "netwatch", "identity"):
        assert (wants / f"schoolgate.target.wants/schoolgate-{unit}.service").is_symlink(), unit
    # The console starts on demand: the target wants its socket, which listens where the
    # configuration says the console does.
    assert (wants / "schoolgate.target.wants/schoolgate-console.socket").is_symlink()
    assert not (wants / "schoolgate.target.wants/schoolgate-console.service").exists()
    listen = (wants / "schoolgate-console.socket.d/listen.conf").read_text()
    assert "ListenStream=\nListenStream=10.91.0.1:8443\n" in listen, listen

    # The units verify against the tree (their ExecStart paths exist there).
    units = sorted(str(p) for p in (root / "usr/local/lib/systemd/system").glob("schoolgate*"))
    assert len(units) == 9
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert "schoolgate" not in verify.stderr, verify.stderr

    # The installed configuration validates with the installed program.
    cli = "/opt/schoolgate/venv/bin/schoolgate"
    run(["chroot", str(root), cli, "policy", "check", "/etc/schoolgate/policy.toml"])
    run(["chroot", str(root), cli, "db", "check", "--config", "/etc/schoolgate/schoolgate.toml"])

    # The ruleset generates from the written appliance configuration.
    ruleset = run(["chroot", str(root), cli, "net", "show", "--config", "/etc/schoolgate/schoolgate.toml"]).stdout
    assert "table inet schoolgate" in ruleset
    assert 'iifname "eth0"' in ruleset and "redirect to :53" in ruleset and "redirect to :8081" in ruleset

    # Each daemon's user can do what it needs, and no more.
    for daemon in ("dns", "proxy", "console", "scheduler", "netwatch", "identity"):
        assert as_user(root, daemon, WRITE_DATABASE).returncode == 0, daemon
    assert as_user(root, "proxy", "open('/var/lib/schoolgate/ca/mitmproxy-ca.pem').read()").returncode == 0
    assert as_user(root, "console", "open('/var/lib/schoolgate/ca/mitmproxy-ca.pem').read()").returncode != 0
    assert as_user(root, "console", "open('/var/lib/schoolgate/console-tls/console.key').read()").returncode == 0
    assert as_user(root, "dns", "open('/var/lib/schoolgate/console-tls/console.key').read()").returncode != 0
    assert as_user(root, "dns", "open('/etc/schoolgate/policy.toml').read()").returncode == 0


def test_second_run_changes_nothing(installed: tuple[Path, str], checkout: Path) -> None:
    root, _ = installed
    before = tree_manifest(root)
    install(checkout, root)
    after = tree_manifest(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], changed[:20]


# ------------------------------------------------------------------------ booted under systemd

DAEMON_CAPS = {  # what each running daemon holds (CapEff = CapBnd = CapAmb), from the units
    "dns": (1 << 10) | (1 << 12),  # CAP_NET_BIND_SERVICE, CAP_NET_ADMIN
    "proxy": 0,
    "console": 0,
    "scheduler": 0,
    "netwatch": 1 << 12,  # CAP_NET_ADMIN
}
# The installed example configures no lease files or RADIUS: identity has nothing to receive, so
# it ends cleanly at once and its unit (Restart=on-failure) leaves it stopped.
IDLE_UNITS = ("identity",)
# doctor's checks that must pass in the booted tree (no upstream, clock or mail relay there)
DOCTOR_CHECKS = ("interface", "forwarding", "nftables", "dns", "proxy", "console", "heartbeat", "database", "ca")
# One request to the console's address as a browser on the LAN makes it (the certificate is the
# school CA's, which this client does not hold).
CONSOLE_GET = (
    "import http.client, ssl\n"
    "context = ssl.create_default_context()\n"
    "context.check_hostname = False\n"
    "context.verify_mode = ssl.CERT_NONE\n"
    "conn = http.client.HTTPSConnection('10.91.0.1', 8443, timeout=60, context=context)\n"
    "conn.request('GET', '/login')\n"
    "print(conn.getresponse().status)\n"
)
DOCTOR = (
    "import argparse, sys\n"
    "from schoolgate import doctor\n"
    "parser = argparse.ArgumentParser()\n"
    "doctor.register(parser.add_subparsers())\n"
    "args = parser.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args))\n"
)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def container_init(nspawn: subprocess.Popen[bytes], deadline: float) -> int:
    """The host PID of the container's PID 1 (systemd)."""
    while time.monotonic() < deadline and nspawn.poll() is None:
        for pid in descendants(nspawn.pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if nspid and nspid[-1] == "1":
                return pid
        time.sleep(0.1)
    raise AssertionError("the container's systemd did not start")


class Container:
    def __init__(self, leader: int) -> None:
        self.leader = leader

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", *argv], capture_output=True, text=True, timeout=timeout
        )

    def main_pid(self, unit: str) -> int:
        return int(self.run("systemctl", "show", "-p", "MainPID", "--value", unit).stdout.strip() or 0)

    def proc_status(self, pid: int) -> dict[str, str]:
        text = self.run("cat", f"/proc/{pid}/status").stdout
        return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


@pytest.fixture
def booted(installed: tuple[Path, str], tmp_path: Path) -> Iterator[Container]:
    """Boot the installed tree with systemd as PID 1 (systemd-nspawn), its LAN in our own netns."""
    root, _ = installed
    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn is missing: apt-get install systemd-container")
    netns = f"deploy-boot-{os.getpid()}"
    run(["ip", "netns", "add", netns])
    log = (tmp_path / "nspawn.log").open("wb")
    nspawn: subprocess.Popen[bytes] | None = None
    try:
        # The LAN interface the configuration names (eth0), with a peer so that it has carrier.
        run(["ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "lanpeer"])
        run(["ip", "-n", netns, "link", "set", "lanpeer", "up"])
        nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                f"--directory={root}",
                f"--machine=deploy-{os.getpid()}",
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "--capability=CAP_NET_ADMIN",
                f"--network-namespace-path=/run/netns/{netns}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        container = Container(container_init(nspawn, time.monotonic() + 60))
        # Until systemd listens on its socket, systemctl prints nothing; then "starting" until boot is done.
        deadline = time.monotonic() + 180
        state = ""
        while time.monotonic() < deadline and nspawn.poll() is None:
            state = container.run("systemctl", "is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        assert state in ("running", "degraded"), state
        yield container
    finally:
        if nspawn is not None and nspawn.poll() is None:
            nspawn.terminate()  # nspawn powers the container off cleanly on SIGTERM
            try:
                nspawn.wait(60)
            except subprocess.TimeoutExpired:
                nspawn.kill()
                nspawn.wait(10)
        log.close()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        unmount_below(root)
        print((tmp_path / "nspawn.log").read_text(errors="replace")[-3000:])


def test_boots_and_runs_hardened_under_systemd(booted: Container) -> None:
    container = booted
    units = ["schoolgate.target", "schoolgate-net.service", "schoolgate-console.socket"] + [
        f"schoolgate-{d}.service" for d in DAEMON_CAPS if d != "console"
    ]
    states = container.run("systemctl", "is-active", *units).stdout.split()
    failed = container.run("journalctl", "--no-pager", "-n", "60", "-u", "schoolgate-*").stdout
    assert states == ["active"] * len(units), f"{dict(zip(units, states, strict=False))}\n{failed}"

    # The console is socket-activated: asleep after boot, systemd holding its socket; the first
    # connection starts it, and that connection is answered by it.
    console = "schoolgate-console.service"
    assert container.run("systemctl", "is-active", console).stdout.strip() == "inactive"
    woke = container.run("/opt/schoolgate/venv/bin/python", "-c", CONSOLE_GET, timeout=120)
    assert woke.returncode == 0 and woke.stdout.strip() == "200", woke.stdout + woke.stderr + \
        container.run("journalctl", "--no-pager", "-n", "60", "-u", "schoolgate-console*").stdout
    assert container.run("systemctl", "is-active", console).stdout.strip() == "active"
    journal = container.run("journalctl", "--no-pager", "-u", console).stdout
    assert "asleep after 600 s with no connection" in journal, journal  # the default, 10 minutes

    # Each daemon runs as its own user with exactly its capabilities, no_new_privs and seccomp.
    for daemon, caps in DAEMON_CAPS.items():
        status = container.proc_status(container.main_pid(f"schoolgate-{daemon}.service"))
        user = container.run("id", "-u", f"schoolgate-{daemon}").stdout.strip()
        assert status["Uid"].split()[0] == user, daemon
        for field in ("CapEff", "CapBnd", "CapAmb"):
            assert int(status[field], 16) == caps, (daemon, field, status[field])
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2", daemon


    # doctor, inside: everything the booted tree can have is OK (waiting for first heartbeats).
    argv = ["/opt/schoolgate/venv/bin/python", "-c", DOCTOR, "doctor", "--timeout", "2"]
    for check in DOCTOR_CHECKS:
        argv += ["--only", check]
    deadline = time.monotonic() + 120
    while True:
        report = container.run(*argv)
        if report.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert report.returncode == 0, report.stdout + report.stderr
    assert "FAIL" not in report.stdout
    for word in ("OK   dns: answering on 10.91.0.1:53", "OK   console: answering", "OK   nftables: table inet"):
        assert word in report.stdout, report.stdout

    # With nothing to receive, identity ended cleanly and was not restarted. Started with the
    # others, it has had the doctor's whole wait above to end; if it still runs, it waits too.
    for daemon in IDLE_UNITS:
        unit = f"schoolgate-{daemon}.service"
        deadline = time.monotonic() + 60
        while True:
            shown = container.run("systemctl", "show", "-p", "ActiveState", "-p", "Result", "-p", "ExecMainStatus",
                                  "-p", "NRestarts", unit).stdout
            state = dict(line.split("=", 1) for line in shown.split())
            if state.get("ActiveState") != "active" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        journal = container.run("journalctl", "--no-pager", "-u", unit).stdout
        assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0", "NRestarts": "0"}, (
            state, journal)
        assert "nothing to receive" in journal, journal

    # The proxy's unit supervises its worker and the one process that writes its events (doctor
    # has seen the proxy answer, so both have started); they run as the unit's user, hardened.
    supervisor = container.main_pid("schoolgate-proxy.service")
    children = container.run("cat", f"/proc/{supervisor}/task/{supervisor}/children").stdout.split()
    names = {container.run("cat", f"/proc/{pid}/comm").stdout.strip(): int(pid) for pid in children}
    assert "sg-proxy.events" in names and len(names) >= 2, names
    for pid in names.values():
        status = container.proc_status(pid)
        assert status["Uid"].split()[0] == container.run("id", "-u", "schoolgate-proxy").stdout.strip()
        assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"

    # A killed daemon is restarted by systemd (Restart=always, RestartSec=1).
    for daemon in ("dns", "proxy"):
        unit = f"schoolgate-{daemon}.service"
        old = container.main_pid(unit)
        before = int(container.run("systemctl", "show", "-p", "NRestarts", "--value", unit).stdout.strip())
        started = time.monotonic()
        # A plain SIGKILL from outside, as the OOM killer or a crash would end it (no kill(1) in minbase).
        container.run("/opt/schoolgate/venv/bin/python", "-c", f"import os; os.kill({old}, 9)")
        deadline = started + 30
        while time.monotonic() < deadline:
            new = container.main_pid(unit)
            if new not in (0, old) and container.run("systemctl", "is-active", unit).stdout.strip() == "active":
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"{unit} was not restarted")
        print(f"\n{unit}: killed pid {old}, running again as pid {new} after {time.monotonic() - started:.2f} s")
        restarts = int(container.run("systemctl", "show", "-p", "NRestarts", "--value", unit).stdout.strip())
        assert restarts == before + 1, (before, restarts)


def test_edited_configuration_is_kept_and_uninstall_keeps_data(installed: tuple[Path, str], checkout: Path) -> None:
    root, _ = installed
    wants = root / "etc/systemd/system"
    policy = root / "etc/schoolgate/policy.toml"
    edited = policy.read_text() + "\n# edited by the school's technician\n"
    policy.write_text(edited)
    install(checkout, root)
    assert policy.read_text() == edited
    assert (root / "etc/schoolgate/policy.toml.new").read_bytes() == (
        checkout / "deploy/policy.example.toml"
    ).read_bytes()

    # uninstall keeps data and configuration; --purge removes them.
    run(["bash", str(checkout / "deploy" / "uninstall.sh"), "--root", str(root)])
    assert not (root / "opt/schoolgate").exists()
    assert not (root / "usr/local/lib/systemd/system/schoolgate.target").exists()
    assert not (wants / "multi-user.target.wants/schoolgate.target").exists()
    assert not (wants / "schoolgate-console.socket.d").exists()
    assert (root / "var/lib/schoolgate/schoolgate.db").exists()
    assert policy.read_text() == edited
    run(["bash", str(checkout / "deploy" / "uninstall.sh"), "--root", str(root), "--purge"])
    assert not (root / "var/lib/schoolgate").exists()
    assert not (root / "etc/schoolgate").exists()
    assert "schoolgate-dns:" not in (root / "etc/passwd").read_text()
