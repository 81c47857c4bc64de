"""schoolgate.console: the web console for ICT technicians, the headteacher and the DSL.

`create_app` builds the Flask application; `schoolgate console` serves it with gunicorn.
Flask is imported only when the application is asked for, so that every other `schoolgate`
command (which imports this package for its subcommands) starts quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schoolgate.console.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from schoolgate.console.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
