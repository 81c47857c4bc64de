"""Compiling downloads into versions: numpy and the pure builder agree byte for byte, every
format compiles, and a download without entries is refused."""

from __future__ import annotations

import ipaddress
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schoolgate.lists.archive import ArchiveError
from schoolgate.lists.compile import CompileError, NumpyBuilder, compile_download, version_name
from schoolgate.policy.liststore import ListStore, StoreBuilder, key_of
from schoolgate.policy.model import ListSource

NOW = datetime(2026, 11, 23, 3, 30, tzinfo=UTC)


@pytest.mark.parametrize("count", [0, 1, 7, 1000, 50_000])
def test_numpy_and_pure_python_build_the_same_file(count: int) -> None:
    files = []
    for cls in (StoreBuilder, NumpyBuilder):
        builder = cls(0xC0FFEE, ["a", "b", "c"])
        rnd = random.Random(count)
        names = [f"n{rnd.randrange(2 * count + 1)}.example" for _ in range(count)]
        builder.add_names(names[: count // 2], 0)
        builder.add_names(names[count // 3 :], 1)
        builder.add_names(names[: count // 5], 2, exact=True)
        builder.add_network(ipaddress.ip_network("93.184.216.0/24"), 1)
        builder.add_url("forum.example", "/casino/", 2)
        files.append(builder.build({"v": 1}) if cls is StoreBuilder else b"".join(builder.pieces({"v": 1})))
    assert files[0] == files[1]
    ListStore(files[1]).verify()


def _source(fmt: str, **extra: object) -> ListSource:
    return ListSource(id="x", format=fmt, url="https://lists.example/x", **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fmt", "text", "expected"), [
    ("plain", "# a list\nbad.example\n*.wild.example\n93.184.216.34\n", ["bad.example", "x.wild.example"]),
    ("hosts", "0.0.0.0 bad.example other.example\n127.0.0.1 localhost\n", ["bad.example", "other.example"]),
    ("adblock", "||bad.example^\n|exact.example^\n@@||allowed.example^\n", ["bad.example", "exact.example"]),
    ("adguard-services",
     json.dumps({"blocked_services": [{"id": "tiktok", "name": "TikTok", "rules": ["||tiktok.com^"]}]}),
     ["www.tiktok.com"]),
])
def test_each_format_compiles(tmp_path: Path, fmt: str, text: str, expected: list[str]) -> None:
    download = tmp_path / "download"
    download.write_text(text, encoding="utf-8")
    compiled = compile_download(_source(fmt, category="malware"), download, seed=5, now=NOW, digest="ab" * 32)
    assert compiled.name == version_name("x", NOW, "ab" * 32) == "x-20261123T033000Z-abababababab.sgl"
    store = ListStore(b"".join(compiled.pieces))
    assert store.sources == ("",)
    for name in expected:
        found = [store.find(key_of(suffix, 5)) for suffix in (name, name.split(".", 1)[1])]
        assert max(found) >= 0, name
    assert compiled.info["entries"] == {"malware": sum(s.accepted for s in compiled.stats.values())}
    if fmt == "plain":
        assert compiled.info["addresses"] == 1


def test_a_download_without_entries_is_refused(tmp_path: Path) -> None:
    download = tmp_path / "download"
    download.write_text("<html><body>Please log in</body></html>\n", encoding="utf-8")
    with pytest.raises(CompileError, match="no entries"):
        compile_download(_source("plain"), download, seed=5, now=NOW, digest="00" * 32)


def test_a_squidguard_download_needs_category_folders(tmp_path: Path) -> None:
    download = tmp_path / "download"
    download.write_text("bad.example\n", encoding="utf-8")
    source = _source("squidguard", categories=(("adult", ("pornography",)),))
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        compile_download(source, download, seed=5, now=NOW, digest="00" * 32)


def test_numpy_without_repeated_names_builds_the_same_file() -> None:
    files = []
    for cls in (StoreBuilder, NumpyBuilder):
        builder = cls(0xBEEF, ["a", "b"])
        builder.add_names([f"a{i}.example" for i in range(3000)], 0)
        builder.add_names([f"b{i}.example" for i in range(2000)], 1)
        builder.add_names([f"exact{i}.example" for i in range(10)], 1, exact=True)
        files.append(builder.build({}) if cls is StoreBuilder else b"".join(builder.pieces({})))
    assert files[0] == files[1]
