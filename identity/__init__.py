"""schoolgate.identity: who is behind a LAN address (neighbour table + device register).

The names below load on first use, so that ``schoolgate.identity.cli`` (imported by every
``schoolgate`` command) does not pull in SQLAlchemy and pyroute2.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schoolgate.identity.neighbours import NeighbourTable
    from schoolgate.identity.register import DeviceRegister, RegisteredDevice, load_register
    from schoolgate.identity.resolver import IdentityResolver, RegisterReloader

_EXPORTS = {
    "NeighbourTable": "schoolgate.identity.neighbours",
    "DeviceRegister": "schoolgate.identity.register",
    "RegisteredDevice": "schoolgate.identity.register",
    "load_register": "schoolgate.identity.register",
    "IdentityResolver": "schoolgate.identity.resolver",
    "RegisterReloader": "schoolgate.identity.resolver",
}

__all__ = [
    "DeviceRegister",
    "IdentityResolver",
    "NeighbourTable",
    "RegisterReloader",
    "RegisteredDevice",
    "load_register",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'schoolgate.identity' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
