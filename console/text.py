"""Making logged text safe to print on a page: see schoolgate.services.printable, which the
CSV exports share; applied to every `{{ }}` output by the app factory."""

from __future__ import annotations

from schoolgate.services.printable import printable

__all__ = ["printable"]
