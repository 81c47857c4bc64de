"""The package installs as one `schoolgate` import package, editable and as a wheel."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

AREAS = ("policy", "store", "identity", "dns", "proxy", "gateway", "lab", "console", "services", "scheduler")
PROBE = """
import importlib.util, json, sys
import dns.message, schoolgate
from schoolgate import policy, store, dns as sg_dns
print(json.dumps({
    "dnspython": dns.message.__file__,
    "schoolgate": schoolgate.__file__,
    "schoolgate_dns": sg_dns.__file__,
    "top_level": {name: importlib.util.find_spec(name) is not None
                  for name in ("policy", "proxy", "console", "store", "identity", "gateway")},
}))
"""


def _probe(python: str, cwd: Path) -> dict[str, object]:
    import json

    out = subprocess.run([python, "-c", PROBE], cwd=cwd, capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_editable_install_keeps_dnspython_as_dns(tmp_path: Path, repo_root: Path) -> None:
    result = _probe(sys.executable, tmp_path)
    assert "site-packages" in str(result["dnspython"])
    assert str(result["schoolgate_dns"]).startswith(str(repo_root / "dns"))
    assert not any(result["top_level"].values())  # type: ignore[union-attr]


@pytest.mark.slow
def test_built_wheel_imports_in_a_fresh_venv(tmp_path: Path, repo_root: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(repo_root)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = dist.glob("schoolgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("schoolgate/", "schoolgate-")) for n in names), names
    for area in AREAS:
        assert f"schoolgate/{area}/__init__.py" in names
    # The fresh venv gets the wheel only; the dependencies are borrowed from this venv by a
    # path entry (not a site dir, so this venv's editable-install hook is not loaded there).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    fresh_site = Path(
        subprocess.run([str(venv / "bin/python"), "-c", purelib], capture_output=True, text=True, check=True)
        .stdout.strip()
    )
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(fresh_site)
    (fresh_site / "borrowed-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    result = _probe(str(venv / "bin/python"), tmp_path)
    assert str(result["schoolgate"]).startswith(str(fresh_site))
    assert str(result["schoolgate_dns"]).startswith(str(fresh_site))
    assert "schoolgate" not in str(result["dnspython"])
    assert not any(result["top_level"].values())  # type: ignore[union-attr]
    help_text = subprocess.run([str(venv / "bin/python"), "-m", "schoolgate", "--help"],
                               capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "schoolgate" in help_text
