"""Maps the agreed top-level folders onto the `schoolgate` import package.

pyproject.toml holds the metadata; this file only computes the package list so that a
new sub-package or template folder is picked up without editing a list by hand.
"""

from pathlib import Path

from setuptools import Extension, setup

ROOT = Path(__file__).parent
SUBPACKAGES = {
    "schoolgate": "src/schoolgate",
    "schoolgate.policy": "policy",
    "schoolgate.store": "store",
    "schoolgate.identity": "identity",
    "schoolgate.dns": "dns",
    "schoolgate.proxy": "proxy",
    "schoolgate.gateway": "gateway",
    "schoolgate.lab": "lab",
    "schoolgate.console": "console",
    "schoolgate.services": "services",
    "schoolgate.scheduler": "scheduler",
    "schoolgate.lists": "lists",
    "schoolgate.selftest": "selftest",
    "schoolgate.review": "review",
}
# Compiled helpers, built by `pip install` (deploy/dev.sh, deploy/install.sh) with Debian's
# gcc, python3-dev and libxxhash-dev (a header only: XXH_INLINE_ALL compiles xxh3 in).
EXTENSIONS = [
    Extension(
        "schoolgate.policy._listprobe",
        sources=["policy/_listprobe.c"],
        extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
    ),
    Extension(
        "schoolgate.dns._question",
        sources=["dns/_question.c"],
        extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
    ),
    Extension(
        "schoolgate.dns._datagrams",
        sources=["dns/_datagrams.c"],
        extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
    ),
    Extension(
        "schoolgate.proxy._hello",
        sources=["proxy/_hello.c"],
        extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
    ),
    Extension(
        "schoolgate.proxy._accept",
        sources=["proxy/_accept.c"],
        extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
    ),
    Extension(
        "schoolgate.proxy._relay",
        sources=["proxy/_relay.c"],
        extra_compile_args=["-O2", "-Wall", "-Werror=implicit-function-declaration"],
    ),
]
DATA_SUFFIXES = {".pyi", ".html", ".css", ".js", ".svg", ".toml", ".ini", ".mako", ".txt", ".json", ".png", ".woff2"}


def _walk() -> tuple[list[str], dict[str, str], dict[str, list[str]]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    package_data: dict[str, list[str]] = {}
    for package, folder in SUBPACKAGES.items():
        base = ROOT / folder
        package_dir[package] = folder
        for init in sorted(base.rglob("__init__.py")):
            relative = init.parent.relative_to(base)
            name = ".".join((package, *relative.parts)) if relative.parts else package
            packages.append(name)
        data = [
            str(path.relative_to(base))
            for path in base.rglob("*")
            if path.is_file() and path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts
        ]
        if data:
            package_data[package] = data
    return packages, package_dir, package_data


_packages, _package_dir, _package_data = _walk()
setup(
    packages=_packages, package_dir=_package_dir, package_data=_package_data, include_package_data=False,
    ext_modules=EXTENSIONS,
)
