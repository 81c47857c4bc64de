"""Fixtures for list subscriptions: the UT1 sample packed as the real set is, a list state
folder, and the example policy's list sources."""

from __future__ import annotations

import shutil
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from schoolgate.lists.state import ListState
from schoolgate.policy.loader import load_list_sources
from schoolgate.policy.model import ListSource

reference_data = sys.modules["schoolgate_tests_reference_data"]
UT1 = reference_data.DATA / "ut1"
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "policy.example.toml"
needs_ut1 = reference_data.needs_reference_data


def pack(folder: Path, target: Path, *, prefix: str = "blacklists", links: dict[str, str] | None = None) -> Path:
    """A tar.gz laid out as UT1's: blacklists/<category>/{domains,urls}, with alias links."""
    with tarfile.open(target, "w:gz") as archive:
        archive.add(folder, arcname=prefix)
        for name, points_to in (links or {}).items():
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = points_to
            archive.addfile(info)
    return target


@pytest.fixture
def ut1_copy(tmp_path: Path) -> Path:
    """A writable copy of the UT1 sample (tests plant names in it)."""
    if not UT1.is_dir():
        pytest.skip(f"UT1 sample not found at {UT1}")
    target = tmp_path / "ut1"
    shutil.copytree(UT1, target)
    return target


@pytest.fixture
def ut1_tarball(ut1_copy: Path, tmp_path: Path) -> Path:
    return pack(ut1_copy, tmp_path / "blacklists.tar.gz", links={"aggressive": "agressif", "drugs": "drogue"})


@pytest.fixture
def state(tmp_path: Path) -> ListState:
    return ListState(tmp_path / "state")


@pytest.fixture(scope="session")
def example_sources() -> dict[str, ListSource]:
    return {source.id: source for source in load_list_sources(EXAMPLE)}


@pytest.fixture
def ut1_source(example_sources: dict[str, ListSource]) -> ListSource:
    return example_sources["ut1"]


def first_names(folder: Path, count: int = 3) -> Callable[[str], list[str]]:
    """The first `count` plain names listed in a category's domains file."""

    def names(category: str) -> list[str]:
        out: list[str] = []
        for line in (folder / category / "domains").read_text(encoding="utf-8").splitlines():
            name = line.strip()
            if name and not name[-1].isdigit() and "_" not in name:
                out.append(name)
            if len(out) == count:
                break
        return out

    return names


@pytest.fixture
def packer() -> Callable[..., Path]:
    return pack


@pytest.fixture
def ut1_names(ut1_copy: Path) -> Callable[[str], list[str]]:
    return first_names(ut1_copy)
