"""Reading squidguard sets from archives and folders, and refusing hostile archives."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from schoolgate.lists.archive import ArchiveError, Limits, SetReport, read_set


def _tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """members: (name, data, link target); data None with a target makes a symlink."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = link
                archive.addfile(info)
            else:
                assert data is not None
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def _read(
    path: Path, limits: Limits | None = None, report: SetReport | None = None
) -> dict[tuple[str, str], list[str]]:
    found = read_set(path, limits or Limits(), report)
    return {(f.category, f.kind): [line for line in f.lines if line] for f in found}


def test_an_archive_laid_out_as_ut1(tmp_path: Path) -> None:
    path = _tar(tmp_path / "set.tar.gz", [
        ("blacklists/README", b"about\n", None),
        ("blacklists/adult/domains", b"porn.example\nmore.example\n", None),
        ("blacklists/adult/urls", b"host.example/path\n", None),
        ("blacklists/adult/expressions", b"(sex|porn)\n", None),
        ("blacklists/gambling/domains", b"bet.example", None),  # no final newline
        ("blacklists/aggressive", None, "agressif"),
        ("blacklists/agressif/domains", b"caf\xe9.example\nfight.example\n", None),  # not UTF-8
    ])
    report = SetReport()
    found = _read(path, report=report)
    assert found == {
        ("adult", "domains"): ["porn.example", "more.example"],
        ("adult", "urls"): ["host.example/path"],
        ("gambling", "domains"): ["bet.example"],
        ("agressif", "domains"): ["caf\ufffd.example", "fight.example"],
    }
    assert report.links == ["blacklists/aggressive"]
    assert report.other_files == 2  # README, expressions


@pytest.mark.parametrize("name", ["../evil/domains", "/etc/adult/domains", "blacklists/../../x/domains"])
def test_a_path_that_climbs_out_refuses_the_whole_archive(tmp_path: Path, name: str) -> None:
    path = _tar(tmp_path / "set.tar.gz", [("blacklists/adult/domains", b"a.example\n", None), (name, b"b\n", None)])
    with pytest.raises(ArchiveError, match="unsafe path"):
        _read(path)


def test_a_hard_link_is_never_followed(tmp_path: Path) -> None:
    path = tmp_path / "set.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo("blacklists/adult/domains")
        info.type = tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)
    report = SetReport()
    assert _read(path, report=report) == {}
    assert report.links == ["blacklists/adult/domains"]


@pytest.mark.parametrize(("limits", "fragment"), [
    (Limits(max_member_bytes=1000), "more than the 1000 allowed"),
    (Limits(max_total_bytes=1500), "unpacks to more than 1500"),
    (Limits(max_members=2), "more than 2 members"),
])
def test_absurd_sizes_refuse_the_archive(tmp_path: Path, limits: Limits, fragment: str) -> None:
    path = _tar(tmp_path / "set.tar.gz", [
        ("blacklists/adult/domains", b"a.example\n" * 100, None),
        ("blacklists/gambling/domains", b"b.example\n" * 200, None),
        ("blacklists/dating/domains", b"c.example\n", None),
    ])
    with pytest.raises(ArchiveError, match=fragment):
        _read(path, limits)


def test_a_decompression_bomb_is_refused_by_the_declared_size(tmp_path: Path) -> None:
    # 64 MB of zeros packs into a few tens of kilobytes: the member's size gives it away
    # before a byte of it is unpacked.
    path = _tar(tmp_path / "bomb.tar.gz", [("blacklists/adult/domains", bytes(64 << 20), None)])
    assert path.stat().st_size < 200_000
    with pytest.raises(ArchiveError, match="more than"):
        _read(path, Limits(max_member_bytes=16 << 20))


@pytest.mark.parametrize("corrupt", ["truncated", "garbage", "not-gzip"])
def test_a_corrupt_archive_is_an_error_not_a_crash(tmp_path: Path, corrupt: str) -> None:
    good = _tar(tmp_path / "good.tar.gz", [("blacklists/adult/domains", os.urandom(4000).hex().encode(), None)])
    data = good.read_bytes()
    bad = tmp_path / "bad.tar.gz"
    if corrupt == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif corrupt == "garbage":
        bad.write_bytes(data[:40] + bytes(range(256)) * 8 + data[2000:])
    else:
        bad.write_bytes(b"<html>Service unavailable</html>\n")
    with pytest.raises(ArchiveError):
        _read(bad)


def test_a_gzipped_file_that_is_not_a_tar_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.gz"
    path.write_bytes(gzip.compress(b"a.example\n"))
    with pytest.raises(ArchiveError, match="tar"):
        _read(path)


def test_a_folder_with_links_inside_and_out(tmp_path: Path, packer: Callable[..., Path]) -> None:
    root = tmp_path / "set"
    (root / "adult").mkdir(parents=True)
    (root / "adult" / "domains").write_text("porn.example\n")
    (root / "drogue").mkdir()
    (root / "drogue" / "domains").write_text("drugs.example\n")
    (root / "drugs").symlink_to(root / "drogue")  # an alias, as UT1 ships them
    outside = tmp_path / "secret"
    outside.write_text("root:x:0:0\n")
    (root / "gambling").mkdir()
    (root / "gambling" / "domains").symlink_to(outside)
    report = SetReport()
    found = _read(root, report=report)
    assert found == {("adult", "domains"): ["porn.example"], ("drogue", "domains"): ["drugs.example"]}
    assert sorted(report.links) == ["drugs", "gambling/domains"]
