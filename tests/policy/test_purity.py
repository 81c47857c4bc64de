"""The pure core does no I/O and never reads a clock: checked on the source, by AST.

Only `loader.py` (files, mtimes) and `cli.py` (the command line) may touch the outside world.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

POLICY = Path(__file__).resolve().parents[2] / "policy"
ALLOWED_IMPURE = {"loader.py", "cli.py"}
FORBIDDEN_MODULES = {
    "os",
    "sys",
    "io",
    "socket",
    "time",
    "pathlib",
    "shutil",
    "subprocess",
    "threading",
    "asyncio",
    "sqlite3",
    "sqlalchemy",
    "requests",
    "urllib.request",
    "http",
    "logging",
    "random",
    "tempfile",
    "glob",
    "select",
    "signal",
    "multiprocessing",
    "schoolgate.store",
    "schoolgate.identity",
    "schoolgate.clock",
    "schoolgate.config",
    "schoolgate.policy.loader",
    "schoolgate.policy.cli",
}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "time", "time_ns", "monotonic", "perf_counter", "fromtimestamp_now"}
FORBIDDEN_BUILTINS = {"open", "input", "print", "exec", "eval", "__import__", "breakpoint"}

PURE = sorted(p for p in POLICY.glob("*.py") if p.name not in ALLOWED_IMPURE)


def _imports(tree: ast.AST) -> list[str]:
    """Imports that run: those under `if TYPE_CHECKING:` are for the type checker only."""
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
            out.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def test_the_pure_modules_are_the_ones_expected() -> None:
    names = {p.name for p in PURE}
    assert {"types.py", "engine.py", "compiler.py", "timeline.py", "domains.py", "lists.py", "explain.py"} <= names


@pytest.mark.parametrize("path", PURE, ids=[p.name for p in PURE])
def test_no_io_imports(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    forbidden = FORBIDDEN_MODULES
    if path.name == "__init__.py":
        # The package offers load_policy() for convenience; it imports the loader lazily.
        forbidden = forbidden - {"schoolgate.policy.loader"}
    bad = [m for m in _imports(tree) if m in forbidden or m.split(".")[0] in forbidden]
    assert bad == [], f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", PURE, ids=[p.name for p in PURE])
def test_no_clock_reads_or_file_access(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in FORBIDDEN_CALLS:
            bad.append(f"line {node.lineno}: .{func.attr}()")
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
            bad.append(f"line {node.lineno}: {func.id}()")
        if isinstance(func, ast.Attribute) and func.attr in {"read_text", "read_bytes", "open", "stat", "write_text"}:
            bad.append(f"line {node.lineno}: .{func.attr}()")
    assert bad == [], f"{path.name}: {bad}"


def test_the_checker_would_catch_a_violation() -> None:
    tree = ast.parse("import os\nfrom datetime import datetime\nx = datetime.now()\nopen('f')\n")
    assert "os" in _imports(tree)
    assert _imports(ast.parse("if TYPE_CHECKING:\n    import os\n")) == []
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert {getattr(c.func, "attr", getattr(c.func, "id", "")) for c in calls} == {"now", "open"}
