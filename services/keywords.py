"""Safeguarding term matching over search terms and URL queries.

Search terms are typed by children and logged from the wire, so they arrive in every
spelling: upper case, full-width letters, accents, zero-width characters, look-alike letters
from other scripts, digits for letters. Text and terms go through the same folding, then
terms match whole words (a phrase matches consecutive words), never inside a longer word.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl, unquote_plus, urlsplit

SEVERITIES = ("low", "medium", "high", "critical")

# Letters from other scripts that look like Latin ones (the common confusables in practice).
_LOOKALIKES = str.maketrans(
    {
        "а": "a",
        "в": "b",
        "е": "e",
        "ё": "e",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "с": "c",
        "т": "t",
        "у": "y",
        "х": "x",
        "і": "i",
        "ї": "i",
        "ј": "j",
        "ѕ": "s",
        "ԁ": "d",
        "ɡ": "g",
        "ո": "n",
        "ս": "u",
        "α": "a",
        "β": "b",
        "ε": "e",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "ℓ": "l",
        "ı": "i",
    }
)
# Digit and symbol stand-ins, applied only inside words that also contain letters ("k1ll"),
# so that "2024" or "1 in 5" stay as they are.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s"})
_WORD = re.compile(r"[^\W_]+(?:[@$][^\W_]*)*|[@$][^\W_]+", re.UNICODE)
_HAS_LETTER = re.compile(r"[^\W\d_]")
_HAS_STANDIN = re.compile(r"[\d@$]")


def fold(text: str) -> str:
    """Case, width, accents, invisible characters and look-alike letters folded away."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")  # zero-width, soft hyphen
    decomposed = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return text.casefold().translate(_LOOKALIKES)


def words(text: str) -> list[str]:
    """The folded words of `text`, with digit stand-ins read as letters inside words."""
    result: list[str] = []
    for raw in _WORD.findall(fold(text)):
        token = raw.translate(_LEET) if _HAS_STANDIN.search(raw) and _HAS_LETTER.search(raw) else raw
        result.extend(part for part in re.split(r"[@$]", token) if part)
    return result


@dataclass(frozen=True, slots=True)
class TermMatch:
    category: str
    severity: str
    term: str  # the listed term that matched


@dataclass(frozen=True, slots=True)
class _Entry:
    words: tuple[str, ...]
    category: str
    term: str


class KeywordList:
    """Categories of terms, each with a severity; `match` finds every category present."""

    def __init__(self, categories: Mapping[str, tuple[str, Iterable[str]]]) -> None:
        self.severities: dict[str, str] = {}
        self._by_first: dict[str, list[_Entry]] = {}
        for category, (severity, terms) in categories.items():
            if severity not in SEVERITIES:
                raise ValueError(f"category {category!r}: severity must be one of {', '.join(SEVERITIES)}")
            self.severities[category] = severity
            for term in terms:
                folded = tuple(words(term))
                if not folded:
                    raise ValueError(f"category {category!r}: the term {term!r} has no letters")
                self._by_first.setdefault(folded[0], []).append(_Entry(folded, category, term))

    @classmethod
    def from_toml(cls, text: str, source: str = "keyword list") -> KeywordList:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{source}: not valid TOML: {err}") from err
        categories = raw.get("categories")
        if not isinstance(categories, dict) or not categories:
            raise ValueError(f"{source}: needs [categories.<name>] tables with severity and terms")
        parsed: dict[str, tuple[str, list[str]]] = {}
        for name, table in categories.items():
            if not isinstance(table, dict):
                raise ValueError(f"{source}: categories.{name} must be a table")
            severity = table.get("severity", "medium")
            terms = table.get("terms", [])
            if (
                not isinstance(severity, str)
                or not isinstance(terms, list)
                or not all(isinstance(t, str) for t in terms)
            ):
                raise ValueError(f'{source}: categories.{name} needs severity = "..." and terms = ["..."]')
            parsed[name] = (severity, terms)
        try:
            return cls(parsed)
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err

    @classmethod
    def load(cls, path: str | Path | None = None) -> KeywordList:
        """The school's own list from `path`, or the built-in one."""
        if path:
            file = Path(path)
            return cls.from_toml(file.read_text(encoding="utf-8"), str(file))
        text = (
            resources.files("schoolgate.services").joinpath("data/safeguarding_terms.toml").read_text(encoding="utf-8")
        )
        return cls.from_toml(text, "built-in safeguarding terms")

    def match(self, text: str) -> list[TermMatch]:
        """One match per category found in `text` (the first term of each), in text order."""
        tokens = words(text)
        found: dict[str, TermMatch] = {}
        for index, token in enumerate(tokens):
            for entry in self._by_first.get(token, ()):
                if entry.category in found:
                    continue
                if tuple(tokens[index : index + len(entry.words)]) == entry.words:
                    found[entry.category] = TermMatch(entry.category, self.severities[entry.category], entry.term)
        return list(found.values())


def searchable_text(search_term: str | None, url: str | None) -> str:
    """What to look for terms in: the logged search term and the values of the URL's query.

    Query values are decoded (including a second layer of percent-encoding, a common way
    to slip past naive filters); the fragment counts too, since some engines search there.
    """
    parts: list[str] = []
    if search_term:
        parts.append(search_term)
    if url:
        try:
            split = urlsplit(url)
        except ValueError:
            split = None
        if split is not None:
            for chunk in (split.query, split.fragment):
                for _key, value in parse_qsl(chunk, keep_blank_values=False):
                    parts.append(unquote_plus(value) if "%" in value else value)
    return "\n".join(parts)
