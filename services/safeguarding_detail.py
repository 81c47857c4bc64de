"""Safeguarding detail stays with the DSL: events as each reader of the activity may see them.

A child's search for "how to kill myself" is a safeguarding concern about a named child: the DSL
reads it (and the headteacher where the school's policy says so: `[school] safeguarding_readers`,
the permission table's READ_SAFEGUARDING_DETAIL). A technician or the trust's admin looking at
the same activity sees that there was a search, and that it is withheld for the DSL, never its
words. The test is the one the DSL's alerts use (schoolgate.services.keywords): a search term,
or a URL whose query carries one, that matches the safeguarding list. The URL is withheld with
the term, since it spells the term out.

Every path that shows events to people (pages, CSV exports, anything returning JSON) goes
through `shown_events`, so none can forget.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from schoolgate.services.keywords import KeywordList, searchable_text
from schoolgate.store.models import AccessEvent

WITHHELD = "[withheld: a safeguarding concern, for the DSL]"


class ShownEvent:
    """An event as one reader sees it: read-only; `url` and `search_term` withheld when they
    carry a safeguarding concern the reader may not read."""

    __slots__ = ("_row", "search_term", "url", "withheld")
    _row: AccessEvent
    withheld: bool
    url: str | None
    search_term: str | None

    def __init__(self, row: AccessEvent, *, withheld: bool) -> None:
        object.__setattr__(self, "_row", row)
        object.__setattr__(self, "withheld", withheld)
        object.__setattr__(self, "url", WITHHELD if withheld and row.url else row.url)
        object.__setattr__(self, "search_term", WITHHELD if withheld and row.search_term else row.search_term)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_row":
            raise AttributeError(name)
        return getattr(self._row, name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a shown event is read-only")


def is_concern(row: AccessEvent, keywords: KeywordList | None) -> bool:
    """Whether the event's search term (or its URL's query) matches the safeguarding list. With
    no list (it could not be read), every search is treated as one: withheld, not shown."""
    text = searchable_text(row.search_term, row.url)
    if not text:
        return False
    return keywords is None or bool(keywords.match(text))


def shown_events(
    rows: Iterable[AccessEvent], *, may_read: bool, keywords: KeywordList | None
) -> Iterator[ShownEvent]:
    """`rows` as a reader sees them; `may_read`: the reader holds READ_SAFEGUARDING_DETAIL."""
    for row in rows:
        yield ShownEvent(row, withheld=not may_read and is_concern(row, keywords))
