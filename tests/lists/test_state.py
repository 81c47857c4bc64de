"""The list state folder: versions written whole, mapped read-only, named by the manifest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from schoolgate.lists.state import Installed, ListState, ListStateError, write_atomic
from schoolgate.policy.liststore import StoreBuilder, StoreError
from schoolgate.policy.model import ListSource


def _version(state: ListState, name: str, names: list[str]) -> None:
    seed = state.seed(create=True)
    assert seed is not None
    builder = StoreBuilder(seed, [""])
    builder.add_names(names, 0)
    state.install_version(name, [builder.build({"version": name})])


def test_the_seed_is_made_once_and_kept(state: ListState) -> None:
    assert state.seed() is None
    first = state.seed(create=True)
    assert first is not None and state.seed() == first == state.seed(create=True)
    assert oct((state.folder / "seed").stat().st_mode & 0o777) == "0o640"


def test_a_version_named_by_the_manifest_is_mapped_once(state: ListState) -> None:
    _version(state, "x-1.sgl", ["a.example"])
    state.write_manifest({"lists": {"x": {"version": "x-1.sgl"}}})
    installed = Installed(state)
    installed.refresh()
    source = ListSource(id="x", format="plain", url="https://lists.example/x")
    first = installed.mapped()["x"]
    assert installed(source) is first.store and first.store.key_count == 1
    installed.refresh()
    assert installed.mapped()["x"] is first  # same version: nothing mapped again
    _version(state, "x-2.sgl", ["a.example", "b.example"])
    state.write_manifest({"lists": {"x": {"version": "x-2.sgl"}}})
    installed.refresh()
    assert installed.mapped()["x"].name == "x-2.sgl" and installed(source).key_count == 2  # type: ignore[union-attr]


def test_a_missing_or_damaged_version_keeps_the_one_in_use(state: ListState) -> None:
    _version(state, "x-1.sgl", ["a.example"])
    state.write_manifest({"lists": {"x": {"version": "x-1.sgl"}}})
    installed = Installed(state)
    installed.refresh()
    state.write_manifest({"lists": {"x": {"version": "x-9.sgl"}}})
    installed.refresh()
    assert installed.mapped()["x"].name == "x-1.sgl"
    assert "missing" in installed.errors["x"]
    (state.versions / "x-8.sgl").write_bytes(b"SGLISTS\0" + bytes(300))
    state.write_manifest({"lists": {"x": {"version": "x-8.sgl"}}})
    installed.refresh()
    assert installed.mapped()["x"].name == "x-1.sgl" and "x-8.sgl" in installed.errors["x"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/shadow", "x.txt", ".sgl"])
def test_a_manifest_cannot_point_outside_the_versions_folder(state: ListState, name: str) -> None:
    with pytest.raises(ListStateError, match="not a list version file name"):
        state.open_version(name)


def test_install_checks_the_version_reads_back_whole(state: ListState) -> None:
    builder = StoreBuilder(1, [""])
    builder.add_names([f"n{i}.example" for i in range(100)], 0)
    data = bytearray(builder.build())
    data[-20:] = b"\xff" * 20  # the metadata, damaged
    with pytest.raises((StoreError, ListStateError)):
        state.install_version("x-1.sgl", [bytes(data)])
    assert not (state.versions / "x-1.sgl").exists()


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, [b"one"])

    def failing() -> list[bytes]:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, (piece for piece in failing()))
    assert target.read_bytes() == b"one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_one_update_at_a_time(state: ListState) -> None:
    with state.locked(), pytest.raises(ListStateError, match="another list update"), state.locked():
        pass
    with state.locked():
        pass  # released


def test_old_versions_are_removed_but_mappings_stay_valid(state: ListState) -> None:
    _version(state, "x-1.sgl", ["a.example"])
    mapped = state.open_version("x-1.sgl")
    assert state.remove_versions(keep=[]) == ["x-1.sgl"]
    assert not (state.versions / "x-1.sgl").exists()
    assert mapped.store.key_count == 1 and mapped.store.find(0) == -1  # still readable
    assert os.path.exists("/proc/self/fd") and mapped.inode[1] > 0


def test_a_large_version_is_verified_whole_before_it_goes_in(state: ListState) -> None:
    import struct

    from schoolgate.lists.compile import NumpyBuilder

    builder = NumpyBuilder(3, [""])
    builder.add_names([f"n{i}.example" for i in range(150_000)], 0)
    data = b"".join(builder.pieces({}))
    state.install_version("big-1.sgl", [data])  # numpy checks the keys, the index and the classes
    from schoolgate.policy.liststore import ListStore

    keys = ListStore(data).arrays()[1]
    damaged = bytearray(data)
    at = data.find(struct.pack("<Q", keys[1000]))
    damaged[at : at + 8] = struct.pack("<Q", keys[999])
    with pytest.raises(StoreError, match="order"):
        state.install_version("big-2.sgl", [bytes(damaged)])
    assert not (state.versions / "big-2.sgl").exists()
